"""Few-shot LLM ranking: k demonstrations from other users' training data, picked by (seed, user id).

    python scripts/few_shot.py --data ../shared/data/ml-latest-small --shots 2 --max-users 50 --out runs/fs.jsonl

The options of `mmrec rank`; --shots defaults to 2 here (so the template is rank_fewshot).
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.rank.rank_config import RankConfig

    parser = config_parser(RankConfig, "few_shot.py", __doc__.split("\n\n")[0])
    parser.set_defaults(shots=2)  # a --shots flag or a `shots:` line of --config still wins
    return parser


def main(cfg) -> int:
    from mmrec_gen.cli import rank_and_report, setup_logging

    setup_logging()
    return rank_and_report(cfg)


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
