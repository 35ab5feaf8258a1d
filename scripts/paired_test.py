"""Paired HR@1 comparison of rankings against a reference ranking of the same candidate file (McNemar's exact test).

    python scripts/paired_test.py runs/sasrec.jsonl runs/rec.jsonl [more.jsonl ...] --json

Each further file is compared with the first (the reference): HR@1 of both on the union of users (a missing
user or an error row is a miss), the difference, the discordant users and the p-value. With --json the last line
is one JSON object keyed by file name.
"""

from __future__ import annotations

import argparse
import json


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("reference", help="The ranking JSONL every other file is compared with.")
    parser.add_argument("files", nargs="+", help="Ranking JSONL files of the same candidate file.")
    parser.add_argument("--json", action="store_true", help="Print the results as one JSON object on the last line.")
    return parser


def main(args: argparse.Namespace) -> int:
    from mmrec_gen.data.results import read_results
    from mmrec_gen.eval.paired import paired_hr1

    reference = read_results(args.reference)
    out = {}
    for path in args.files:
        result = paired_hr1(reference, read_results(path))
        out[path] = result
        print(
            f"{path} vs {args.reference}: HR@1 {result['hr1_b']:.4f} vs {result['hr1_a']:.4f} "
            f"(diff {result['diff_b_minus_a']:+.4f}, {result['n_users']} users; hit only here {result['only_b']}, "
            f"only in the reference {result['only_a']}; McNemar exact p = {result['mcnemar_p']:.3g})"
        )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_args()))
