"""Grounded explanations for each user's top-ranked item, with per-explanation checks.

Grounding (default): the history items most related to the recommended item (prompting/evidence.py) are listed in
the prompt as evidence; the answer is forced to start with the scaffold's lead ("Because you enjoyed"), the cited
title is chosen among the evidence items' exact titles by the backend (`choose_then_generate`: the best mean token
log-probability), what that item shares with the recommendation is forced from data (", which is also Comedy and
Drama,"), and the model writes the rest. Without history (or with `grounded=False`) the model writes the
whole explanation freely.

Checks: `hallucinated_titles` are catalogue titles, or quoted titles, the text mentions that are neither in the
user's history nor among the candidates; `cited_history` the history titles it mentions (`cites_history`: any).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.evidence import (
    LIST_FIELDS,
    Evidence,
    answer_bridge,
    answer_lead,
    answer_shared_clause,
    answer_stop,
    field_values,
    first_sentence,
    select_evidence,
)
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.prompting.sanitize import neutralize
from mmrec_gen.rank.backend import BackendError, ForcedChoice, RankBackend
from mmrec_gen.rank.ranker import UserTask
from mmrec_gen.rank.titles import YEAR_SUFFIX, as_written_title, display_title, mentioned_titles, normalize_title

logger = logging.getLogger(__name__)

_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»\n]{3,80})[\"“”«»]")
# "(genres: Crime, Thriller)" after a title: the prompt's item line, copied.
_GENRES_NOTE = re.compile(r"\s*\(genres?:[^)]*\)\s*$", re.IGNORECASE)


_ARTICLE = re.compile(r"(?:the|a|an)\W+", re.IGNORECASE)


# The year written after a title, past a trailing article ("of the Ring, The (2001)").
_YEAR_AFTER = re.compile(r"(?:,\s*(?:the|a|an)\b)?\s*\(\s*(\d{4})\s*\)", re.IGNORECASE)


def _occurrences(title: str, text: str) -> list[re.Match]:
    """Where `text` writes the words of `title` (as "The Matrix" or as written, "Matrix, The"), any case."""
    found = []
    for form in dict.fromkeys([normalize_title(title), as_written_title(title)]):
        words = form.split()
        if words:
            pattern = r"(?<!\w)" + r"\W+".join(re.escape(w) for w in words) + r"(?!\w)"
            found.extend(re.finditer(pattern, text, re.IGNORECASE))
    return found


def _written_as_a_name(title: str, text: str) -> bool:
    """Whether `text` writes `title` as a name somewhere: its first word after any article capitalized ("the
    Matrix", "Superhero Movie"), not as prose ("the iconic superhero movie", "the one you enjoyed"), and not with
    another year ("...of the Ring, The (2001)" is not "Ring, The (2002)"). True as well when the title's words
    cannot be located in the text (the mention stands)."""
    year = re.search(r"\((\d{4})\)\s*$", title)
    occurrences = _occurrences(title, text)
    for match in occurrences:
        name = _ARTICLE.sub("", match.group(0), count=1) if " " in match.group(0) else match.group(0)
        written_year = _YEAR_AFTER.match(text, match.end())
        if year and written_year and written_year.group(1) != year.group(1):
            continue
        if name[:1].isupper() or not name[:1].isalpha():
            return True
    return not occurrences


def check_explanation(
    text: str,
    history: Sequence[str],
    candidates: Sequence[str],
    catalogue: dict[str, str],
    field_values: Iterable[str] = (),
) -> dict:
    """Which titles an explanation mentions, which of them are hallucinated, and whether it cites the history.

    A catalogue title that equals one of `field_values` (the genres and tags the prompt showed: MovieLens has a
    film called "Romance") is read as that value, not as a title. A title shared by a history or candidate item
    and another catalogue item (remakes) is reported as the history / candidate item's."""
    history_norm = {normalize_title(t) for t in history}
    allowed = history_norm | {normalize_title(t) for t in candidates}
    words = {normalize_title(v) for v in field_values}
    known = {norm: title for norm, title in catalogue.items() if norm not in words}
    known.update({normalize_title(t): t for t in [*candidates, *history]})
    # A title copied as written ("Silence of the Lambs, The (1991)") is found too, as the same title.
    alias = {}
    for norm, title in known.items():
        plain = as_written_title(title)
        if plain and plain not in known:
            alias[plain] = norm
    found = mentioned_titles(text, {**known, **{a: known[n] for a, n in alias.items()}})
    mentioned = list(dict.fromkeys(alias.get(m, m) for m in found))
    # A short title ("Emma") is too common a word to look for alone, but cited with its year ("Emma (1996)", the
    # form a grounded explanation cites) it is a mention.
    for title in [*history, *candidates]:
        norm = normalize_title(title)
        if norm and norm not in mentioned and YEAR_SUFFIX.search(title):
            if re.search(rf"(?<!\w){re.escape(display_title(title))}", text, re.IGNORECASE):
                mentioned.append(norm)
    # A title outside the history and candidates counts only where the text writes it as a name (capitalized, and
    # not with another year): "a classic Disney adaptation" or "a reference to the iconic superhero movie" are
    # prose, not "Adaptation" or "Superhero Movie (2008)".
    mentioned = [m for m in mentioned if m in allowed or _written_as_a_name(known[m], text)]
    hallucinated = [known[m] for m in mentioned if m not in allowed]
    # A quoted title: a known one is a mention; one that matches nothing we know is made up, if it reads as a title
    # (capitalized, not a genre list: "a "who-framed-who" trope" or "genre: Adventure" are not titles).
    for quoted in _QUOTED.findall(text):
        name = _GENRES_NOTE.sub("", quoted).strip()
        norm = normalize_title(name)
        if not norm or norm in mentioned:
            continue
        if norm in known:
            mentioned.append(norm)
            if norm not in allowed:
                hallucinated.append(known[norm])
        elif name[:1].isupper() and not any(norm in a or a in norm for a in allowed if a):
            hallucinated.append(name)
    cited = [known[m] for m in mentioned if m in history_norm]
    return {
        "mentioned_titles": [known[m] for m in mentioned],
        "hallucinated_titles": hallucinated,
        "cited_history": cited,
        "cites_history": bool(cited),
    }


def explain(
    backend: RankBackend,
    builder: PromptBuilder,
    tasks: Sequence[UserTask],
    top_items: Sequence[Item],
    *,
    catalogue: dict[str, str],
    max_new_tokens: int,
    meta: dict,
    num_evidence: int = 3,
    grounded: bool = True,
) -> list[dict]:
    """One row per task: the explanation of `top_items[i]` for tasks[i], or an error row naming the user."""
    rows: list[dict | None] = [None] * len(tasks)
    prompts, index, evidences = [], [], []
    for i, (task, item) in enumerate(zip(tasks, top_items, strict=True)):
        evidence = select_evidence([h.item for h in task.history], item, num_evidence) if grounded else []
        base = {
            "user_id": task.user_id,
            "item_id": item.item_id,
            "title": item.title,
            "target": task.target,
            "item_genres": field_values(item, "genres"),
            "evidence": [
                {"item_id": e.item.item_id, "title": e.item.title, "shared": list(e.shared)} for e in evidence
            ],
            "evidence_ids": [e.item.item_id for e in evidence],
        }
        try:
            prompts.append(builder.explain(task.user_id, task.history, item, evidence))
            index.append(i)
            evidences.append(evidence)
            rows[i] = base
        except (ValueError, KeyError) as exc:
            logger.warning("user %s: %s", task.user_id, exc)
            rows[i] = {**base, "explanation": None, "error": f"{type(exc).__name__}: {exc}", "meta": meta}
    texts = _generate(backend, builder, prompts, evidences, max_new_tokens)
    for i, (out, cited_title) in zip(index, texts, strict=True):
        task, row = tasks[i], rows[i]
        if isinstance(out, BackendError):
            rows[i] = {**row, "explanation": None, "error": str(out), "meta": meta}
            continue
        shown = [*(h.item for h in task.history), *task.candidates]
        values = {v for it in shown for key in LIST_FIELDS for v in field_values(it, key)}
        checks = check_explanation(
            out, [h.item.title for h in task.history], [c.title for c in task.candidates], catalogue, values
        )
        rows[i] = {**row, "cited_title": cited_title, "explanation": out, **checks, "error": None, "meta": meta}
    return rows  # type: ignore[return-value]


def _generate(
    backend: RankBackend,
    builder: PromptBuilder,
    prompts: list,
    evidences: list[list[Evidence]],
    max_new_tokens: int,
) -> list[tuple[str | BackendError, str | None]]:
    """(explanation text or BackendError, the cited evidence title or None) per prompt: a forced choice among the
    evidence titles where there is evidence, free generation elsewhere."""
    out: list = [None] * len(prompts)
    grounded = [i for i, ev in enumerate(evidences) if ev]
    free = [i for i, ev in enumerate(evidences) if not ev]
    if grounded:
        lead, bridge = answer_lead(), answer_bridge()
        # Titles pass through the prompt's neutralizer, so a title can never put a control token into the answer.
        # Cited as a sentence names them ("The Matrix (1999)", not "Matrix, The (1999)").
        clean = [
            [
                neutralize(display_title(e.item.title), builder.special_tokens, builder.context.max_text_chars)
                for e in evidences[i]
            ]
            for i in grounded
        ]
        stop = answer_stop()
        # After the chosen title, what it shares with the recommendation is forced from data (the evidence's
        # shared genres and tags), so the model never has to name a genre it might make up.
        choices = [
            ForcedChoice(
                lead,
                tuple(f" {t}" for t in titles),
                tuple(bridge + answer_shared_clause(e.shared) for e in evidences[i]),
                stop,
            )
            for i, titles in zip(grounded, clean, strict=True)
        ]
        results = backend.choose_then_generate([prompts[i] for i in grounded], choices, max_new_tokens)
        for i, choice, res in zip(grounded, choices, results, strict=True):
            if isinstance(res, BackendError):
                out[i] = (res, None)
                continue
            pick, rest = res
            rest = first_sentence(rest)
            # Without a finished sentence the generated part is dropped: the forced part, closed, is the explanation.
            text = (choice.forced(pick) + rest).strip() if rest else choice.forced(pick).rstrip(" ,;:") + "."
            out[i] = (text, evidences[i][pick].item.title)
    if free:
        for i, res in zip(free, backend.generate([prompts[i] for i in free], max_new_tokens), strict=True):
            out[i] = (res if isinstance(res, BackendError) else res.strip(), None)
    return out


def explanation_summary(rows: Sequence[dict]) -> dict:
    ok = [r for r in rows if r.get("error") is None]
    n = len(ok) or 1
    return {
        "n_users": len(rows),
        "n_errors": len(rows) - len(ok),
        "cites_history_rate": sum(r["cites_history"] for r in ok) / n,
        "hallucination_rate": sum(bool(r["hallucinated_titles"]) for r in ok) / n,
        "mean_words": sum(len(r["explanation"].split()) for r in ok) / n,
    }


def genre_vocabulary(items) -> list[str]:
    """Every genre of a catalogue (`Item`s), sorted: the vocabulary genre accuracy reads mentions from."""
    return sorted({g for item in items for g in field_values(item, "genres")})
