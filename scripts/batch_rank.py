"""Resumable batch ranking into Parquet shards + manifest, locally or on Ray Data (the options of `mmrec batch-rank`).

python scripts/batch_rank.py --data ../shared/data/ml-latest-small --mode score --engine ray --workers 2 --out runs/batch
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.jobs.batch_config import BatchRankConfig

    return config_parser(BatchRankConfig, "batch_rank.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import setup_logging
    from mmrec_gen.jobs.batch_rank import run_batch_rank

    setup_logging()
    print(run_batch_rank(cfg).line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
