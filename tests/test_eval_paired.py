"""The paired HR@1 comparison: hand-counted discordant users and McNemar's exact p-value."""

from __future__ import annotations

import math

import pytest

from mmrec_gen.eval.paired import mcnemar_exact, paired_hr1


def _row(user, first, target="t", ranking=True, hash_="h"):
    return {"user_id": user, "ranking": [first, "x"] if ranking else None, "target": target,
            "meta": {"candidates_hash": hash_}}  # fmt: skip


def test_paired_counts_and_p_value_by_hand():
    a = [_row("1", "t"), _row("2", "t"), _row("3", "x"), _row("4", "x"), _row("5", "t", ranking=False)]
    b = [_row("1", "t"), _row("2", "x"), _row("3", "t"), _row("4", "t"), _row("5", "t"), _row("6", "t")]
    result = paired_hr1(a, b)
    # Users 1..6; A hits 1, 2 (5 is an error row, 6 is missing: misses); B hits 1, 3, 4, 5, 6.
    assert result["n_users"] == 6 and result["only_a"] == 1 and result["only_b"] == 4
    assert result["hr1_a"] == pytest.approx(2 / 6) and result["hr1_b"] == pytest.approx(5 / 6)
    assert result["diff_b_minus_a"] == pytest.approx(3 / 6)
    # Exact two-sided binomial: P(X <= 1 or X >= 4 | n=5, p=1/2) = (1 + 5 + 5 + 1) / 32.
    assert result["mcnemar_p"] == pytest.approx(12 / 32)


def test_mcnemar_edge_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert math.isclose(mcnemar_exact(10, 0), mcnemar_exact(0, 10))


def test_files_of_different_candidate_files_are_refused():
    with pytest.raises(ValueError, match="different candidate files"):
        paired_hr1([_row("1", "t", hash_="a")], [_row("1", "t", hash_="b")])
