"""Explain each user's top-ranked item, with hallucination and history-citation checks (options of `mmrec explain`).

    python scripts/explain.py --data ../shared/data/ml-latest-small --max-users 20 --out runs/explain.jsonl

Pass --ranking FILE.jsonl to explain an existing `mmrec rank` output instead of ranking in score mode first.
"""

from __future__ import annotations

import sys


def make_parser():
    from transformers import HfArgumentParser

    from mmrec_gen.rank.rank_config import ExplainConfig

    return HfArgumentParser(ExplainConfig, prog="explain.py", description=__doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import _setup_logging, explain_and_report

    _setup_logging()
    return explain_and_report(cfg)


if __name__ == "__main__":
    args = sys.argv[1:]
    cfg, *_ = make_parser().parse_args_into_dataclasses(args=args)
    raise SystemExit(main(cfg))
