"""Explanations for each user's top-ranked item, with per-explanation checks.

Checks: `hallucinated_titles` are catalogue titles, or quoted titles, the text mentions that are neither in the
user's history nor among the candidates; `cites_history` is whether at least one history title is mentioned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.rank.backend import BackendError, RankBackend
from mmrec_gen.rank.ranker import UserTask
from mmrec_gen.rank.titles import mentioned_titles, normalize_title

logger = logging.getLogger(__name__)

_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»\n]{3,80})[\"“”«»]")


def check_explanation(text: str, history: Sequence[str], candidates: Sequence[str], catalogue: dict[str, str]) -> dict:
    """Which titles an explanation mentions, which of them are hallucinated, and whether it cites the history."""
    history_norm = {normalize_title(t) for t in history}
    allowed = history_norm | {normalize_title(t) for t in candidates}
    known = dict(catalogue)
    for title in [*history, *candidates]:
        known.setdefault(normalize_title(title), title)
    mentioned = mentioned_titles(text, known)
    hallucinated = [known[m] for m in mentioned if m not in allowed]
    # A quoted title that matches nothing we know is a made-up title.
    for quoted in _QUOTED.findall(text):
        norm = normalize_title(quoted)
        if norm and norm not in known and not any(norm in a or a in norm for a in allowed if a):
            hallucinated.append(quoted.strip())
    return {
        "mentioned_titles": [known[m] for m in mentioned],
        "hallucinated_titles": hallucinated,
        "cites_history": any(m in history_norm for m in mentioned),
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
) -> list[dict]:
    """One row per task: the explanation of `top_items[i]` for tasks[i], or an error row naming the user."""
    rows: list[dict | None] = [None] * len(tasks)
    prompts, index = [], []
    for i, (task, item) in enumerate(zip(tasks, top_items, strict=True)):
        base = {"user_id": task.user_id, "item_id": item.item_id, "title": item.title, "target": task.target}
        try:
            prompts.append(builder.explain(task.user_id, task.history, item))
            index.append(i)
            rows[i] = base
        except (ValueError, KeyError) as exc:
            logger.warning("user %s: %s", task.user_id, exc)
            rows[i] = {**base, "explanation": None, "error": f"{type(exc).__name__}: {exc}", "meta": meta}
    outputs = backend.generate(prompts, max_new_tokens) if prompts else []
    for i, out in zip(index, outputs, strict=True):
        task, row = tasks[i], rows[i]
        if isinstance(out, BackendError):
            rows[i] = {**row, "explanation": None, "error": str(out), "meta": meta}
            continue
        text = out.strip()
        checks = check_explanation(
            text, [h.item.title for h in task.history], [c.title for c in task.candidates], catalogue
        )
        rows[i] = {**row, "explanation": text, **checks, "error": None, "meta": meta}
    return rows  # type: ignore[return-value]


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
