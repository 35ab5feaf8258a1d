"""Paired comparison of two rankings of the same candidate file: per-user HR@1 hits and McNemar's exact test.

Users are matched by user id; a user missing from either file, or an error row, counts as a miss (as in every
metric of this project). McNemar's exact test is the two-sided binomial test on the discordant users: b users hit
only in A, c only in B, p = P(min(b, c) or fewer of b + c fair coin flips, both tails).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def top1_hits(rows: Sequence[dict[str, Any]]) -> dict[str, bool]:
    return {str(r["user_id"]): bool(r.get("ranking")) and r["ranking"][0] == r["target"] for r in rows}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (1.0 when there are none)."""
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def paired_hr1(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """HR@1 of A and B over the union of their users, the difference B - A, the discordant counts and McNemar's p."""
    hashes = {r.get("meta", {}).get("candidates_hash") for r in (*rows_a, *rows_b)}
    if len(hashes) != 1:
        raise ValueError(f"the two files rank different candidate files {sorted(map(str, hashes))}: not paired")
    hits_a, hits_b = top1_hits(rows_a), top1_hits(rows_b)
    users = sorted(set(hits_a) | set(hits_b))
    a = [hits_a.get(u, False) for u in users]
    b = [hits_b.get(u, False) for u in users]
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = len(users)
    return {
        "n_users": n,
        "hr1_a": sum(a) / n if n else 0.0,
        "hr1_b": sum(b) / n if n else 0.0,
        "diff_b_minus_a": (sum(b) - sum(a)) / n if n else 0.0,
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }
