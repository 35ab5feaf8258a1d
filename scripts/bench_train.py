"""Benchmark: our score-mode SFT (fast path) against TRL's SFTTrainer defaults, on the same examples, in one run.

Each variant trains in its own subprocess, one after the other (never two torch processes at once), so its peak
resident memory is its own. All variants use the same model, LoRA config, examples, batch size and steps:

- ours:    `mmrec train sft` fast path: one position's logits per example (logits_to_keep=1), no checkpointing;
- trl:     TRL's SFTTrainer with its defaults (gradient checkpointing on, logits over every position and the
           whole vocabulary); only what a CPU needs is changed (use_cpu; bf16 only where the CPU runs it natively)
           and max_length is raised so that no completion is truncated away (TRL's default 1024 would drop rows);
- trl_no_gc: the same as trl with gradient checkpointing off, to show where the speed-up comes from.

Tokens/s counts prompt tokens (the same for every variant) over the trainer's train_runtime.
With --json the last line is one JSON object with ours_tokens_per_s, trl_tokens_per_s, speedup, ours_peak_mb,
trl_peak_mb (plus the trl_no_gc figures).

    python scripts/bench_train.py                       # synthetic data, SmolLM2-135M, 8 examples per variant
    python scripts/bench_train.py --data ../shared/data/ml-latest-small --examples 8 --json

With --recipe CONFIG it measures the item-token recommender instead: `mmrec train sft --config CONFIG` for
--steps optimizer steps (no evaluation, no checkpoint), once with this checkout (the Trainer path) and once with
the commit --baseline (default 46ed580, the last one with the hand-written loop), checked out into a temporary git
worktree and run from there; tokens/s are each run's own prompt tokens over its training time, and the ratio
`trainer_over_loop` is printed:

    python scripts/bench_train.py --recipe configs/rec_smollm2_cpu.yaml --data ../shared/data/ml-latest-small \
        --steps 30 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "ours": {"fast": True, "gradient_checkpointing": False},
    "trl": {"fast": False, "gradient_checkpointing": True},
    "trl_no_gc": {"fast": False, "gradient_checkpointing": False},
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", help="Dataset folder (default: synthetic data written to a temp folder).")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Model name, HF id or folder.")
    parser.add_argument("--examples", type=int, default=8, help="Training examples per variant.")
    parser.add_argument("--accumulation", type=int, default=4, help="Gradient accumulation steps.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the results.")
    parser.add_argument("--recipe", help="Benchmark this item-token recipe config, Trainer path vs --baseline.")
    parser.add_argument("--baseline", default="46ed580", help="--recipe: the commit whose training loop to compare.")
    parser.add_argument("--steps", type=int, default=30, help="--recipe: optimizer steps per run.")
    parser.add_argument("--run-variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def run_variant(args) -> None:
    """Child process: train one variant and print its summary with the peak resident memory."""
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.trainers import run_sft

    cfg = SFTTrainConfig(
        data=args.data,
        output_dir=args.out,
        model=args.model,
        max_examples=args.examples,
        gradient_accumulation_steps=args.accumulation,
        lora_dropout=0.0,
        logging_steps=1,
        save_steps=10_000,
        resume=False,
        progress=False,
        **VARIANTS[args.run_variant],
    )
    summary = run_sft(cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps({**summary, "peak_mb": round(peak_mb, 1)}), flush=True)


def recipe_run(repo: Path, args, out: Path) -> dict:
    """`mmrec train sft --config RECIPE` from the checkout `repo` (its own code), in a subprocess."""
    import os

    cmd = [sys.executable, "-m", "mmrec_gen", "train", "sft", "--config", str(Path(args.recipe).resolve()),
           "--data", str(Path(args.data).resolve()), "--output-dir", str(out), "--max-steps", str(args.steps),
           "--save-steps", "100000", "--eval-strategy", "no", "--load-best-model-at-end", "false",
           "--progress", "false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{repo}: training failed (exit {proc.returncode})")
    return json.loads((out / "train_summary.json").read_text(encoding="utf-8"))


def main_recipe(args) -> dict:
    """The item-token recipe through this checkout's Trainer path and through --baseline's loop, one after the other."""
    here = Path(__file__).resolve().parent.parent
    if args.data is None:
        raise SystemExit("--recipe needs --data")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(here), "worktree", "add", "-q", "--detach", str(old), args.baseline], check=True
        )
        try:
            results = {"trainer": recipe_run(here, args, Path(tmp) / "trainer"),
                       "loop": recipe_run(old, args, Path(tmp) / "loop")}  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(old)], check=False)
    out = {"recipe": args.recipe, "steps": args.steps, "baseline": args.baseline}
    for name, r in results.items():
        out[f"{name}_tokens_per_s"] = r["prompt_tokens_per_s"]
        print(f"{name:8s} {r['prompt_tokens_per_s']:8.1f} prompt tokens/s  {r['steps']} steps  "
              f"loss {r['first_loss']} -> {r['last_loss']}", flush=True)  # fmt: skip
    out["trainer_over_loop"] = round(out["trainer_tokens_per_s"] / out["loop_tokens_per_s"], 3)
    print(f"tokens/s Trainer path / hand-written loop ({args.baseline}): {out['trainer_over_loop']}x")
    return out


def main(args) -> dict:
    if args.recipe:
        return main_recipe(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            from mmrec_gen.data.synthetic import generate_synthetic

            args.data = str(generate_synthetic(Path(tmp) / "synth", num_users=60, num_items=200, seed=0))
        results = {}
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--run-variant", variant, "--data", args.data, "--model", args.model,
                   "--examples", str(args.examples), "--accumulation", str(args.accumulation),
                   "--out", str(Path(tmp) / variant)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
            results[variant] = json.loads(line[len("RESULT ") :])
            r = results[variant]
            print(
                f"{variant:10s} {r['prompt_tokens_per_s']:8.1f} prompt tokens/s  peak {r['peak_mb']:7.1f} MB  "
                f"{r['train_runtime_s']:6.1f} s  {r['rows']} examples  loss {r['first_loss']} -> {r['last_loss']}",
                flush=True,
            )
    out = {"model": args.model, "examples": args.examples}
    for variant, r in results.items():
        out[f"{variant}_tokens_per_s"] = r["prompt_tokens_per_s"]
        out[f"{variant}_peak_mb"] = r["peak_mb"]
    if "ours" in results and "trl" in results:
        out["speedup"] = round(results["ours"]["prompt_tokens_per_s"] / results["trl"]["prompt_tokens_per_s"], 2)
        out["memory_ratio"] = round(results["trl"]["peak_mb"] / results["ours"]["peak_mb"], 2)
        print(f"speed-up ours / TRL defaults: {out['speedup']}x, peak memory TRL / ours: {out['memory_ratio']}x")
    if "ours" in results and "trl_no_gc" in results:
        out["speedup_vs_trl_no_gc"] = round(
            results["ours"]["prompt_tokens_per_s"] / results["trl_no_gc"]["prompt_tokens_per_s"], 2
        )
    return out


if __name__ == "__main__":
    parsed = make_parser().parse_args()
    if parsed.run_variant:
        run_variant(parsed)
    else:
        result = main(parsed)
        if parsed.json:
            print(json.dumps(result))
