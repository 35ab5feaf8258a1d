"""Candidate lists and the versioned candidate file every method ranks (DESIGN.md protocol).

For each user: the held-out target of the split plus `num_candidates - 1` negatives drawn uniformly without
replacement from the items the user never interacted with (train, valid or test), then shuffled. The generator is
`rng_for(seed, "candidates", user_id)`, so a user's list never depends on which other users are present, their
order, or batching (docs/RELIABILITY.md R10). The item universe is every item of `ds.items`, sorted by `id_sort_key`.

File format (JSONL, one canonical JSON document per line: sorted keys, no spaces):

    {"content_hash": ..., "dataset": ..., "format": "mmrec-candidates", "num_candidates": 20, "seed": 0,
     "split": "test", "version": 1}
    {"candidates": ["12", "7", ...], "target": "7", "user_id": "1"}
    ...

`content_hash` is sha256 (hex) of the header without the hash followed by the rows, each canonical JSON plus "\\n",
in file order. The file is named `candidates-{dataset}-{split}-seed{seed}-n{num}-{hash[:12]}.jsonl`, written under a
temporary name and renamed (atomic), and reused when it already exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.schema import CandidateFile, CandidateRow, Dataset
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.data.split import SplitResult, id_sort_key

logger = logging.getLogger(__name__)

FORMAT_NAME = "mmrec-candidates"
FORMAT_VERSION = 1
_HEADER_KEYS = ("format", "version", "dataset", "split", "seed", "num_candidates")


def _canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _row_dict(row: CandidateRow) -> dict:
    return {"user_id": row.user_id, "candidates": list(row.candidates), "target": row.target}


def _header(dataset: str, split: str, seed: int, num_candidates: int) -> dict:
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "dataset": dataset, "split": split, "seed": int(seed),
        "num_candidates": int(num_candidates),
    }  # fmt: skip


def _content_hash(header: dict, rows: Iterable[CandidateRow]) -> str:
    digest = hashlib.sha256()
    digest.update((_canonical({k: header[k] for k in _HEADER_KEYS}) + "\n").encode("utf-8"))
    for row in rows:
        digest.update((_canonical(_row_dict(row)) + "\n").encode("utf-8"))
    return digest.hexdigest()


def sample_excluding(rng: np.random.Generator, n: int, excluded: np.ndarray, k: int) -> np.ndarray:
    """k distinct positions drawn uniformly from range(n) minus the sorted, distinct `excluded` positions.

    Draws among the n - len(excluded) allowed positions and maps the j-th allowed one back to its position, so the
    cost is O(k log m), not O(n), per user (ml-25m has 62k items).
    """
    picks = rng.choice(n - len(excluded), size=k, replace=False)
    # excluded[i] - i = how many allowed positions come before the i-th excluded one.
    shifted = excluded - np.arange(len(excluded))
    return picks + np.searchsorted(shifted, picks, side="right")


def build_candidate_rows(
    ds: Dataset, split_result: SplitResult, split: str, seed: int, num_candidates: int = 20
) -> list[CandidateRow]:
    """One `CandidateRow` per user of `split_result` (in its user order) for `split` ('valid' or 'test')."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be at least 1, got {num_candidates}")
    universe = sorted(ds.items, key=id_sort_key)
    position = {item_id: i for i, item_id in enumerate(universe)}
    rows = []
    for user_id, user in split_result.users.items():
        _, target = user.history_and_target(split)
        if target.item_id not in position:
            raise DataFormatError(
                f"dataset {ds.name}: user {user_id}'s {split} target {target.item_id} is not in the items file. "
                "Fix: load the data with load_dataset, which drops interactions with unknown item ids."
            )
        excluded = np.array(sorted(position[i] for i in user.all_item_ids if i in position), dtype=np.int64)
        allowed = len(universe) - len(excluded)
        if allowed == 0:  # lowering --num-candidates cannot help: 2 is the least it takes
            raise DataFormatError(
                f"dataset {ds.name}: user {user_id} has interacted with all {len(universe)} items, so no negative "
                f"can be drawn for it and no candidate list ranks anything. Fix: remove user {user_id}'s "
                "interactions from the data (or add items it has not seen); --num-candidates all ranks the whole "
                "catalogue without this user (it is excluded there, and counted)."
            )
        if allowed < num_candidates - 1:
            raise DataFormatError(
                f"dataset {ds.name}: user {user_id} has interacted with {len(excluded)} of {len(universe)} items, "
                f"leaving {allowed} possible negatives, fewer than the {num_candidates - 1} needed. "
                f"Fix: lower --num-candidates to at most {allowed + 1}."
            )
        rng = rng_for(seed, "candidates", user_id)
        negatives = [universe[p] for p in sample_excluding(rng, len(universe), excluded, num_candidates - 1)]
        candidates = [target.item_id, *negatives]
        order = rng.permutation(len(candidates))
        rows.append(CandidateRow(user_id, tuple(candidates[i] for i in order), target.item_id))
    return rows


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "_"


def write_candidate_file(
    rows: list[CandidateRow], *, dataset: str, split: str, seed: int, num_candidates: int, out_dir: str | Path
) -> CandidateFile:
    """Write (or reuse, when the identical file exists) the candidate file for `rows` in `out_dir`."""
    header = _header(dataset, split, seed, num_candidates)
    content_hash = _content_hash(header, rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"candidates-{_safe_name(dataset)}-{_safe_name(split)}-seed{int(seed)}-n{int(num_candidates)}"
    path = out / f"{name}-{content_hash[:12]}.jsonl"
    if path.exists():
        existing = load_candidate_file(path)  # raises if the file was edited
        if existing.content_hash == content_hash:
            logger.info("reusing candidate file %s", path)
            return existing
        raise DataFormatError(
            f"{path}: holds other candidates (hash {existing.content_hash}) than its name promises ({content_hash}). "
            "Fix: delete it and run again."
        )
    lines = [_canonical({**header, "content_hash": content_hash})]
    lines += [_canonical(_row_dict(row)) for row in rows]
    with atomic_write(path) as handle:  # readers see the whole file or none
        handle.write("\n".join(lines) + "\n")
    logger.info("wrote candidate file %s (%d users)", path, len(rows))
    return CandidateFile(str(path.resolve()), content_hash, dataset, split, int(seed), int(num_candidates), list(rows))


def _parse_row(path: Path, n: int, line: str, num_candidates: int) -> CandidateRow:
    try:
        obj = json.loads(line)
        candidates = tuple(str(c) for c in obj["candidates"])
        row = CandidateRow(str(obj["user_id"]), candidates, str(obj["target"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataFormatError(
            f"{path}: line {n} is not a candidate row ({exc!r}). The file was edited; delete it or regenerate it."
        ) from exc
    if row.target not in row.candidates or len(row.candidates) != num_candidates:
        raise DataFormatError(
            f"{path}: line {n} (user {row.user_id}) needs {num_candidates} candidates including its target. "
            "The file was edited; delete it or regenerate it."
        )
    return row


def load_candidate_file(path: str | Path) -> CandidateFile:
    """Read and verify a candidate file (header, rows, content hash)."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise DataFormatError(f"{path}: line 1 is not a {FORMAT_NAME} header. Fix: delete it or regenerate it.")
    if header.get("version") != FORMAT_VERSION:
        raise DataFormatError(
            f"{path}: version {header.get('version')!r}, this code reads version {FORMAT_VERSION}. Fix: regenerate it."
        )
    missing = [k for k in (*_HEADER_KEYS, "content_hash") if k not in header]
    if missing:
        raise DataFormatError(
            f"{path}: header lacks {', '.join(missing)}. The file was edited; delete it or regenerate."
        )
    rows = [_parse_row(path, n, line, header["num_candidates"]) for n, line in enumerate(lines[1:], 2) if line]
    actual = _content_hash(header, rows)
    if actual != header["content_hash"]:
        raise DataFormatError(
            f"{path}: content hash {actual} does not match the header's {header['content_hash']}: the file was "
            "edited; delete it or regenerate it."
        )
    return CandidateFile(
        str(path.resolve()), actual, str(header["dataset"]), str(header["split"]), int(header["seed"]),
        int(header["num_candidates"]), rows,
    )  # fmt: skip


def all_item_candidates(ds: Dataset, split_result: SplitResult, split: str, seed: int) -> CandidateFile:
    """`--num-candidates all`: per user, the held-out item and every catalogue item the user never interacted with
    (the negatives' universe of the sampled protocol, taken whole), in item-id order. Built in memory, not written:
    the rows are the catalogue minus each history, so a hash of the catalogue and the split names them."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    universe = sorted(ds.items, key=id_sort_key)
    rows, excluded = [], {}
    for user_id, user in split_result.users.items():
        _, target = user.history_and_target(split)
        seen = set(user.all_item_ids) - {target.item_id}
        candidates = tuple(i for i in universe if i not in seen)
        if len(candidates) < 2:  # only the held-out item: rank 1 of 1, a "hit" that measures nothing
            excluded[user_id] = (
                f"user {user_id} has interacted with all {len(universe)} items: no negative to rank the held-out "
                "item against"
            )
            continue
        rows.append(CandidateRow(user_id, candidates, target.item_id))
    if excluded:
        logger.warning(
            "whole catalogue: %d of %d users excluded, having interacted with every item (nothing to rank the "
            "held-out item against; each would count as a hit at rank 1 of 1): %s",
            len(excluded), len(split_result.users), ", ".join(list(excluded)[:5]) + (" ..." if len(excluded) > 5 else ""),
        )  # fmt: skip
    if not rows:
        raise DataFormatError(
            f"dataset {ds.name}: every user of the {split} split has interacted with every item, so the whole "
            "catalogue leaves nothing to rank. Fix: add items, or check that the items file is the full catalogue."
        )
    digest = hashlib.sha256("\n".join([ds.name, split, *universe]).encode("utf-8")).hexdigest()
    name = f"all-items-{_safe_name(ds.name)}-{split}-{digest[:12]}"
    return CandidateFile(name, digest, ds.name, split, seed, 0, rows, excluded)


def get_or_create_candidates(
    ds: Dataset, split_result: SplitResult, split: str, seed: int, num_candidates: int, cache_dir: str | Path
) -> CandidateFile:
    """Build the candidate rows for `split` and write them to (or reuse them from) `cache_dir`."""
    rows = build_candidate_rows(ds, split_result, split, seed, num_candidates)
    return write_candidate_file(
        rows, dataset=ds.name, split=split, seed=seed, num_candidates=num_candidates, out_dir=cache_dir
    )
