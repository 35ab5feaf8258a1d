"""The chronological leave-one-out split on handmade interactions."""

from __future__ import annotations

import logging
import math

import pytest

from mmrec_gen.data.schema import Interaction
from mmrec_gen.data.split import id_sort_key, sort_ids, split_dataset


def test_split_values_tie_break_order_and_dropped_user(caplog, make_dataset) -> None:
    nan = math.nan
    ds = make_dataset(
        [
            ("10", "5", 300, 4.0),
            ("2", "10", 50, 3.0),  # user 2: items 10 and 9 share t=50 -> 9 before 10 (numeric, not "10" < "9")
            ("2", "9", 50, 2.0),
            ("10", "6", 100, nan),
            ("2", "1", 10, 5.0),
            ("2", "7", 99, 1.0),
            ("10", "7", 200, 2.0),
            ("1", "3", 1, 4.0),  # user 1 has only 2 interactions -> dropped
            ("1", "4", 2, 4.0),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="mmrec_gen.data.split"):
        result = split_dataset(ds)
    assert result.dropped_users == 1
    assert "dropped 1 of 3 users with fewer than 3 interactions" in caplog.text
    assert list(result.users) == ["2", "10"]  # numeric user order: "2" < "10"

    two = result.users["2"]
    assert two.train == (Interaction("1", 10, 5.0), Interaction("9", 50, 2.0))
    assert two.valid == Interaction("10", 50, 3.0)
    assert two.test == Interaction("7", 99, 1.0)

    ten = result.users["10"]
    assert ten.train == (Interaction("6", 100, None),)  # NaN rating -> None
    assert (ten.valid.item_id, ten.test.item_id) == ("7", "5")
    assert ten.history_and_target("test") == ((Interaction("6", 100, None), Interaction("7", 200, 2.0)), ten.test)
    assert ten.history_and_target("valid") == ((Interaction("6", 100, None),), ten.valid)


def test_non_integer_ids_sort_lexicographically(make_dataset) -> None:
    ds = make_dataset(
        [("bob", "b", 5, 1.0), ("bob", "a", 5, 1.0), ("bob", "c", 1, 1.0), ("al", "x", 1, 1.0), ("al", "y", 2, 1.0),
         ("al", "z", 3, 1.0), ("10", "x", 1, 1.0), ("10", "y", 1, 1.0), ("10", "z", 1, 1.0)]
    )  # fmt: skip
    result = split_dataset(ds)
    assert list(result.users) == ["10", "al", "bob"]  # not all integer -> lexicographic
    bob = result.users["bob"]
    assert [bob.train[0].item_id, bob.valid.item_id, bob.test.item_id] == ["c", "a", "b"]


def test_id_sort_key_is_a_total_order_with_integers_first() -> None:
    ids = ["1a", "10", "2", "b", "02", "9"]
    assert sorted(ids, key=id_sort_key) == ["02", "2", "9", "10", "1a", "b"]
    assert sort_ids(["10", "9", "100"]) == ["9", "10", "100"]
    assert sort_ids(["10", "9", "x"]) == ["10", "9", "x"]


def test_min_interactions_is_configurable_and_validated(make_dataset) -> None:
    ds = make_dataset(
        [("1", "a", 1, 1.0), ("1", "b", 2, 1.0), ("1", "c", 3, 1.0), ("2", "a", 1, 1.0), ("2", "b", 2, 1.0)]
    )
    assert list(split_dataset(ds, min_interactions=2).users) == ["1", "2"]
    result = split_dataset(ds, min_interactions=4)
    assert (result.users, result.dropped_users) == ({}, 2)
    with pytest.raises(ValueError, match="at least 2"):
        split_dataset(ds, min_interactions=1)
