"""Few-shot demonstrations drawn from OTHER users' training data only (never a valid/test target).

Everything is seeded from (seed, user id), so the same user gets the same demonstrations whatever the batch
size, worker count or user order (R10).
"""

from __future__ import annotations

from mmrec_gen.data.schema import Dataset
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.data.split import SplitResult
from mmrec_gen.prompting.render import Demo, HistoryEntry


def select_demos(
    ds: Dataset,
    split_result: SplitResult,
    user_id: str,
    *,
    shots: int,
    seed: int,
    num_candidates: int,
    history_len: int = 5,
) -> list[Demo]:
    """`shots` demonstrations: for another user, their last training item is the answer, the training items
    before it are the history, and the candidates are that answer plus negatives the demo user never saw."""
    if shots <= 0:
        return []
    pool = [u for u, s in split_result.users.items() if u != user_id and len(s.train) >= 2]
    if len(pool) < shots:
        raise ValueError(f"--shots {shots} needs {shots} other users with >= 2 training items; only {len(pool)} exist")
    rng = rng_for(seed, "fewshot", user_id)
    picked = [pool[i] for i in sorted(rng.choice(len(pool), size=shots, replace=False).tolist())]
    all_items = sorted(ds.items)
    demos = []
    for demo_user in picked:
        user_split = split_result.users[demo_user]
        answer = user_split.train[-1]
        history = tuple(HistoryEntry(ds.items[i.item_id], i.rating) for i in user_split.train[:-1][-history_len:])
        seen = user_split.all_item_ids
        eligible = [i for i in all_items if i not in seen]
        demo_rng = rng_for(seed, "fewshot-candidates", user_id, demo_user)
        negatives = demo_rng.choice(len(eligible), size=min(num_candidates - 1, len(eligible)), replace=False)
        candidate_ids = [answer.item_id, *(eligible[i] for i in negatives.tolist())]
        demo_rng.shuffle(candidate_ids)
        demos.append(Demo(history, tuple(ds.items[i] for i in candidate_ids), answer.item_id))
    return demos
