"""Data layer: loaders, the chronological split, candidate files, seeds and synthetic data.

Import-light on purpose: the re-exports below pull in pandas/numpy only (no torch).
"""

from mmrec_gen.data.candidates import (
    build_candidate_rows,
    get_or_create_candidates,
    load_candidate_file,
    write_candidate_file,
)
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.loaders import detect_format, load_dataset
from mmrec_gen.data.schema import CandidateFile, CandidateRow, Dataset, Interaction, Item, UserSplit
from mmrec_gen.data.seeding import derive_seed, rng_for
from mmrec_gen.data.split import SplitResult, split_dataset
from mmrec_gen.data.synthetic import generate_synthetic

__all__ = [
    "CandidateFile",
    "CandidateRow",
    "DataFormatError",
    "Dataset",
    "Interaction",
    "Item",
    "SplitResult",
    "UserSplit",
    "build_candidate_rows",
    "derive_seed",
    "detect_format",
    "generate_synthetic",
    "get_or_create_candidates",
    "load_candidate_file",
    "load_dataset",
    "rng_for",
    "split_dataset",
    "write_candidate_file",
]
