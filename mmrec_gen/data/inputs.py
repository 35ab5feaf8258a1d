"""What every method ranks: the dataset, its split and the versioned candidate file (shared by rank and recsys).

`run_meta` is the `meta` block of a result row, so that rows from LLMs and classic recommenders compare.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mmrec_gen.data.candidates import all_item_candidates, get_or_create_candidates, load_candidate_file
from mmrec_gen.data.data_args import ALL_CANDIDATES, EvalDataArguments
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.paths import candidates_dir
from mmrec_gen.data.schema import CandidateFile, Dataset
from mmrec_gen.data.split import SplitResult, split_dataset

logger = logging.getLogger(__name__)


@dataclass
class RunInputs:
    dataset: Dataset
    split_result: SplitResult
    candidate_file: CandidateFile


def prepare_inputs(
    data: str,
    *,
    split: str,
    seed: int,
    num_candidates: int,
    images: str | None = None,
    candidates: str | None = None,
    cache_dir: str | None = None,
) -> RunInputs:
    """Load the dataset, split it, and build (or reuse) the versioned candidate file every method shares."""
    ds = load_dataset(data, images_dir=images)
    split_result = split_dataset(ds)
    if not split_result.users:
        raise DataFormatError(
            f"{data}: no user has 3 or more interactions ({split_result.dropped_users} users dropped), so there is "
            "nothing to evaluate. Fix: add interactions (train, valid and test need one each per user)."
        )
    if candidates:
        cand = load_candidate_file(candidates)
        if cand.split != split or cand.dataset != ds.name:
            raise ValueError(
                f"{candidates}: built for dataset={cand.dataset} split={cand.split}, "
                f"but this run is dataset={ds.name} split={split}; pass the matching file or drop --candidates"
            )
        unknown = [r.user_id for r in cand.rows if r.user_id not in split_result.users]
        if unknown:
            raise ValueError(f"{candidates}: user {unknown[0]} (and {len(unknown) - 1} more) not in {data}")
        if not cand.rows:
            raise DataFormatError(f"{candidates}: no users in this candidate file. Fix: pass a file with rows.")
    elif num_candidates == ALL_CANDIDATES:
        cand = all_item_candidates(ds, split_result, split, seed)
    else:
        cand = get_or_create_candidates(
            ds, split_result, split, seed, num_candidates, Path(cache_dir) if cache_dir else candidates_dir()
        )
    logger.info("candidates: %s (%d users)", cand.path, len(cand.rows))
    return RunInputs(ds, split_result, cand)


def inputs_for(cfg: EvalDataArguments) -> RunInputs:
    """prepare_inputs with a command's data options (the same for rank, explain and the baselines)."""
    return prepare_inputs(
        cfg.data, split=cfg.split, seed=cfg.seed, num_candidates=cfg.num_candidates, images=cfg.images,
        candidates=cfg.candidates, cache_dir=cfg.cache_dir,
    )  # fmt: skip


def run_meta(inputs: RunInputs, *, model: str, mode: str, template: str, shots: int) -> dict:
    cand = inputs.candidate_file
    # A whole-catalogue run says so: its rows keep only the top of each ranking (data/rows.py catalogue_row).
    whole = {"candidates": "all"} if cand.num_candidates == ALL_CANDIDATES else {}
    if cand.excluded:  # users the candidate file leaves out (all_item_candidates), so a report can count them
        whole["excluded_users"] = len(cand.excluded)
    return {
        "dataset": cand.dataset,
        "split": cand.split,
        "candidates_hash": cand.content_hash,
        "seed": cand.seed,
        "model": model,
        "mode": mode,
        "template": template,
        "shots": shots,
        **whole,
    }
