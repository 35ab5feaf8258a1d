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


def main(args) -> dict:
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
