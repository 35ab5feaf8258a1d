"""The one result row every ranking method writes (LLM ranker, classic baselines, batch jobs) and eval reads.

A row is one user's outcome: a ranking of its candidates, or an error naming the user. On disk (JSONL from
`mmrec rank`, Parquet shards from `mmrec batch-rank`) and between processes it is the plain dict of `to_dict`,
with the keys in `ROW_FIELDS` order and any extra keys (a rating baseline's `pred_rating` / `true_rating`, a batch
job's `explanation`) after them::

    {"user_id": str, "candidates": [ids in display order] or null, "ranking": [ids, a full permutation] or null,
     "target": id or null, "valid": bool, "raw_output": str or null, "errors": {ERROR_KEYS: int},
     "scores": [float per candidate, in candidate order] or null, "truncated": bool, "n_history": int,
     "error": null or "message", "meta": {"dataset", "split", "candidates_hash", "seed", "model", "mode", ...}}

Tie rule (one for every method): candidates are ranked by score, high first; equal scores go by item id
(`id_sort_key`: numeric ids numerically), never by display order, so a ranking does not depend on where a
candidate was shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrec_gen.data.split import id_sort_key

# The parser's counters of a generated answer (rank/parsing.py), zero for the other modes.
ERROR_KEYS = ("invalid", "duplicate", "missing", "out_of_candidate", "from_history")
ROW_FIELDS = (
    "user_id", "candidates", "ranking", "target", "valid", "raw_output", "errors", "scores", "truncated",
    "n_history", "error", "meta",
)  # fmt: skip


def empty_errors() -> dict[str, int]:
    return dict.fromkeys(ERROR_KEYS, 0)


def rank_by_scores(candidates: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Candidates by score, high first; equal scores by item id (the tie rule above)."""
    if len(scores) != len(candidates):
        raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], id_sort_key(candidates[i])))
    return [candidates[i] for i in order]


# A whole-catalogue row (`--num-candidates all`) keeps the top of its ranking and the held-out item's rank: HR@k and
# NDCG@k for k <= 10 need only the top 10, MRR only the rank, and ~10k ids and scores per user would not fit a file.
CATALOGUE_TOP = 100


def catalogue_row(row: dict[str, Any], keep: int = CATALOGUE_TOP) -> dict[str, Any]:
    """The row of a whole-catalogue ranking as written: `candidates` and `scores` dropped, `ranking` cut to its
    first `keep` items, `target_rank` (1-based, among all `catalogue_size` ranked items) added."""
    if row.get("ranking") is None:  # an error row: nothing to cut
        return {**row, "candidates": None, "catalogue_size": len(row.get("candidates") or [])}
    ranking = row["ranking"]
    return {
        **row, "candidates": None, "scores": None, "ranking": ranking[:keep], "catalogue_size": len(ranking),
        "target_rank": ranking.index(row["target"]) + 1 if row.get("target") in ranking else None,
    }  # fmt: skip


@dataclass
class ResultRow:
    """One user's row; build it with `scored` or `failed` (or the fields themselves), write it with `to_dict`."""

    user_id: str
    candidates: list[str] | None
    target: str | None
    meta: dict[str, Any]
    ranking: list[str] | None = None
    valid: bool = False
    raw_output: str | None = None
    errors: dict[str, int] = field(default_factory=empty_errors)
    scores: list[float] | None = None
    truncated: bool = False
    n_history: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def scored(
        cls, user_id: str, candidates: Sequence[str], target: str | None, scores: Sequence[float], meta: dict,
        *, n_history: int, truncated: bool = False, **extra,
    ) -> ResultRow:  # fmt: skip
        """A valid row ranked by per-candidate `scores` (in candidate order) under the tie rule."""
        scores = [float(s) for s in scores]
        if not all(math.isfinite(s) for s in scores):
            raise ValueError(f"user {user_id}: a NaN or infinite score among {len(scores)} candidate scores")
        return cls(
            str(user_id), list(candidates), target, meta, ranking=rank_by_scores(list(candidates), scores),
            valid=True, scores=scores, truncated=truncated, n_history=n_history, extra=extra,
        )  # fmt: skip

    @classmethod
    def failed(
        cls, user_id: str, candidates: Sequence[str] | None, target: str | None, message: str, meta: dict,
        *, n_history: int = 0, truncated: bool = False,
    ) -> ResultRow:  # fmt: skip
        """An error row: it names the user and why it has no ranking; it scores 0 on every metric."""
        cands = list(candidates) if candidates is not None else None
        return cls(str(user_id), cands, target, meta, error=message, n_history=n_history, truncated=truncated)

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in ROW_FIELDS}
        row["errors"] = {k: int(self.errors.get(k, 0)) for k in ERROR_KEYS}
        clash = set(self.extra) & set(ROW_FIELDS)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} would overwrite row fields")
        return {**row, **self.extra}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ResultRow:
        """The row of a dict read back from a file (keys outside ROW_FIELDS go to `extra`)."""
        values = {name: row[name] for name in ROW_FIELDS if name in row}
        missing = [name for name in ("user_id", "meta") if name not in values]
        if missing:
            raise ValueError(f"a result row needs {', '.join(missing)}; got keys {sorted(row)}")
        values.setdefault("candidates", None)
        values.setdefault("target", None)
        return cls(**values, extra={k: v for k, v in row.items() if k not in ROW_FIELDS})
