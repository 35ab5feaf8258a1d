"""Argument dataclasses every command combines (TRL's ScriptArguments / ModelConfig pattern): each option and its
check is declared once. A command's config inherits the groups it needs, e.g.
`class RankConfig(RankingArguments, PromptArguments, ModelArguments, EvalDataArguments)`; HfArgumentParser turns
every field into a flag (see `mmrec_gen/cli_args.py`).

All groups are `kw_only`, so required fields (`data`, `out`) may live in any group, and each `__post_init__` runs
its checks and then calls the next one in the MRO, so a combined config runs every group's checks once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import ClassVar

from mmrec_gen.data.images import DEFAULT_MAX_IMAGE_PIXELS, check_policy

SPLITS = ("valid", "test")
# `--num-candidates all`: every catalogue item the user has not interacted with, plus the held-out one.
ALL_CANDIDATES = 0


def parse_num_candidates(value: str) -> int:
    """argparse type of --num-candidates: a count of at least 2, or `all` (ALL_CANDIDATES; a literal 0 is not
    read as `all`)."""
    if str(value).strip().lower() == "all":
        return ALL_CANDIDATES
    try:
        count = int(value)
    except ValueError:
        count = None
    if count is None or count < 2:
        raise argparse.ArgumentTypeError(f"--num-candidates takes a number >= 2 or all, got {value!r}")
    return count


@dataclass(kw_only=True)
class Arguments:
    """Root of the argument groups: ends the cooperative `__post_init__` chain (or hands it on, e.g. to TRL)."""

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def check_positive(cfg, *names: str) -> None:
    """Raise `--name must be >= 1` for the first of `names` whose value is below 1."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass(kw_only=True)
class DataArguments(Arguments):
    data: str = field(metadata={"help": "Dataset folder (MovieLens 100K/1M/latest or generic JSONL/Parquet)."})
    images: str | None = field(default=None, metadata={"help": "Folder of <item_id>.jpg|png item images."})
    on_bad_image: str = field(
        default="skip",
        metadata={
            "help": "What a missing, empty, truncated, non-image or oversized image file becomes: skip (the item "
            "gets no image), placeholder (a grey image) or fail (stop, naming the file). Counted and logged."
        },
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "Refuse images with more pixels (decompression bombs), before decoding them."},
    )
    num_candidates: int = field(
        default=20,
        metadata={
            "help": "Candidates per user (target + negatives); `all` (mmrec rank with an item-head adapter, baseline "
            "pop / sasrec): every item the user has not interacted with, i.e. the whole catalogue."
        },
    )
    max_users: int | None = field(default=None, metadata={"help": "Use only the first N users (by user id)."})
    seed: int = field(default=0, metadata={"help": "Global seed; per-user seeds derive from (seed, user id)."})

    # Commands that can rank the whole catalogue set this (the others refuse `--num-candidates all`).
    ranks_all_items: ClassVar[bool] = False
    # argparse types that HfArgumentParser cannot derive from the field's type (see cli_args.make_parser).
    argparse_types: ClassVar[dict] = {"num_candidates": parse_num_candidates}

    @property
    def all_candidates(self) -> bool:
        return self.num_candidates == ALL_CANDIDATES

    def __post_init__(self):
        if self.all_candidates and not self.ranks_all_items:
            raise ValueError(
                "--num-candidates all is for mmrec rank with an item-head adapter and the pop / sasrec baselines; "
                "give a number here"
            )
        if not self.all_candidates and self.num_candidates < 2:
            raise ValueError(f"--num-candidates must be >= 2 (or all), got {self.num_candidates}")
        check_positive(self, "max_users", "max_image_pixels")
        check_policy(self.on_bad_image)
        super().__post_init__()


@dataclass(kw_only=True)
class EvalDataArguments(DataArguments):
    """Which users and candidate lists a ranking run (LLM or classic recommender) evaluates."""

    split: str = field(default="test", metadata={"help": "Evaluation split: valid or test."})
    candidates: str | None = field(
        default=None,
        metadata={"help": "An existing candidate file to rank (default: built or reused from the cache)."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where candidate files live (default $MMREC_HOME/candidates)."}
    )

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be valid or test, got {self.split!r}")
        super().__post_init__()
