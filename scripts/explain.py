"""Explain each user's top-ranked item, with hallucination and history-citation checks (options of `mmrec explain`).

    python scripts/explain.py --data ../shared/data/ml-latest-small --max-users 20 --out runs/explain.jsonl

Pass --ranking FILE.jsonl to explain an existing `mmrec rank` output instead of ranking in score mode first.
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.rank.rank_config import ExplainConfig

    return config_parser(ExplainConfig, "explain.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import explain_and_report, setup_logging

    setup_logging()
    return explain_and_report(cfg)


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
