"""The chronological leave-one-out split of DESIGN.md.

Per user, interactions are sorted by timestamp; ties are broken by item id with `id_sort_key`: ids that are integer
strings ("7", "42") sort numerically and before all other ids, which sort lexicographically by code point. (So two
integer ids compare numerically and two other ids lexicographically; a mixed pair puts the integer id first, which
keeps the order total.) The last interaction is the test target, the second to last the validation target, the
rest the training history. Users with fewer than `min_interactions` interactions are dropped, counted in
`SplitResult.dropped_users` and logged at WARNING.

Users are ordered numerically when every user id is an integer string, else lexicographically.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mmrec_gen.data.schema import Dataset, Interaction, UserSplit

logger = logging.getLogger(__name__)

_INTEGER_RE = re.compile(r"[0-9]+")


def id_sort_key(item_id: str) -> tuple[int, int, str]:
    """Deterministic total order on ids: integer strings numerically and first, then the rest lexicographically."""
    if _INTEGER_RE.fullmatch(item_id):
        return (0, int(item_id), item_id)
    return (1, 0, item_id)


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Ids sorted numerically when all are integer strings, else lexicographically (used for user order)."""
    ids = list(ids)
    if all(_INTEGER_RE.fullmatch(i) for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)


@dataclass
class SplitResult:
    users: dict[str, UserSplit] = field(default_factory=dict)  # ordered by user id (see module docstring)
    dropped_users: int = 0  # users with fewer than min_interactions interactions


def split_dataset(ds: Dataset, min_interactions: int = 3) -> SplitResult:
    """Split every user of `ds` chronologically (last -> test, second to last -> valid, rest -> train)."""
    if min_interactions < 2:
        raise ValueError(f"min_interactions must be at least 2 (a valid and a test target), got {min_interactions}")
    frame = ds.interactions
    # Rank each distinct item id once by id_sort_key, so the per-row sort is a fast numeric lexsort.
    unique_items = sorted(set(frame["item_id"].tolist()), key=id_sort_key)
    item_rank = {item_id: r for r, item_id in enumerate(unique_items)}
    users = frame["user_id"].to_numpy(dtype=object)
    items = frame["item_id"].to_numpy(dtype=object)
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    ratings = frame["rating"].to_numpy(dtype=np.float64)
    ranks = np.fromiter((item_rank[i] for i in items), dtype=np.int64, count=len(items))
    # Plain Python lists: indexing numpy arrays per row would create numpy scalars, 3x slower on ml-1m.
    item_list = items.tolist()
    ts_list = timestamps.tolist()
    rating_list = [None if math.isnan(r) else r for r in ratings.tolist()]
    user_codes, user_index = np.unique(users.astype(str), return_inverse=True)
    order = np.lexsort((ranks, timestamps, user_index))
    boundaries = np.flatnonzero(np.diff(user_index[order])) + 1
    per_user = {}
    for rows in np.split(order, boundaries) if len(order) else []:
        per_user[str(user_codes[user_index[rows[0]]])] = rows

    result = SplitResult()
    for user_id in sort_ids(per_user):
        rows = per_user[user_id]
        if len(rows) < min_interactions:
            result.dropped_users += 1
            continue
        seq = [Interaction(item_list[r], ts_list[r], rating_list[r]) for r in rows.tolist()]
        result.users[user_id] = UserSplit(user_id, tuple(seq[:-2]), seq[-2], seq[-1])
    if result.dropped_users:
        logger.warning(
            "%s: dropped %d of %d users with fewer than %d interactions",
            ds.name, result.dropped_users, len(per_user), min_interactions,
        )  # fmt: skip
    return result
