"""Fixed sample records: used by `validate_templates` (mmrec prompts validate) and the golden-render tests.

Changing anything here changes the golden files in prompts/golden/ (regenerate with MMREC_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

from typing import Any

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.context import ContextBuilder, Demo, HistoryEntry
from mmrec_gen.prompting.labels import candidate_labels

SAMPLE_USER = "sample-user"


def _item(item_id: str, title: str, genres: str | None = None) -> Item:
    return Item(item_id=item_id, title=title, fields={"genres": genres} if genres else {})


def sample_history() -> tuple[HistoryEntry, ...]:
    return (
        HistoryEntry(_item("1", "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"), 4.0),
        HistoryEntry(_item("2", "Jumanji (1995)", "Adventure|Children|Fantasy"), None),
        HistoryEntry(_item("6", "Heat (1995)", "Action|Crime|Thriller"), 3.5),
        HistoryEntry(_item("2571", "The Matrix (1999)", "Action|Sci-Fi|Thriller"), 5.0),
    )


def sample_candidates() -> tuple[Item, ...]:
    return (
        _item("260", "Star Wars: Episode IV - A New Hope (1977)", "Action|Adventure|Sci-Fi"),
        _item("356", "Forrest Gump (1994)", "Comedy|Drama|Romance|War"),
        _item("318", "The Shawshank Redemption (1994)", "Crime|Drama"),
        _item("541", "Blade Runner (1982)"),  # no genres: the line must not print an empty "genres" part
    )


def sample_demos() -> tuple[Demo, ...]:
    return (
        Demo(
            history=(
                HistoryEntry(_item("10", "GoldenEye (1995)", "Action|Adventure|Thriller"), 4.0),
                HistoryEntry(_item("32", "Twelve Monkeys (1995)", "Mystery|Sci-Fi|Thriller"), 4.5),
            ),
            candidates=(
                _item("47", "Seven (1995)", "Mystery|Thriller"),
                _item("34", "Babe (1995)", "Children|Drama"),
                _item("589", "Terminator 2: Judgment Day (1991)", "Action|Sci-Fi"),
            ),
            answer_item_id="589",
        ),
        Demo(
            history=(HistoryEntry(_item("34", "Babe (1995)", "Children|Drama"), 5.0),),
            candidates=(
                _item("48", "Pocahontas (1995)", "Animation|Children|Drama|Musical|Romance"),
                _item("6", "Heat (1995)", "Action|Crime|Thriller"),
            ),
            answer_item_id="48",
        ),
    )


def sample_item() -> Item:
    return sample_candidates()[0]


def sample_context(task: str) -> dict[str, Any]:
    """A context dict for `task` holding every schema field the task can use (no tokenizer involved)."""
    ctx = ContextBuilder("sample", (), 300)
    history = ctx.history(sample_history(), SAMPLE_USER)
    if task == "rank":
        cands = sample_candidates()
        labels = candidate_labels(len(cands))
        return {
            "history": history,
            "candidates": ctx.candidates(cands, labels, SAMPLE_USER),
            "num_candidates": len(cands),
            "demos": [ctx.demo(d, candidate_labels(len(d.candidates)), SAMPLE_USER, 5) for d in sample_demos()],
        }
    return {
        "history": history,
        "item": ctx.item(sample_item(), SAMPLE_USER),
        "evidence": ctx.evidence(sample_evidence(), SAMPLE_USER),
    }


def sample_evidence():
    """The evidence `mmrec explain` lists for the sample item (prompting.evidence.select_evidence)."""
    from mmrec_gen.prompting.evidence import select_evidence

    return select_evidence([h.item for h in sample_history()], sample_item())


def render_sample(builder, template_id: str):
    """Render the sample records with a PromptBuilder for `template_id` (its task picks the method)."""
    from mmrec_gen.prompting.templates import get_template

    task = get_template(template_id).task
    if task == "rank":
        demos = sample_demos() if "demos" in get_template(template_id).required_fields else ()
        return builder.rank(SAMPLE_USER, sample_history(), sample_candidates(), demos)
    if task == "explain":
        return builder.explain(SAMPLE_USER, sample_history(), sample_item(), sample_evidence())
    return builder.pointwise(SAMPLE_USER, sample_history(), sample_item())
