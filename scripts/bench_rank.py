"""Benchmark the three ranking modes on the same users: users/s ratios, prompt tokens/s, share of GEMM peak.

    python scripts/bench_rank.py --users 16 --json

Each mode runs at each batch size in its sweep (on the same users); its best one counts. The machine's GEMM
peak is measured in the same run (bf16 as the issue asks, and fp32: CPUs without native bf16 run the model in
fp32, so the fraction against the model's own dtype is printed too). score_peak_fraction =
prompt tokens/s x 2 x parameters / GEMM FLOP/s. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

DEFAULT_SWEEP = {"score": [1, 4], "constrained": [4, 16], "generate": [4, 16]}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default=None, help="Dataset folder (default: synthetic data made for the run).")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--users", type=int, default=16, help="Users ranked by every mode and batch size.")
    parser.add_argument("--num-candidates", type=int, default=20)
    parser.add_argument("--modes", default="score,constrained,generate")
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated sweep for every mode (default per mode).")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object on the last line.")
    return parser


def gemm_gflops(dtype, size: int, repeats: int) -> float:
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def time_mode(model, inputs, mode: str, batch_size: int, users: int) -> tuple[float, int]:
    """Seconds to rank `users` users in `mode` (prompt building included), and the prompt tokens processed."""
    from mmrec_gen.data.inputs import run_meta
    from mmrec_gen.prompting.render import PromptBuilder
    from mmrec_gen.rank.backend import create_backend
    from mmrec_gen.rank.pipeline import build_tasks
    from mmrec_gen.rank.ranker import Ranker

    tasks = build_tasks(inputs, split="test", max_users=users)
    n = inputs.candidate_file.num_candidates
    new_tokens = {"score": 1, "constrained": 2 * n, "generate": 3 * n + 8}[mode]
    builder = PromptBuilder(model.tokenizer, "rank_listwise", max_new_tokens=new_tokens)
    backend = create_backend("hf", model, batch_size=batch_size, progress=False)
    meta = run_meta(inputs, model=model.name, mode=mode, template="rank_listwise", shots=0)
    ranker = Ranker(backend, builder, mode, meta=meta, max_new_tokens=new_tokens)
    ranker.rank(tasks[:1])  # warm-up (allocations, kernels)
    start = time.perf_counter()
    rows = ranker.rank(tasks)
    seconds = time.perf_counter() - start
    assert len(rows) == len(tasks)
    tokens = sum(len(builder.rank(t.user_id, t.history, t.candidates).input_ids) for t in tasks)
    return seconds, tokens


def main(args: argparse.Namespace) -> dict:
    import torch

    from mmrec_gen.data.inputs import prepare_inputs
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.models.registry import load_model

    tmp = tempfile.mkdtemp(prefix="bench_rank_")
    data = args.data or str(generate_synthetic(f"{tmp}/data", seed=0))
    inputs = prepare_inputs(data, split="test", seed=0, num_candidates=args.num_candidates, cache_dir=f"{tmp}/c")
    model = load_model(args.model, dtype=args.dtype)
    model_dtype = next(model.model.parameters()).dtype
    sweep_all = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    best: dict[str, dict] = {}
    for mode in args.modes.split(","):
        for bs in sweep_all or DEFAULT_SWEEP[mode]:
            seconds, tokens = time_mode(model, inputs, mode, bs, args.users)
            ups = args.users / seconds
            print(f"{mode:12} batch {bs:3}: {ups:7.3f} users/s  {tokens / seconds:9.1f} prompt tokens/s", flush=True)
            if mode not in best or ups > best[mode]["users_per_s"]:
                best[mode] = {"users_per_s": ups, "batch_size": bs, "prompt_tokens_per_s": tokens / seconds}
    # bf16 is emulated (slow) on CPUs without AVX512-BF16/AMX: a smaller GEMM keeps the measurement short there.
    fast_bf16 = torch.cuda.is_available() or model_dtype == torch.bfloat16
    gemm_bf16 = gemm_gflops(torch.bfloat16, 2048 if fast_bf16 else 768, 10 if fast_bf16 else 2)
    gemm_fp32 = gemm_gflops(torch.float32, 2048, 10)
    gemm_model = {torch.bfloat16: gemm_bf16, torch.float32: gemm_fp32}.get(model_dtype, gemm_fp32)
    result = {
        "model": model.name,
        "model_dtype": str(model_dtype).replace("torch.", ""),
        "parameters": model.num_parameters,
        "users": args.users,
        "users_per_s": {m: round(b["users_per_s"], 4) for m, b in best.items()},
        "best_batch_size": {m: b["batch_size"] for m, b in best.items()},
        "gemm_gflops_bf16": round(gemm_bf16, 1),
        "gemm_gflops_fp32": round(gemm_fp32, 1),
    }
    if "score" in best:
        tps = best["score"]["prompt_tokens_per_s"]
        achieved = tps * 2 * model.num_parameters / 1e9
        result["prompt_tokens_per_s"] = round(tps, 1)
        result["score_gflops"] = round(achieved, 1)
        result["score_peak_fraction"] = round(achieved / gemm_bf16, 3)
        result["score_peak_fraction_model_dtype"] = round(achieved / gemm_model, 3)
    if "score" in best and "generate" in best:
        result["score_over_generate"] = round(best["score"]["users_per_s"] / best["generate"]["users_per_s"], 2)
    if "score" in best and "constrained" in best:
        result["score_over_constrained"] = round(best["score"]["users_per_s"] / best["constrained"]["users_per_s"], 2)
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(make_parser().parse_args())
