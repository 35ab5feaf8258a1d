"""`mmrec batch-rank`: resumable batch ranking into Parquet shards, on this machine or on Ray Data."""

from __future__ import annotations

from collections.abc import Sequence

DESCRIPTION = (
    "Rank many users into Parquet shards plus a manifest written last (--out DIR); rerunning the same command "
    "resumes a killed job. --engine ray runs it on Ray Data (local mode, or the cluster at RAY_ADDRESS)."
)


def cmd_batch_rank(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.jobs.batch_config import BatchRankConfig
    from mmrec_gen.jobs.batch_rank import run_batch_rank

    cfg = parse_config(BatchRankConfig, argv, "mmrec batch-rank", DESCRIPTION)
    summary = run_batch_rank(cfg)
    print(summary.line())
    return 0
