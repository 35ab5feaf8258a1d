"""Evaluate result files and print them as one comparable table under their protocol line(s)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from mmrec_gen.data.results import iter_results
from mmrec_gen.eval.metrics import ranking_metrics, rating_metrics, row_problem, user_auc

logger = logging.getLogger(__name__)

# Order of the fields in a protocol line; `candidates` is meta["candidates_hash"].
_PROTOCOL_FIELDS = (
    ("dataset", "dataset"),
    ("split", "split"),
    ("candidates", "candidates_hash"),
    ("seed", "seed"),
    ("model", "model"),
    ("mode", "mode"),
    ("template", "template"),
    ("shots", "shots"),
)
# The fields that must agree for two result files to be comparable.
_SHARED_KEYS = ("dataset", "split", "candidates_hash", "seed")

_METRIC_COLUMNS = (
    ("HR@1", "hr@1"),
    ("HR@5", "hr@5"),
    ("NDCG@5", "ndcg@5"),
    ("NDCG@10", "ndcg@10"),
    ("MRR", "mrr"),
    ("Valid", "valid_ratio"),
)
_RATE_COLUMNS = (
    ("Inv", "invalid_rate"),
    ("Dup", "duplicate_rate"),
    ("OOC", "out_of_candidate_rate"),
    ("Hist", "from_history_rate"),
    ("Miss", "missing_rate"),
)


def protocol_line(meta: dict[str, Any]) -> str:
    """`protocol: dataset=... split=... candidates=<hash> seed=... model=... mode=... template=... shots=...`.

    Fields absent from `meta` are left out, so the same function prints the shared line of several files.
    """
    parts = [f"{name}={meta[key]}" for name, key in _PROTOCOL_FIELDS if meta.get(key) is not None]
    return "protocol: " + " ".join(parts)


def file_row_problem(row: dict[str, Any]) -> str | None:
    """`row_problem`, plus what a row read from a file must carry: its user and its run's protocol (`meta`)."""
    if row.get("user_id") is None:
        return "'user_id' is missing or null; every row names its user: re-run the command that wrote the file"
    meta = row.get("meta")
    missing = [key for key in _SHARED_KEYS if not isinstance(meta, dict) or meta.get(key) is None]
    if missing:
        what = "'meta' is missing" if not isinstance(meta, dict) else f"'meta' lacks {', '.join(missing)}"
        return f"{what}; every row carries its run's protocol ({', '.join(_SHARED_KEYS)}): re-run the command"
    scores = row.get("scores")
    if scores is not None and (
        not isinstance(scores, list)
        or any(isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) for s in scores)
    ):
        return (
            f"'scores' must be a list of finite numbers, got {str(scores)[:80]}; a NaN or infinite score ranks "
            "nothing: re-run the command that wrote the file (non-finite scores now make an error row)"
        )
    return row_problem(row)


def evaluate_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Ranking metrics of one results file, plus `auc` for pointwise templates with scores, `file` and `meta`.

    Raises ValueError naming the file, the line and the field of the first row `file_row_problem` rejects.

    AUC is added when meta.template starts with "pointwise" and every non-error row carries `scores`.
    """
    rows = []
    first: tuple[int | str, dict] | None = None  # (line, meta) of the first row
    for line_no, row in iter_results(path):
        problem = file_row_problem(row)
        if problem:
            raise ValueError(f"{path}:{line_no}: {problem}")
        first = first or (line_no, row["meta"])
        for key in _SHARED_KEYS:  # candidates_hash mixing is refused by ranking_metrics, naming both users
            if key != "candidates_hash" and row["meta"][key] != first[1][key]:
                raise ValueError(
                    f"{path}:{line_no}: meta.{key} is {row['meta'][key]}, line {first[0]}'s is {first[1][key]}: the "
                    "file mixes rows of different runs; evaluate each run's file separately"
                )
        rows.append(row)
    try:
        result = ranking_metrics(rows)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    meta = dict(rows[0].get("meta") or {})
    non_error = [r for r in rows if r.get("error") is None and r.get("ranking") is not None]
    if str(meta.get("template", "")).startswith("pointwise") and non_error:
        if all(r.get("scores") is not None for r in non_error):
            result.update(user_auc(rows))
        else:
            logger.warning("%s: pointwise template but some rows have no scores; AUC not computed", path)
    result.update(rating_summary(rows))
    # Which users the file ranks: runs on different users of one candidate file are not comparable (format_table).
    user_ids = "\n".join(sorted(str(r["user_id"]) for r in rows))
    result["users_hash"] = hashlib.sha256(user_ids.encode("utf-8")).hexdigest()[:16]
    result["file"] = str(path)
    result["meta"] = meta
    return result


def rating_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`rmse`, `mae`, `rmse_global_mean`, `mae_global_mean`, `n_ratings` of rows with `pred_rating` and `true_rating`.

    Rating baselines (`mmrec baseline mse`) write the predicted and true rating of each user's target; the global-mean
    predictor is meta["rating_train_mean"] (the mean training rating) on the same ratings. Rows without a true rating
    (error rows, unrated targets) are left out and the rest counted in `n_ratings`. Empty when no row has ratings.
    """
    pairs = [
        (float(r["true_rating"]), float(r["pred_rating"]))
        for r in rows
        if r.get("true_rating") is not None and r.get("pred_rating") is not None
    ]
    if not pairs:
        return {}
    true, pred = [t for t, _ in pairs], [p for _, p in pairs]
    out: dict[str, Any] = dict(rating_metrics(true, pred))
    means = {(r.get("meta") or {}).get("rating_train_mean") for r in rows if r.get("pred_rating") is not None}
    means.discard(None)
    if len(means) > 1:
        raise ValueError(f"rows disagree on meta.rating_train_mean ({sorted(means)}): mixed runs in one file?")
    if means:
        base = rating_metrics(true, [float(means.pop())] * len(true))
        out.update(rmse_global_mean=base["rmse"], mae_global_mean=base["mae"])
    out["n_ratings"] = len(pairs)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table (one row per evaluated file, 4 decimals) under the protocol line(s).

    When all files share dataset/split/candidates hash/seed one protocol line is printed; otherwise one line
    per file and a WARNING line, because their numbers are not comparable.
    """
    if not results:
        return "(no results)"
    metas = [r.get("meta") or {} for r in results]
    lines: list[str] = []
    shared = {tuple(m.get(k) for k in _SHARED_KEYS) for m in metas}
    if len(shared) == 1:
        lines.append(protocol_line({k: metas[0].get(k) for k in _SHARED_KEYS}))
    else:
        for result, meta in zip(results, metas, strict=True):
            lines.append(f"{protocol_line(meta)} file={Path(str(result.get('file', '?'))).name}")
        lines.append(
            "WARNING: these files used different candidate files or protocols (dataset/split/candidates/seed "
            "differ); their numbers are not comparable"
        )
    if len(shared) == 1 and len({r.get("users_hash") for r in results}) > 1:
        sizes = ", ".join(f"{Path(str(r.get('file', '?'))).name}: {r.get('n_users')} users" for r in results)
        lines.append(
            f"WARNING: these files rank different users of one candidate file ({sizes}); their numbers are not "
            "comparable: rank the same users (--max-users / --users)"
        )

    with_auc = any("auc" in r for r in results)
    with_rmse = any("rmse" in r for r in results)
    header = ["File", "Model", "Mode", *(c for c, _ in _METRIC_COLUMNS)]
    header += ["AUC"] if with_auc else []
    header += ["RMSE", "MAE"] if with_rmse else []
    header += ["N", "Err", *(c for c, _ in _RATE_COLUMNS)]
    body: list[list[str]] = []
    for result, meta in zip(results, metas, strict=True):
        cells = [Path(str(result.get("file", "?"))).name, _fmt(meta.get("model")), _fmt(meta.get("mode"))]
        cells += [_fmt(result.get(key)) for _, key in _METRIC_COLUMNS]
        cells += [_fmt(result.get("auc"))] if with_auc else []
        cells += [_fmt(result.get("rmse")), _fmt(result.get("mae"))] if with_rmse else []
        cells += [_fmt(result.get("n_users")), _fmt(result.get("n_error_records"))]
        cells += [_fmt(result.get(key)) for _, key in _RATE_COLUMNS]
        body.append(cells)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines.append(render(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(render(cells) for cells in body)
    return "\n".join(lines)
