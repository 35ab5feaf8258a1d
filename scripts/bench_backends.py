"""Benchmark the transformers and vLLM backends on the same users and mode, in one run: users/s and their ratio,
vLLM's prefix-cache hit rate, top-1 agreement, and the Ray batch engine with 2 workers against 1.

    python scripts/bench_backends.py --data ../shared/data/ml-latest-small --users 32 --json

Per mode (default score, then generate), both backends rank the same users from the same prompts (SmolLM2 in fp32
by default, 20 candidates); each backend first ranks two other users (warm-up: kernels, allocations, vLLM's first
scheduling), and the timed run covers prompt building, the backend and parsing, as `mmrec rank` does (the model
load is not timed). prefix_cache_hit_rate = prompt tokens vLLM found in its prefix cache / prompt tokens it looked
up, over the timed run (the cache is emptied before each mode, so a mode never reuses the previous one's prompts). ray_2_over_1 = users/s of `mmrec batch-rank --engine ray --workers 2` over `--workers 1`
(HF backend, model loads included, as a job runs them), or null with the reason when Ray is not installed.

With --json the last line is one JSON object: the first mode's figures at the top level (hf_users_per_s,
vllm_users_per_s, vllm_over_hf, prefix_cache_hit_rate), ray_2_over_1, and every mode's figures under by_mode.

With --item-model DIR (an item-token adapter from `mmrec train sft --item-tokens ...`, or a merged folder) the item
path is measured instead: both backends rank the same users with the model's item head (vLLM: its pooling runner on
prompt_embeds), timed after a warm-up as above; the object holds hf_users_per_s, vllm_users_per_s, vllm_over_hf,
top1_agreement, same_ranking and max_score_diff (the largest per-candidate score difference):

    python scripts/bench_backends.py --data ../shared/data/ml-latest-small --item-model runs/rec --users 50 --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

WARMUP_USERS = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default=None, help="Dataset folder (default: synthetic data made for the run).")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--users", type=int, default=32, help="Users ranked (timed) by each backend in each mode.")
    parser.add_argument("--num-candidates", type=int, default=20)
    parser.add_argument("--modes", default="score,generate", help="Comma-separated: score, constrained, generate.")
    parser.add_argument("--batch-size", type=int, default=8, help="HF backend batch size (vLLM schedules its own).")
    parser.add_argument("--dtype", default="float32", help="Both backends run this dtype (fp32: comparable on CPU).")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM KV cache size in GiB.")
    parser.add_argument("--ray-users", type=int, default=16, help="Users per Ray run (0: skip the Ray comparison).")
    parser.add_argument("--item-model", help="Measure the item path of this item-token adapter or merged folder.")
    parser.add_argument("--split", default="test", help="--item-model: the split to rank (the model's own).")
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object on the last line.")
    return parser


def time_backend(backend, model, inputs, tasks, warmup, mode: str) -> tuple[float, list[dict]]:
    from mmrec_gen.data.inputs import run_meta
    from mmrec_gen.prompting.render import PromptBuilder
    from mmrec_gen.rank.ranker import Ranker

    n = inputs.candidate_file.num_candidates
    new_tokens = {"score": 1, "constrained": 2 * n, "generate": 3 * n + 8}[mode]
    builder = PromptBuilder(model.tokenizer, "rank_listwise", max_new_tokens=new_tokens)
    meta = run_meta(inputs, model=model.name, mode=mode, template="rank_listwise", shots=0)
    ranker = Ranker(backend, builder, mode, meta=meta, max_new_tokens=new_tokens)
    ranker.rank(warmup)
    start = time.perf_counter()
    rows = ranker.rank(tasks)
    seconds = time.perf_counter() - start
    assert len(rows) == len(tasks) and not any(r["error"] for r in rows), [r["error"] for r in rows if r["error"]]
    return seconds, rows


def ray_ratio(data: str, model: str, users: int, tmp: str, dtype: str) -> tuple[float | None, str | None, dict]:
    """users/s of the Ray engine with 2 workers over 1 worker on the same users, or (None, reason)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return None, "ray is not installed (pip install -e '.[ray]')", {}
    try:
        from mmrec_gen.jobs.batch_config import BatchRankConfig
        from mmrec_gen.jobs.batch_rank import run_batch_rank
    except ImportError as exc:
        return None, f"mmrec_gen.jobs has no batch-rank API here ({exc})", {}
    speeds = {}
    for workers in (1, 2):
        cfg = BatchRankConfig(
            data=data, model=model, dtype=dtype, mode="score", backend="hf", engine="ray", workers=workers,
            max_users=users, shard_size=max(1, users // 4), out=f"{tmp}/ray{workers}", progress=False,
            cache_dir=f"{tmp}/c",
        )  # fmt: skip
        summary = run_batch_rank(cfg)
        speeds[workers] = summary.users_per_s
    return speeds[2] / speeds[1], None, {"ray_1_users_per_s": speeds[1], "ray_2_users_per_s": speeds[2]}


def item_path(args: argparse.Namespace) -> dict:
    """HF vs vLLM on an item-token model: users/s, top-1 agreement, largest score difference."""
    import dataclasses

    from mmrec_gen.models.item_rec_io import is_adapter_folder
    from mmrec_gen.rank.pipeline import build_tasks, plan_rank
    from mmrec_gen.rank.rank_config import RankConfig
    from mmrec_gen.rank.worker import build_ranker

    if args.data is None:
        raise SystemExit("--item-model needs --data (the dataset the model was trained on)")
    folder = {"adapter": args.item_model} if is_adapter_folder(args.item_model) else {"model": args.item_model}
    figures, rows = {}, {}
    for backend in ("hf", "vllm"):
        cfg = RankConfig(data=args.data, split=args.split, dtype=args.dtype, backend=backend, progress=False,
                         batch_size=args.batch_size, max_users=args.users + WARMUP_USERS, out="-", **folder)  # fmt: skip
        plan = plan_rank(cfg)
        everyone = build_tasks(plan.inputs, split=args.split, max_users=args.users + WARMUP_USERS)
        ranker = build_ranker(dataclasses.replace(plan.worker), inputs=plan.inputs)
        ranker.rank(everyone[:WARMUP_USERS])
        start = time.perf_counter()
        rows[backend] = ranker.rank(everyone[WARMUP_USERS:])
        figures[f"{backend}_seconds"] = round(time.perf_counter() - start, 2)
        del ranker
    n = len(rows["hf"])
    pairs = list(zip(rows["hf"], rows["vllm"], strict=True))
    return {
        "users": n,
        **figures,
        "hf_users_per_s": round(n / figures["hf_seconds"], 3),
        "vllm_users_per_s": round(n / figures["vllm_seconds"], 3),
        "vllm_over_hf": round(figures["hf_seconds"] / figures["vllm_seconds"], 2),
        "top1_agreement": round(sum(h["ranking"][0] == v["ranking"][0] for h, v in pairs) / n, 3),
        "same_ranking": round(sum(h["ranking"] == v["ranking"] for h, v in pairs) / n, 3),
        "max_score_diff": max(abs(a - b) for h, v in pairs for a, b in zip(h["scores"], v["scores"], strict=True)),
        "item_model": args.item_model,
        "dtype": args.dtype,
    }


def main(args: argparse.Namespace) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: the same CPU threads for both
    if args.item_model:
        return item_path(args)
    from mmrec_gen.data.inputs import prepare_inputs
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.models.registry import load_model
    from mmrec_gen.rank.backend import create_backend
    from mmrec_gen.rank.pipeline import build_tasks

    tmp = tempfile.mkdtemp(prefix="bench_backends_")
    data = args.data or str(generate_synthetic(f"{tmp}/data", seed=0))
    inputs = prepare_inputs(data, split="test", seed=0, num_candidates=args.num_candidates, cache_dir=f"{tmp}/c")
    everyone = build_tasks(inputs, split="test", max_users=args.users + WARMUP_USERS)
    warmup, tasks = everyone[:WARMUP_USERS], everyone[WARMUP_USERS:]
    model = load_model(args.model, dtype=args.dtype)
    hf = create_backend("hf", model, batch_size=args.batch_size, progress=False)
    vllm = create_backend(
        "vllm", model, batch_size=args.batch_size, progress=False, kv_cache_memory_bytes=int(args.kv_cache_gb * 2**30)
    )
    import torch

    torch_threads = torch.get_num_threads()
    by_mode = {}
    for mode in args.modes.split(","):
        hf_s, hf_rows = time_backend(hf, model, inputs, tasks, warmup, mode)
        vllm.reset_prefix_cache()  # the previous mode's prompts (the same users) must not be cache hits here
        queries0, hits0 = vllm.prefix_cache_counts()
        vllm_s, vllm_rows = time_backend(vllm, model, inputs, tasks, warmup, mode)
        queries1, hits1 = vllm.prefix_cache_counts()
        same_top1 = sum(h["ranking"][0] == v["ranking"][0] for h, v in zip(hf_rows, vllm_rows, strict=True))
        by_mode[mode] = {
            "users": len(tasks),
            "hf_seconds": round(hf_s, 2),
            "vllm_seconds": round(vllm_s, 2),
            "hf_users_per_s": round(len(tasks) / hf_s, 3),
            "vllm_users_per_s": round(len(tasks) / vllm_s, 3),
            "vllm_over_hf": round(hf_s / vllm_s, 2),
            "prefix_cache_hit_rate": round((hits1 - hits0) / max(1, queries1 - queries0), 3),
            "top1_agreement": round(same_top1 / len(tasks), 3),
        }
        print(f"{mode}: {json.dumps(by_mode[mode])}", flush=True)
    ratio, reason, ray_figures = (None, "--ray-users 0", {})
    if args.ray_users:
        ratio, reason, ray_figures = ray_ratio(data, args.model, args.ray_users, tmp, args.dtype)
    first = by_mode[args.modes.split(",")[0]]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    flags = open("/proc/cpuinfo").read()
    return {
        **{k: first[k] for k in ("hf_users_per_s", "vllm_users_per_s", "vllm_over_hf", "prefix_cache_hit_rate")},
        "ray_2_over_1": None if ratio is None else round(ratio, 2),
        "ray_note": reason,
        **ray_figures,
        "mode": args.modes.split(",")[0],
        "by_mode": by_mode,
        "model": args.model,
        "dtype": args.dtype,
        "data": data,
        "num_candidates": args.num_candidates,
        "cpu": f"{cpu} ({'avx512' if 'avx512f' in flags else 'avx2'}), {os.cpu_count()} cores",
        # Both backends run in this process on the same OpenMP threads (vLLM's CPU worker binds them at start-up).
        "torch_threads": torch_threads,
    }


if __name__ == "__main__":
    args = make_parser().parse_args()
    result = main(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
