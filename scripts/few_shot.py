"""Few-shot LLM ranking: k demonstrations from other users' training data, picked by (seed, user id).

    python scripts/few_shot.py --data ../shared/data/ml-latest-small --shots 2 --max-users 50 --out runs/fs.jsonl

The options of `mmrec rank`; --shots defaults to 2 here (so the template is rank_fewshot).
"""

from __future__ import annotations

import sys


def make_parser():
    from transformers import HfArgumentParser

    from mmrec_gen.rank.rank_config import RankConfig

    return HfArgumentParser(RankConfig, prog="few_shot.py", description=__doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import _setup_logging, rank_and_report

    _setup_logging()
    return rank_and_report(cfg)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("--shots") for a in args):
        args += ["--shots", "2"]
    cfg, *_ = make_parser().parse_args_into_dataclasses(args=args)
    raise SystemExit(main(cfg))
