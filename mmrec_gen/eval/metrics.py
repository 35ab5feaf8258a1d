"""Ranking, AUC and rating metrics on the project's one evaluation protocol (DESIGN.md).

A result row (one per user, written by `mmrec rank`, `mmrec batch-rank` and the baselines; the type is
`mmrec_gen.data.rows.ResultRow`) looks like::

    {"user_id": str, "candidates": [ids in display order], "ranking": [ids, full permutation] or null,
     "target": id, "valid": bool, "raw_output": str or null, "errors": {"invalid": int, "duplicate": int,
     "missing": int, "out_of_candidate": int, "from_history": int}, "scores": [float per candidate] or null,
     "truncated": bool, "n_history": int, "error": null or "message", "meta": {"dataset", "split",
     "candidates_hash", "seed", "model", "mode", "template", "shots"}}

Unknown keys (for example `pred_rating` / `true_rating` from rating baselines) are ignored.

Ranking metrics are computed by ir-measures (pytrec_eval underneath), never by hand. They are averaged over
ALL evaluated users: a user whose output is invalid (`valid == False`) or who has an error record (`ranking`
null or `error` set) scores 0 on every metric and still counts in the denominator. This is the unconditional
protocol, not LLaRA's HR@1 over valid outputs only.

Ties: ir-measures / trec_eval sort a run by score and break score ties by document id, which would make a
metric depend on item ids. We avoid ties by construction: `ranking` is a permutation, and the run score of
the item at 0-based position p is `len(ranking) - p`, so all scores of one user are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ir_measures
from ir_measures import RR, Success, nDCG
from sklearn.metrics import mean_absolute_error, roc_auc_score, root_mean_squared_error

from mmrec_gen.data.rows import ERROR_KEYS

ERROR_COUNTERS = ERROR_KEYS  # the parser counters every result row carries (data/rows.py)

# Output key -> ir-measures measure.
_MEASURES = {
    "hr@1": Success @ 1,
    "hr@5": Success @ 5,
    "ndcg@5": nDCG @ 5,
    "ndcg@10": nDCG @ 10,
    "mrr": RR,
}


def _user_id(row: dict[str, Any], index: int) -> str:
    if row.get("user_id") is None:
        raise ValueError(f"result row {index} has no 'user_id'; every row must name its user: {str(row)[:200]}")
    return str(row["user_id"])


def row_problem(row: dict[str, Any]) -> str | None:
    """What makes a result row unfit to score, naming the field and the fix; None for a fit row.

    A row that claims a valid ranking (`valid` true, `ranking` set, no `error`) must rank exactly its candidates,
    and every row's target must be one of its candidates: anything else would be scored as if it were a full
    ranking (a ranking of 3 of 20 candidates only looks better). A row marked `valid: false` is counted as invalid.
    """
    valid = row.get("valid")
    if valid is not None and not isinstance(valid, bool):
        return f"'valid' must be true or false, got {valid!r}"
    if "catalogue_size" in row:
        return _catalogue_row_problem(row, valid)
    candidates = row.get("candidates")
    if candidates is not None and (not isinstance(candidates, list) or not candidates):
        return f"'candidates' must be a non-empty list of item ids, got {str(candidates)[:80]}"
    cands = [str(c) for c in candidates or []]
    if len(set(cands)) != len(cands):
        return "'candidates' repeats an item; candidate lists come from the candidate file: re-run the command"
    if cands and str(row.get("target")) not in cands:
        return (
            f"'target' {row.get('target')!r} is not one of the {len(cands)} 'candidates'; the row does not follow "
            "its candidate file: re-run the command that wrote it"
        )
    if row.get("error") is not None or row.get("ranking") is None or not valid:
        return None
    ranking = row["ranking"]
    if not isinstance(ranking, list):
        return f"'ranking' must be a list of candidate ids, got {type(ranking).__name__}"
    ranked = [str(item) for item in ranking]
    if len(set(ranked)) != len(ranked):
        return (
            f"'ranking' repeats an item ({ranked}); rankings must be permutations of the candidates (the parser "
            "guarantees this: was the row written by hand?)"
        )
    if not cands:
        return "'candidates' is missing, so the ranking cannot be checked; re-run the command that wrote it"
    outside = [item for item in ranked if item not in cands]
    if outside:
        return f"'ranking' holds {outside[0]!r}, which is not one of the 'candidates'; re-run the command"
    if len(ranked) != len(cands):
        return (
            f"'ranking' holds {len(ranked)} of the {len(cands)} candidates; a valid row ranks every candidate: "
            "re-run the command, or set 'valid': false to count the row as invalid"
        )
    return None


def _catalogue_row_problem(row: dict[str, Any], valid) -> str | None:
    """A whole-catalogue row (`--num-candidates all`, data/rows.py catalogue_row): the top of the ranking and the
    held-out item's rank among `catalogue_size` items must agree."""
    size = row.get("catalogue_size")
    if not isinstance(size, int) or size < 1:
        return f"'catalogue_size' must be a positive number of ranked items, got {size!r}"
    if row.get("error") is not None or row.get("ranking") is None or not valid:
        return None
    ranked = [str(item) for item in row["ranking"]]
    if len(set(ranked)) != len(ranked) or len(ranked) > size:
        return f"'ranking' must list distinct items, at most 'catalogue_size' ({size}); re-run the command"
    rank = row.get("target_rank")
    if not isinstance(rank, int) or not 1 <= rank <= size:
        return f"'target_rank' must be the held-out item's rank in 1..{size}, got {rank!r}; re-run the command"
    target = str(row.get("target"))
    at = ranked.index(target) + 1 if target in ranked else None
    if (at is not None and at != rank) or (at is None and rank <= len(ranked)):
        return f"'target_rank' {rank} does not match the target's place in 'ranking'; re-run the command"
    return None


def _is_scorable(row: dict[str, Any]) -> bool:
    """True when the row holds a valid ranking that counts; everything else scores 0."""
    return row.get("error") is None and row.get("ranking") is not None and bool(row.get("valid"))


def _check_rows(rows: Sequence[dict[str, Any]]) -> str | None:
    """Reject duplicate users and mixed candidate files; return the shared candidates hash (None if absent).

    Rows without a `meta.candidates_hash` (for example hand-built error records) are not compared.
    """
    if not rows:
        raise ValueError("no result rows to evaluate: the results file is empty")
    seen: set[str] = set()
    first_hash: str | None = None
    first_user: str | None = None
    for index, row in enumerate(rows):
        uid = _user_id(row, index)
        if uid in seen:
            raise ValueError(
                f"user {uid!r} appears more than once in the results; a run must hold one row per user "
                f"(a resumed job that duplicated a shard?): deduplicate the file before evaluating"
            )
        seen.add(uid)
        meta = row.get("meta") or {}
        row_hash = meta.get("candidates_hash")
        if row_hash is None:
            continue
        if first_hash is None:
            first_hash, first_user = str(row_hash), uid
        elif str(row_hash) != first_hash:
            raise ValueError(
                f"results mix candidate files: user {first_user!r} has candidates_hash={first_hash} but user "
                f"{uid!r} has candidates_hash={row_hash}; never average across candidate files: evaluate each "
                f"file separately"
            )
    return first_hash


def ranking_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """HR@1, HR@5, NDCG@5, NDCG@10, MRR, validity and error rates over all users in `rows`.

    qrels are {user_id: {target: 1}}; the run is {user_id: {item: float(len(ranking) - position)}} (distinct
    scores, so trec_eval's tie-break by document id never applies). Invalid users and error records score 0
    and are counted in `n_users`. Rates (`invalid_rate`, ...) are the fraction of users whose parser counter
    is non-zero. Raises ValueError on duplicate users, mixed candidates hashes, an empty input or a row that
    `row_problem` rejects.
    """
    candidates_hash = _check_rows(rows)
    n_users = len(rows)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    n_valid = 0
    beyond_top: dict[str, int] = {}  # whole-catalogue users whose held-out item is below the kept top: its rank
    n_error_records = 0
    nonzero = dict.fromkeys(ERROR_COUNTERS, 0)
    for index, row in enumerate(rows):
        uid = _user_id(row, index)
        if row.get("error") is not None or row.get("ranking") is None:
            n_error_records += 1
        errors = row.get("errors") or {}
        for key in ERROR_COUNTERS:
            if errors.get(key):
                nonzero[key] += 1
        problem = row_problem(row)
        if problem:
            raise ValueError(f"user {uid!r}: {problem}")
        if not _is_scorable(row):
            continue
        n_valid += 1
        if "catalogue_size" in row and str(row["target"]) not in [str(i) for i in row["ranking"]]:
            beyond_top[uid] = row["target_rank"]
        ranking = [str(item) for item in row["ranking"]]
        qrels[uid] = {str(row["target"]): 1}
        run[uid] = {item: float(len(ranking) - pos) for pos, item in enumerate(ranking)}

    sums = dict.fromkeys(_MEASURES, 0.0)
    if run:
        key_of = {measure: key for key, measure in _MEASURES.items()}
        for metric in ir_measures.iter_calc(list(_MEASURES.values()), qrels, run):
            key = key_of[metric.measure]
            if key == "mrr" and metric.query_id in beyond_top:
                continue  # added below from the row's target_rank
            sums[key] += float(metric.value)
    # A whole-catalogue row keeps only the top of its ranking: a held-out item below it still has its reciprocal rank.
    sums["mrr"] += sum(1.0 / rank for rank in beyond_top.values())

    result: dict[str, Any] = {key: total / n_users for key, total in sums.items()}
    result.update(
        valid_ratio=n_valid / n_users,
        n_users=n_users,
        n_valid=n_valid,
        n_error_records=n_error_records,
        invalid_rate=nonzero["invalid"] / n_users,
        duplicate_rate=nonzero["duplicate"] / n_users,
        out_of_candidate_rate=nonzero["out_of_candidate"] / n_users,
        from_history_rate=nonzero["from_history"] / n_users,
        missing_rate=nonzero["missing"] / n_users,
        candidates_hash=candidates_hash,
    )
    return result


def pointwise_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC of `scores` against binary `labels` (scikit-learn; tied scores count 0.5).

    Returns None when `labels` hold a single class (or are empty): AUC is undefined there, and callers count
    such cases instead of inventing a value.
    """
    if len(labels) != len(scores):
        raise ValueError(f"pointwise_auc: {len(labels)} labels but {len(scores)} scores; pass one score per label")
    if len(set(int(label) for label in labels)) < 2:
        return None
    return float(roc_auc_score([int(label) for label in labels], [float(s) for s in scores]))


def user_auc(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over users of the per-user AUC of `scores` (per candidate) against the target indicator.

    Users whose `scores` are null (error records, generate mode) are skipped and counted in
    `auc_users_skipped`; users whose candidates do not contain the target (a single class) are skipped and
    counted in `auc_users_single_class`. `auc` is None when no user could be scored.
    """
    values: list[float] = []
    skipped = 0
    single_class = 0
    for index, row in enumerate(rows):
        uid = _user_id(row, index)
        scores = row.get("scores")
        if scores is None:
            skipped += 1
            continue
        candidates = [str(c) for c in row.get("candidates") or []]
        if len(scores) != len(candidates):
            raise ValueError(
                f"user {uid!r}: {len(scores)} scores for {len(candidates)} candidates; 'scores' must hold one "
                f"float per candidate in 'candidates' order"
            )
        labels = [int(c == str(row.get("target"))) for c in candidates]
        try:
            value = pointwise_auc(labels, scores)
        except ValueError as exc:  # e.g. NaN scores: name the user instead of a bare sklearn message
            raise ValueError(f"user {uid!r}: cannot compute AUC from scores {scores}: {exc}") from exc
        if value is None:
            single_class += 1
            continue
        values.append(value)
    return {
        "auc": sum(values) / len(values) if values else None,
        "auc_users": len(values),
        "auc_users_skipped": skipped,
        "auc_users_single_class": single_class,
    }


def rating_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """RMSE and MAE of rating predictions (scikit-learn)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"rating_metrics: {len(y_true)} true ratings but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("rating_metrics: no ratings to evaluate")
    true = [float(v) for v in y_true]
    pred = [float(v) for v in y_pred]
    if any(math.isnan(v) for v in true + pred):
        raise ValueError("rating_metrics: NaN in ratings; drop or fill unrated rows before evaluating")
    return {"rmse": float(root_mean_squared_error(true, pred)), "mae": float(mean_absolute_error(true, pred))}
