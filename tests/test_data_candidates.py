"""Seeds, candidate lists (R10) and the versioned candidate file (hash, reuse, tamper detection)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from mmrec_gen.data.candidates import (
    build_candidate_rows,
    get_or_create_candidates,
    load_candidate_file,
    write_candidate_file,
)
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.schema import CandidateRow, Dataset
from mmrec_gen.data.seeding import derive_seed, rng_for
from mmrec_gen.data.split import split_dataset

NUM_ITEMS = 60


@pytest.fixture
def toy_dataset(make_dataset):
    """toy_dataset(users): each user watches the listed item numbers in order (timestamps 1, 2, ...)."""

    def make(users: dict[str, list[int]], num_items: int = NUM_ITEMS) -> Dataset:
        rows = [(u, str(i), t, 4.0) for u, seq in users.items() for t, i in enumerate(seq, start=1)]
        return make_dataset(rows, items=[str(i) for i in range(1, num_items + 1)], name="toy")

    return make


USERS = {
    "1": [1, 2, 3, 4, 5],
    "2": list(range(10, 40)),
    "3": [7, 8, 9],
    "4": [60, 59, 58, 57],
}


# ---- seeding --------------------------------------------------------------------------------------------------


def test_derive_seed_is_pinned_and_key_sensitive() -> None:
    # Pinned values: a change here changes every candidate file and few-shot pick in the project.
    assert derive_seed(0) == 4217253488348325080
    assert derive_seed(0, "candidates", "1") == 4176227855022869794
    assert derive_seed(42, "candidates", "u7") == 3947752830480924174
    assert derive_seed(0, "candidates", 1) == derive_seed(0, "candidates", "1")  # ids are compared as strings
    assert derive_seed(0, "ab", "c") != derive_seed(0, "a", "bc")
    assert 0 <= derive_seed(123, "x") < 2**63
    assert rng_for(5, "k").integers(1 << 30, size=4).tolist() == rng_for(5, "k").integers(1 << 30, size=4).tolist()


# ---- candidate rows -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["valid", "test"])
def test_rows_hold_target_and_only_unseen_negatives(split: str, toy_dataset) -> None:
    ds = toy_dataset(USERS)
    result = split_dataset(ds)
    rows = build_candidate_rows(ds, result, split, seed=0)
    assert [r.user_id for r in rows] == ["1", "2", "3", "4"]
    for row in rows:
        user = result.users[row.user_id]
        _, target = user.history_and_target(split)
        assert row.target == target.item_id
        assert len(row.candidates) == 20 and len(set(row.candidates)) == 20
        assert row.target in row.candidates
        negatives = set(row.candidates) - {row.target}
        assert not negatives & user.all_item_ids  # no train, valid or test item among the negatives
        assert negatives <= set(ds.items)
    # Shuffled: the target is not always first.
    assert {r.candidates.index(r.target) for r in rows} != {0}


def test_rows_are_deterministic_and_independent_of_other_users(toy_dataset) -> None:
    ds = toy_dataset(USERS)
    rows = build_candidate_rows(ds, split_dataset(ds), "test", seed=3)
    assert rows == build_candidate_rows(ds, split_dataset(ds), "test", seed=3)
    # R10: the same user's list does not depend on which other users exist (batching, sharding, order).
    for subset in (["4"], ["3", "1"], ["2", "4", "1"]):
        small = toy_dataset({u: USERS[u] for u in subset})
        sub_rows = build_candidate_rows(small, split_dataset(small), "test", seed=3)
        assert {r.user_id: r for r in sub_rows} == {r.user_id: r for r in rows if r.user_id in subset}
    other_seed = build_candidate_rows(ds, split_dataset(ds), "test", seed=4)
    assert [r.candidates for r in other_seed] != [r.candidates for r in rows]


def test_negatives_cover_every_eligible_item_over_seeds(toy_dataset) -> None:
    # 60 items, user 2 saw 30: over many seeds every one of the 30 eligible items shows up, no seen one does.
    ds = toy_dataset({"2": USERS["2"]})
    result = split_dataset(ds)
    seen: set[str] = set()
    for seed in range(40):
        seen |= set(build_candidate_rows(ds, result, "test", seed=seed)[0].candidates)
    eligible = {str(i) for i in range(1, 61)} - {str(i) for i in range(10, 40)}
    assert seen == eligible | {"39"}


def test_too_few_eligible_items_names_user_and_fix(toy_dataset) -> None:
    ds = toy_dataset({"1": [1, 2, 3], "2": list(range(1, 45))})
    with pytest.raises(
        DataFormatError, match=r"user 2 has interacted with 44 of 60 items.*lower --num-candidates to at most 17"
    ):
        build_candidate_rows(ds, split_dataset(ds), "test", seed=0)
    assert len(build_candidate_rows(ds, split_dataset(ds), "test", seed=0, num_candidates=17)[1].candidates) == 17


# ---- candidate file -------------------------------------------------------------------------------------------


def test_content_hash_matches_the_documented_definition(tmp_path: Path) -> None:
    rows = [CandidateRow("1", ("b", "a", "c"), "a"), CandidateRow("2", ("c", "d", "a"), "d")]
    cf = write_candidate_file(rows, dataset="toy", split="test", seed=0, num_candidates=3, out_dir=tmp_path)
    payload = (
        '{"dataset":"toy","format":"mmrec-candidates","num_candidates":3,"seed":0,"split":"test","version":1}\n'
        '{"candidates":["b","a","c"],"target":"a","user_id":"1"}\n'
        '{"candidates":["c","d","a"],"target":"d","user_id":"2"}\n'
    )
    expected = hashlib.sha256(payload.encode()).hexdigest()
    assert cf.content_hash == expected == "f5ed4b08aa712232ecdbc41d733c20b253d70cafc4a0f3d59af127ed53b16829"
    assert Path(cf.path).name == f"candidates-toy-test-seed0-n3-{expected[:12]}.jsonl"
    lines = Path(cf.path).read_text().splitlines()
    assert json.loads(lines[0]) == {
        "format": "mmrec-candidates", "version": 1, "dataset": "toy", "split": "test", "seed": 0,
        "num_candidates": 3, "content_hash": expected,
    }  # fmt: skip
    assert [json.loads(x) for x in lines[1:]] == [
        {"user_id": "1", "candidates": ["b", "a", "c"], "target": "a"},
        {"user_id": "2", "candidates": ["c", "d", "a"], "target": "d"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == [Path(cf.path).name]  # no temp file left behind


def test_get_or_create_writes_once_then_reuses(tmp_path: Path, toy_dataset) -> None:
    ds = toy_dataset(USERS)
    result = split_dataset(ds)
    first = get_or_create_candidates(ds, result, "test", 0, 20, tmp_path)
    assert re.fullmatch(r"candidates-toy-test-seed0-n20-[0-9a-f]{12}\.jsonl", Path(first.path).name)
    assert Path(first.path).name.endswith(f"-{first.content_hash[:12]}.jsonl")
    assert first.rows == build_candidate_rows(ds, result, "test", 0, 20)
    os.utime(first.path, ns=(1_000_000_000, 1_000_000_000))
    again = get_or_create_candidates(ds, result, "test", 0, 20, tmp_path)
    assert again == first
    assert os.stat(first.path).st_mtime_ns == 1_000_000_000  # reused, not rewritten
    loaded = load_candidate_file(first.path)
    assert (loaded.dataset, loaded.split, loaded.seed, loaded.num_candidates) == ("toy", "test", 0, 20)
    assert loaded.rows == first.rows
    valid = get_or_create_candidates(ds, result, "valid", 0, 20, tmp_path)
    other = get_or_create_candidates(ds, result, "test", 1, 20, tmp_path)
    assert len({first.path, valid.path, other.path}) == 3
    assert len(list(tmp_path.iterdir())) == 3


def test_edited_file_is_detected(tmp_path: Path, toy_dataset) -> None:
    ds = toy_dataset(USERS)
    cf = get_or_create_candidates(ds, split_dataset(ds), "test", 0, 20, tmp_path)
    path = Path(cf.path)
    original = path.read_text()
    lines = original.splitlines()
    row = json.loads(lines[1])
    negative = next(c for c in row["candidates"] if c != row["target"])
    unused = next(i for i in ds.items if i not in row["candidates"])
    row["candidates"][row["candidates"].index(negative)] = unused
    path.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"candidates-toy-test-seed0-n20-.*was edited; delete it or regenerate"):
        load_candidate_file(path)
    with pytest.raises(DataFormatError, match="was edited"):  # reuse refuses an edited file too
        get_or_create_candidates(ds, split_dataset(ds), "test", 0, 20, tmp_path)

    header = json.loads(lines[0])
    header["seed"] = 1
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(DataFormatError, match="was edited"):
        load_candidate_file(path)
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # a user removed
    with pytest.raises(DataFormatError, match="was edited"):
        load_candidate_file(path)
    path.write_text("not json\n")
    with pytest.raises(DataFormatError, match="line 1 is not a mmrec-candidates header"):
        load_candidate_file(path)
    path.write_text(original)
    assert load_candidate_file(path).rows == cf.rows


# ---- a user who has interacted with every item (issue 23) -----------------------------------------------------


def test_a_user_with_every_item_gets_a_message_that_says_what_works(toy_dataset) -> None:
    """No --num-candidates works for such a user (1 is refused): the message says so and gives the fixes."""
    ds = toy_dataset({"1": [1, 2, 3], "2": list(range(1, NUM_ITEMS + 1))})
    with pytest.raises(DataFormatError) as exc:
        build_candidate_rows(ds, split_dataset(ds), "test", seed=0)
    message = str(exc.value)
    assert "user 2 has interacted with all 60 items, so no negative can be drawn for it" in message
    assert "at most 1" not in message and "remove user 2's interactions" in message
    assert "--num-candidates all ranks the whole catalogue without this user" in message


def test_whole_catalogue_excludes_a_user_with_no_negative_and_counts_it(toy_dataset, caplog) -> None:
    """It would get `catalogue_size: 1, target_rank: 1` and count as a hit (on the probe data the whole HR@1)."""
    from mmrec_gen.data.candidates import all_item_candidates
    from mmrec_gen.data.inputs import RunInputs, run_meta

    ds = toy_dataset({"1": [1, 2, 3], "2": list(range(1, NUM_ITEMS + 1)), "3": [4, 5, 6, 7]})
    split_result = split_dataset(ds)
    cand = all_item_candidates(ds, split_result, "test", 0)
    assert [r.user_id for r in cand.rows] == ["1", "3"]
    assert all(len(r.candidates) >= 2 for r in cand.rows)
    assert list(cand.excluded) == ["2"] and "interacted with all 60 items" in cand.excluded["2"]
    assert "whole catalogue: 1 of 3 users excluded" in caplog.text and "2" in caplog.text
    meta = run_meta(RunInputs(ds, split_result, cand), model="m", mode="items", template="t", shots=0)
    assert meta["excluded_users"] == 1 and meta["candidates"] == "all"

    only = toy_dataset({"2": list(range(1, NUM_ITEMS + 1))})
    with pytest.raises(DataFormatError, match=r"every user of the test split has interacted with every item"):
        all_item_candidates(only, split_dataset(only), "test", 0)
