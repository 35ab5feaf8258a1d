"""Benchmark the baselines next to the LLM score mode, in one run: training seconds and users/s, with ratios.

    python scripts/bench_baselines.py --json

pop, sasrec and mse (frozen MiniLM embeddings + MLP; the item embeddings are computed inside the timed run, in a
fresh cache, and reported separately) are fitted on the train split and rank every user of the test candidate file;
the LLM (SmolLM2-135M-Instruct by default) ranks `--llm-users` users of the same file in score mode (batch 1, after
one warm-up user). users/s counts ranking only; `x_llm` is a baseline's users/s over the LLM's. Synthetic data is
made for the run unless --data is given. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default=None, help="Dataset folder (default: synthetic data made for the run).")
    parser.add_argument("--baselines", default="pop,sasrec,mse")
    parser.add_argument("--max-users", type=int, default=None, help="Users the baselines rank (default: all).")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="The LLM of the score-mode row.")
    parser.add_argument("--llm-users", type=int, default=8, help="Users the LLM ranks (after one warm-up user).")
    parser.add_argument("--sasrec-epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object on the last line.")
    return parser


def bench_llm(model_name: str, inputs, users: int) -> dict:
    from mmrec_gen.data.inputs import run_meta
    from mmrec_gen.models.registry import load_model
    from mmrec_gen.prompting.render import PromptBuilder
    from mmrec_gen.rank.backend import create_backend
    from mmrec_gen.rank.pipeline import build_tasks
    from mmrec_gen.rank.ranker import Ranker

    start = time.perf_counter()
    model = load_model(model_name)
    load_s = time.perf_counter() - start
    tasks = build_tasks(inputs, split="test", max_users=users + 1)
    builder = PromptBuilder(model.tokenizer, "rank_listwise", max_new_tokens=1)
    backend = create_backend("hf", model, batch_size=1, progress=False)
    meta = run_meta(inputs, model=model.name, mode="score", template="rank_listwise", shots=0)
    ranker = Ranker(backend, builder, "score", meta=meta)
    ranker.rank(tasks[:1])  # warm-up
    start = time.perf_counter()
    ranker.rank(tasks[1:])
    seconds = time.perf_counter() - start
    n = len(tasks) - 1
    return {
        "train_seconds": 0.0,
        "load_seconds": load_s,
        "users": n,
        "score_seconds": seconds,
        "users_per_s": n / seconds,
    }


def main(args: argparse.Namespace) -> dict:
    from mmrec_gen.data.inputs import prepare_inputs
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.recsys.baselines import CONFIGS, run_baseline

    tmp = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    data = args.data or str(
        generate_synthetic(tmp / "synthetic", num_users=200, num_items=300, seed=args.seed, with_images=False)
    )
    common = dict(data=data, split="test", seed=args.seed, max_users=args.max_users)
    figures: dict[str, dict] = {}
    for name in [b for b in args.baselines.split(",") if b]:
        extra = {"sasrec": {"epochs": args.sasrec_epochs}, "mse": {"embeddings_dir": str(tmp / "embeddings")}}
        cfg = CONFIGS[name](out=str(tmp / f"{name}.jsonl"), **common, **extra.get(name, {}))
        run = run_baseline(name, cfg)
        n = len(run.rows)
        figures[name] = {
            "train_seconds": run.train_seconds, "users": n, "score_seconds": run.score_seconds,
            "users_per_s": n / max(run.score_seconds, 1e-9),
        }  # fmt: skip
        if "encode_seconds" in run.info:
            figures[name]["encode_seconds"] = run.info["encode_seconds"]
    inputs = prepare_inputs(data, split="test", seed=args.seed, num_candidates=20)
    figures["llm_score"] = bench_llm(args.model, inputs, args.llm_users)
    llm_rate = figures["llm_score"]["users_per_s"]
    for fig in figures.values():
        fig["x_llm"] = fig["users_per_s"] / llm_rate
    return {"data": data if args.data else "synthetic(200 users, 300 items)", "model": args.model, **figures}


if __name__ == "__main__":
    args = make_parser().parse_args()
    result = main(args)
    print(f"data: {result['data']}  (users/s = ranking only; x_llm = users/s over the LLM score mode's)")
    print(f"{'method':10} {'train s':>9} {'encode s':>9} {'users':>6} {'users/s':>11} {'x_llm':>10}")
    for name, fig in result.items():
        if isinstance(fig, dict):
            enc = f"{fig['encode_seconds']:.1f}" if "encode_seconds" in fig else "-"
            print(
                f"{name:10} {fig['train_seconds']:9.1f} {enc:>9} {fig['users']:6d} {fig['users_per_s']:11.1f} "
                f"{fig['x_llm']:10.1f}"
            )
    if args.json:
        print(json.dumps(result))
