"""Zero-shot LLM ranking on the fixed protocol (the options of `mmrec rank`).

python scripts/zero_shot.py --data ../shared/data/ml-latest-small --mode score --max-users 200 --out runs/zs.jsonl
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.rank.rank_config import RankConfig

    return config_parser(RankConfig, "zero_shot.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import rank_and_report, setup_logging

    setup_logging()
    return rank_and_report(cfg)


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
