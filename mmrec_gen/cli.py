"""`mmrec` (also `python -m mmrec_gen`): rank, batch-rank, evaluate, explain, prompts, models, data, demo, train,
baseline.

Heavy libraries (torch, transformers models) are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

USAGE = """usage: mmrec COMMAND [options]   (mmrec COMMAND --help for a command's options)

commands:
  rank        rank each user's candidates with an LLM (modes: score, constrained, generate) -> JSONL
  batch-rank  rank many users into resumable Parquet shards + manifest (--engine local|ray) -> DIR
  evaluate    metrics of one or more ranking JSONL files (HR@1, HR@5, NDCG@5/10, MRR, ValidRatio, errors)
  explain     explain each user's top-ranked item, with hallucination / history-citation checks -> JSONL
  prompts     `prompts list` shows the templates; `prompts validate` renders every template on sample data
  models      list registered model names (any HF model id or local folder works too)
  data        `data synth --out DIR` writes the synthetic multimodal dataset; `data check-images --images DIR`
              lists bad item images
  demo        synthetic data -> SmolLM2 ranks (3 modes) and explains -> metrics table
  train       `train sft|dpo` tunes a LoRA adapter (TRL + PEFT); `train merge` folds it into the base model;
              `train align` aligns the image item-token projector (LLaVA stage 1)
  baseline    `baseline pop|sasrec|mse` ranks the same candidate files with a classic recommender -> JSONL
  report      one self-contained HTML page: metrics, plots and per-user cards (posters, ranks, explanations)
"""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def rank_and_report(cfg) -> int:
    """Run `mmrec rank` for a filled RankConfig and print a one-line summary (also used by scripts/)."""
    from mmrec_gen.eval.metrics import ranking_metrics
    from mmrec_gen.rank.pipeline import run_rank

    m = ranking_metrics(run_rank(cfg))
    print(
        f"{cfg.out}: {m['n_users']} users, HR@1 {m['hr@1']:.4f}, NDCG@10 {m['ndcg@10']:.4f}, "
        f"valid {m['valid_ratio']:.4f}, error rows {m['n_error_records']}"
    )
    return 0


def cmd_rank(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.rank.rank_config import RankConfig

    cfg = parse_config(
        RankConfig, argv, "mmrec rank", "Rank each user's candidates with an LLM; one JSON line per user."
    )
    return rank_and_report(cfg)


def explain_and_report(cfg) -> int:
    """Run `mmrec explain` for a filled ExplainConfig and print its explanation metrics (also used by scripts/)."""
    from mmrec_gen.eval.explain_metrics import JSON_KEYS, explanation_metrics
    from mmrec_gen.rank.pipeline import run_explain

    metrics = explanation_metrics(run_explain(cfg))
    shown = [*JSON_KEYS, "n_errors"]
    print(
        f"{cfg.out}: "
        + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k in shown)
    )
    return 0


def cmd_explain(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.rank.rank_config import ExplainConfig

    cfg = parse_config(
        ExplainConfig, argv, "mmrec explain", "Explain each user's top-ranked item; one JSON line per user."
    )
    return explain_and_report(cfg)


def cmd_evaluate(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mmrec evaluate",
        description="Metrics of ranking JSONL files (one table row per file) and of explanation files written by "
        "`mmrec explain` (hallucinated titles, history citations, evidence precision, length, distinct-2, genre "
        "accuracy: see mmrec_gen/eval/explain_metrics.py).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "files",
        nargs="+",
        help="JSONL files written by `mmrec rank`, a baseline or `mmrec explain`, or `mmrec batch-rank` folders.",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object per file instead of a table.")
    args = parser.parse_args(argv)
    from mmrec_gen.eval.explain_metrics import (
        JSON_KEYS,
        evaluate_explanation_file,
        format_explanation_table,
        is_explanation_file,
    )
    from mmrec_gen.eval.report import evaluate_file, format_table

    explained = {f for f in args.files if is_explanation_file(f)}
    by_file = {f: evaluate_explanation_file(f) if f in explained else evaluate_file(f) for f in args.files}
    results = [by_file[f] for f in args.files if f not in explained]
    explain_results = [by_file[f] for f in args.files if f in explained]
    if args.json:  # one object per file, in the order given
        keys = ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "valid_ratio", "n_users", "candidates_hash")
        for f, res in by_file.items():
            if f in explained:  # exactly the explanation metrics' keys
                print(json.dumps({k: res[k] for k in JSON_KEYS}, ensure_ascii=False, allow_nan=False))
                continue
            extra = {k: v for k, v in res.items() if k not in keys and k != "meta" and not isinstance(v, dict)}
            print(json.dumps({**{k: res[k] for k in keys}, **extra}, ensure_ascii=False, allow_nan=False))
    else:
        tables = ([format_table(results)] if results else []) + (
            [format_explanation_table(explain_results)] if explain_results else []
        )
        print("\n\n".join(tables))
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mmrec report",
        description="Write one self-contained HTML file (inline CSS, images and plots embedded; opens with no network "
        "and no server): the metrics table of every run under its protocol line, HR@k and held-out-rank plots, the "
        "training loss of runs ranked with an --adapter, and one card per sampled user with history and ranking "
        "posters, the held-out item marked, each run's rank for it and the explanation with cited titles marked.",
        allow_abbrev=False,
    )
    parser.add_argument("runs", nargs="+", help="Ranking JSONL files (mmrec rank / baseline) on one candidate file.")
    parser.add_argument("--data", required=True, help="The dataset folder the runs were made on.")
    parser.add_argument("--out", required=True, help="The HTML file to write.")
    parser.add_argument("--explanations", help="An `mmrec explain` JSONL of the same users (metrics and cards).")
    parser.add_argument("--images", help="Item image folder (<item_id>.jpg|.png), as for mmrec rank --images.")
    parser.add_argument("--users", default="20", help="Users shown as cards: a number (the first N) or a file of ids.")
    parser.add_argument("--history", type=int, default=20, help="History items shown per user (the most recent).")
    parser.add_argument("--thumb-px", type=int, default=96, help="Thumbnail size (longer side, pixels).")
    parser.add_argument("--labels", nargs="+", default=[], help="One label per run (default: the file names).")
    args = parser.parse_args(argv)
    from mmrec_gen.eval.html_report import ReportConfig, write_report

    cfg = ReportConfig(
        runs=args.runs, data=args.data, out=args.out, explanations=args.explanations, images=args.images,
        users=args.users, history=args.history, thumb_px=args.thumb_px, runs_labels=args.labels,
    )  # fmt: skip
    path = write_report(cfg)
    print(f"report: {path.resolve()}")
    return 0


def cmd_prompts(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mmrec prompts", description="Inspect and validate the prompt templates.", allow_abbrev=False
    )
    parser.add_argument("action", choices=["list", "validate"])
    parser.add_argument("--model", default=None, help="Also check labels/rendering with this model's tokenizer.")
    args = parser.parse_args(argv)
    from mmrec_gen.prompting.templates import load_manifest
    from mmrec_gen.prompting.validate import validate_templates

    if args.action == "list":
        for spec in load_manifest().values():
            print(f"{spec.id:16} v{spec.version}  task={spec.task:9} output={spec.output_format:7} {spec.description}")
        return 0
    tokenizer = None
    if args.model:
        from mmrec_gen.models.registry import load_model

        tokenizer = load_model(args.model).tokenizer
    for line in validate_templates(tokenizer):
        print(line)
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    from mmrec_gen.models.registry import registered_models

    for spec in registered_models().values():
        print(f"{spec.name:30} {spec.description}")
    print("(any HF model id or local model folder is accepted as --model too)")
    return 0


def cmd_data(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mmrec data", description="Dataset utilities.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="Write the synthetic multimodal dataset (generic JSONL format + images).")
    synth.add_argument("--out", required=True)
    synth.add_argument("--users", type=int, default=200)
    synth.add_argument("--items", type=int, default=300)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--no-images", action="store_true")
    check = sub.add_parser(
        "check-images",
        help="List bad item images (missing, empty, not an image, truncated, oversized) and odd ones (CMYK/P/RGBA/"
        "16-bit, EXIF-rotated, wrong extension); exit 1 when any is bad.",
    )
    check.add_argument("--images", required=True, help="Folder of <item_id>.jpg|png item images.")
    check.add_argument("--data", default=None, help="Also check the dataset's items (items without a file counted).")
    check.add_argument("--max-image-pixels", type=int, default=None, help="Refuse larger images (default 25 MP).")
    check.add_argument("--json", action="store_true", help="Print one JSON object (every file) instead of a table.")
    args = parser.parse_args(argv)
    if args.action == "check-images":
        from mmrec_gen.data.images import DEFAULT_MAX_IMAGE_PIXELS, check_images, image_entries, report_table

        report = check_images(
            image_entries(args.images, args.data), max_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS
        )
        print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report_table(report))
        return 1 if report.bad else 0
    from mmrec_gen.data.synthetic import generate_synthetic

    path = generate_synthetic(
        args.out, num_users=args.users, num_items=args.items, seed=args.seed, with_images=not args.no_images
    )
    print(f"wrote synthetic dataset to {path}")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.demo import DemoConfig, run_demo

    cfg = parse_config(DemoConfig, argv, "mmrec demo", "Synthetic data -> rank (3 modes) -> explain -> metrics.")
    run_demo(cfg)
    return 0


def cmd_train(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_train import cmd_train as run

    return run(argv)


def cmd_baseline(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_baseline import cmd_baseline as run

    return run(argv)


def cmd_batch_rank(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_batch import cmd_batch_rank as run

    return run(argv)


COMMANDS = {
    "rank": cmd_rank,
    "evaluate": cmd_evaluate,
    "explain": cmd_explain,
    "prompts": cmd_prompts,
    "models": cmd_models,
    "data": cmd_data,
    "demo": cmd_demo,
    "train": cmd_train,
    "baseline": cmd_baseline,
    "report": cmd_report,
    "batch-rank": cmd_batch_rank,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"mmrec: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    setup_logging()
    try:
        return command(argv[1:])
    except (ValueError, KeyError, FileNotFoundError) as exc:
        # Bad input (a malformed file, an unknown template, a missing model) is the user's to fix: say what and
        # where, without a traceback. Set MMREC_DEBUG=1 to see the traceback.
        if os.environ.get("MMREC_DEBUG"):
            raise
        print(f"mmrec {argv[0]}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
