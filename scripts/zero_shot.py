"""Zero-shot LLM ranking on the fixed protocol (the options of `mmrec rank`).

python scripts/zero_shot.py --data ../shared/data/ml-latest-small --mode score --max-users 200 --out runs/zs.jsonl
"""

from __future__ import annotations

import sys


def make_parser():
    from transformers import HfArgumentParser

    from mmrec_gen.rank.rank_config import RankConfig

    return HfArgumentParser(RankConfig, prog="zero_shot.py", description=__doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import _setup_logging, rank_and_report

    _setup_logging()
    return rank_and_report(cfg)


if __name__ == "__main__":
    args = sys.argv[1:]
    cfg, *_ = make_parser().parse_args_into_dataclasses(args=args)
    raise SystemExit(main(cfg))
