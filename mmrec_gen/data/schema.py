"""The in-memory data model every layer shares.

Ids are strings everywhere (MovieLens ints, generic ids, hashes all fit), so a user or item id is never
confused with a row number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")


@dataclass(frozen=True)
class Item:
    """One catalogue item. `fields` holds any extra text fields (genres, description, year, ...)."""

    item_id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # absolute path of the item's image file, when an image folder is given


@dataclass
class Dataset:
    """A loaded dataset.

    `interactions` has exactly the columns INTERACTION_COLUMNS: user_id (str), item_id (str), timestamp (int64),
    rating (float64, NaN where the source has no rating). `filter_counts` records every documented filter the
    loader applied (for example {"duplicate_rows": 3, "unknown_item_ids": 1}) so nothing is dropped silently.
    """

    name: str
    source_format: str
    items: dict[str, Item]
    interactions: pd.DataFrame
    filter_counts: dict[str, int] = field(default_factory=dict)
    image_dir: str | None = None


@dataclass(frozen=True)
class Interaction:
    item_id: str
    timestamp: int
    rating: float | None = None


@dataclass(frozen=True)
class UserSplit:
    """One user's chronological leave-one-out split (DESIGN.md protocol)."""

    user_id: str
    train: tuple[Interaction, ...]  # oldest first
    valid: Interaction
    test: Interaction

    def history_and_target(self, split: str) -> tuple[tuple[Interaction, ...], Interaction]:
        """History visible to the model and the held-out target for `split` ('valid' or 'test')."""
        if split == "valid":
            return self.train, self.valid
        if split == "test":
            return (*self.train, self.valid), self.test
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    @property
    def all_item_ids(self) -> set[str]:
        return {i.item_id for i in self.train} | {self.valid.item_id, self.test.item_id}


@dataclass(frozen=True)
class CandidateRow:
    user_id: str
    candidates: tuple[str, ...]  # item ids, already in their seeded, shuffled display order
    target: str


@dataclass
class CandidateFile:
    """A versioned candidate file: every method ranks exactly these lists."""

    path: str
    content_hash: str
    dataset: str
    split: str
    seed: int
    num_candidates: int
    rows: list[CandidateRow]
    # Users left out of the file, with why (whole catalogue: a user who has interacted with every item has nothing
    # to rank); logged when the file is built and counted in the rows' meta (`excluded_users`).
    excluded: dict[str, str] = field(default_factory=dict)
