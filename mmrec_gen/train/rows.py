"""Training rows from examples, rendered with the inference templates and labels (R11).

The prompt of every row is `PromptBuilder.rank(...)`, the very prompt `mmrec rank` builds, so the training prompt
is a prefix of the inference prompt + answer. Three row shapes:

- TRL SFT, conversational prompt/completion (the loss is on the completion only):
  `{"prompt": [messages], "completion": [{"role": "assistant", "content": "C"}]}`;
- TRL DPO: `{"prompt": ..., "chosen": [...], "rejected": [...]}`, one row per rejected answer;
- the fast path: `{"input_ids": [...], "target_id": id}` (SFT) or `{"input_ids", "chosen_id", "rejected_ids"}`
  (S-DPO), with the label token ids score mode reads.

A prompt that does not fit the context even with no history is dropped and counted, never silently.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmrec_gen.data.schema import Dataset, Item
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.train.examples import TrainExample, negative_indices

logger = logging.getLogger(__name__)


@dataclass
class RenderedExample:
    example: TrainExample
    prompt: RenderedPrompt


@dataclass
class RowStats:
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    truncated_history: int = 0  # prompts that kept fewer history items than max_history allows

    def as_dict(self) -> dict:
        return {"examples": self.examples, "dropped": dict(self.dropped), "truncated_history": self.truncated_history}


def render_examples(
    builder: PromptBuilder, ds: Dataset, examples: Sequence[TrainExample], stats: RowStats
) -> list[RenderedExample]:
    out = []
    for ex in examples:
        history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in ex.history]
        try:
            prompt = builder.rank(ex.user_id, history, [ds.items[c] for c in ex.candidates])
        except PromptTooLongError as exc:
            stats.dropped["prompt_too_long"] += 1
            logger.warning("training example dropped: %s", exc)
            continue
        stats.truncated_history += prompt.truncated
        out.append(RenderedExample(ex, prompt))
    stats.examples = len(out)
    return out


def ranking_answer(ex: TrainExample, labels: Sequence[str], seed: int) -> str:
    """All labels, the answer's first, the negatives after it in a seeded order (their true order is unknown)."""
    rest = [i for i in range(len(ex.candidates)) if i != ex.target_index]
    order = rng_for(seed, "train-ranking", ex.user_id, ex.position).permutation(len(rest))
    return ", ".join([labels[ex.target_index], *(labels[rest[i]] for i in order)])


# List-valued item fields an explanation may cite ("Comedy|Drama" in MovieLens, "Comedy, Drama" in generic data).
EXPLAIN_FIELDS = ("genres", "tags", "categories")


def _values(item: Item, key: str) -> set[str]:
    return {v.strip() for v in re.split(r"[|,]", item.fields.get(key, ""))} - {""}


def _shared_fields(a: Item, b: Item) -> set[str]:
    return set().union(*(_values(a, key) & _values(b, key) for key in EXPLAIN_FIELDS))


def explanation(ds: Dataset, ex: TrainExample) -> str:
    """A grounded explanation: the (at most two) most recent history items sharing the most field values with the
    answer, cited by title. Built from data, so it never names an item the user did not see."""
    answer = ds.items[ex.target]
    scored = [(len(_shared_fields(answer, ds.items[h.item_id])), n, h) for n, h in enumerate(ex.history)]
    best = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], -s[1]))[:2]
    if not best:
        recent = [ds.items[h.item_id].title for h in ex.history[-2:]]
        return f"It fits the user's recent picks, such as {' and '.join(recent)}." if recent else ""
    titles = " and ".join(ds.items[h.item_id].title for _, _, h in best)
    shared = sorted(set.union(*(_shared_fields(answer, ds.items[h.item_id]) for _, _, h in best)))
    return f"The user liked {titles}, which share {', '.join(shared[:3])} with {answer.title}."


def answer_text(ds: Dataset, item: RenderedExample, *, target: str, explanations: bool, seed: int) -> str:
    labels = item.prompt.labels
    text = labels[item.example.target_index] if target == "score" else ranking_answer(item.example, labels, seed)
    if explanations:
        why = explanation(ds, item.example)
        text = f"{text}\n{why}" if why else text
    return text


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def trl_sft_rows(
    ds: Dataset, items: Sequence[RenderedExample], *, target: str, explanations: bool, seed: int
) -> list[dict]:
    return [
        {
            "prompt": it.prompt.messages,
            "completion": _assistant(answer_text(ds, it, target=target, explanations=explanations, seed=seed)),
        }
        for it in items
    ]


def trl_dpo_rows(items: Sequence[RenderedExample], *, num_negatives: int, seed: int) -> list[dict]:
    """One row per rejected label: chosen = the held-out item's label, rejected = a negative's label."""
    rows = []
    for it in items:
        labels = it.prompt.labels
        for neg in negative_indices(it.example, num_negatives, seed):
            rows.append(
                {
                    "prompt": it.prompt.messages,
                    "chosen": _assistant(labels[it.example.target_index]),
                    "rejected": _assistant(labels[neg]),
                }
            )
    return rows


def fast_sft_rows(tokenizer, items: Sequence[RenderedExample]) -> list[dict]:
    rows = []
    for it in items:
        ids = label_token_ids(tokenizer, it.prompt.labels)
        rows.append({"input_ids": list(it.prompt.input_ids), "target_id": ids[it.example.target_index]})
    return rows


def fast_dpo_rows(tokenizer, items: Sequence[RenderedExample], *, num_negatives: int, seed: int) -> list[dict]:
    rows = []
    for it in items:
        ids = label_token_ids(tokenizer, it.prompt.labels)
        rows.append(
            {
                "input_ids": list(it.prompt.input_ids),
                "chosen_id": ids[it.example.target_index],
                "rejected_ids": [ids[i] for i in negative_indices(it.example, num_negatives, seed)],
            }
        )
    return rows
