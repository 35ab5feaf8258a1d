"""Training examples from the train split only: sliding windows over each user's training history.

A window ending at position t of a user's train sequence makes the item at t the answer and (up to) the items
before it the history; the candidates are that answer plus negatives the user never interacted with (in any
split), shuffled, exactly as the evaluation candidate files are built. Valid and test targets never appear as an
answer, and they are excluded from negatives the same way they are for evaluation.

Everything is seeded from (seed, user id, position), so an example never depends on which other users are present
or on their order (R10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrec_gen.data.candidates import sample_excluding
from mmrec_gen.data.schema import Dataset, Interaction
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.data.split import SplitResult, id_sort_key


@dataclass(frozen=True)
class TrainExample:
    user_id: str
    position: int  # index of the answer in the user's train sequence
    history: tuple[Interaction, ...]  # oldest first, all before `position`
    candidates: tuple[str, ...]  # item ids in display order (labels A, B, ... follow this order)
    target: str  # the answer's item id, one of `candidates`

    @property
    def target_index(self) -> int:
        return self.candidates.index(self.target)


def build_examples(
    ds: Dataset,
    split_result: SplitResult,
    *,
    seed: int,
    num_candidates: int = 20,
    windows_per_user: int = 1,
    min_history: int = 5,
    max_examples: int | None = None,
    max_users: int | None = None,
) -> list[TrainExample]:
    """Up to `windows_per_user` examples per user, answers drawn (seeded) among train positions >= `min_history`.

    With `max_examples`, a seeded subset of that size is kept (in user order), so a small training budget still
    covers many users. Users whose train sequence is shorter than `min_history + 1` give no example.
    """
    if windows_per_user < 1:
        raise ValueError(f"windows_per_user must be >= 1, got {windows_per_user}")
    if min_history < 0:
        raise ValueError(f"min_history must be >= 0, got {min_history}")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    universe = sorted(ds.items, key=id_sort_key)
    position_of = {item_id: i for i, item_id in enumerate(universe)}
    users = list(split_result.users.items())[:max_users] if max_users else list(split_result.users.items())
    examples: list[TrainExample] = []
    for user_id, user in users:
        train = user.train
        eligible = list(range(min_history, len(train)))
        if not eligible:
            continue
        excluded = np.array(sorted(position_of[i] for i in user.all_item_ids if i in position_of), dtype=np.int64)
        if len(universe) - len(excluded) < num_candidates - 1:
            continue  # too few unseen items for negatives; evaluation would refuse this user too
        rng = rng_for(seed, "train-windows", user_id)
        picks = sorted(rng.choice(len(eligible), size=min(windows_per_user, len(eligible)), replace=False).tolist())
        for pick in picks:
            t = eligible[pick]
            cand_rng = rng_for(seed, "train-candidates", user_id, t)
            negatives = [universe[p] for p in sample_excluding(cand_rng, len(universe), excluded, num_candidates - 1)]
            candidates = [train[t].item_id, *negatives]
            order = cand_rng.permutation(len(candidates))
            examples.append(
                TrainExample(user_id, t, tuple(train[:t]), tuple(candidates[i] for i in order), train[t].item_id)
            )
    if max_examples is not None and len(examples) > max_examples:
        keep = rng_for(seed, "train-subset", len(examples)).choice(len(examples), size=max_examples, replace=False)
        examples = [examples[i] for i in sorted(keep.tolist())]
    return examples


def negative_indices(example: TrainExample, k: int, seed: int) -> list[int]:
    """Display positions of `k` negatives of `example` (seeded), for DPO's rejected answers."""
    others = [i for i in range(len(example.candidates)) if example.candidates[i] != example.target]
    if k > len(others):
        raise ValueError(f"{k} negatives asked for, but an example has only {len(others)} negatives")
    rng = rng_for(seed, "dpo-negatives", example.user_id, example.position)
    return sorted(others[i] for i in rng.choice(len(others), size=k, replace=False).tolist())
