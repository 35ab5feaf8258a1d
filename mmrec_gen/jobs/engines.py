"""Where the shards of a batch-rank job are ranked: in this process (`local`) or on Ray Data (`ray`).

Both engines hand each finished shard to `on_shard(index, ShardResult)` on the driver, in whatever order shards
finish; the driver writes it (jobs/shard_store.py), so output, resume and the manifest are the same for both.

Ray: one dataset row per shard (its index and its pickled entries), `map_batches` with the callable class
RayShardRanker over an ActorPoolStrategy of `workers` actors, each loading the model once and ranking one shard
per call. Without RAY_ADDRESS this starts a local Ray (no dashboard, `workers` CPUs); with it, `ray.init()`
joins that cluster (`ray start --head` on one node, `ray start --address HEAD:6379` on the others).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Sequence

from mmrec_gen.jobs.shard_worker import BatchWorkerSpec, RayShardRanker, ShardEntry, ShardResult, ShardWorker

logger = logging.getLogger(__name__)

OnShard = Callable[[int, ShardResult], None]


def run_local(
    spec: BatchWorkerSpec, shards: Sequence[tuple[int, Sequence[ShardEntry]]], on_shard: OnShard, *,
    loaded_model=None, inputs=None,
) -> None:  # fmt: skip
    if not shards:
        return
    worker = ShardWorker(spec, loaded_model=loaded_model, inputs=inputs)
    for index, entries in shards:
        on_shard(index, worker.rank_shard(entries))


def run_ray(
    spec: BatchWorkerSpec, shards: Sequence[tuple[int, Sequence[ShardEntry]]], on_shard: OnShard, *, workers: int
) -> None:
    if not shards:
        return
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            logger.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
            ray.init()
        else:
            # One CPU per actor plus one for Ray Data's own tasks; no dashboard (nothing to serve in a batch job).
            ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        DataContext.get_current().enable_progress_bars = False  # the job shows its own bar over users
        items = [{"shard": index, "payload": pickle.dumps(list(entries))} for index, entries in shards]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        ranked = dataset.map_batches(
            RayShardRanker,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            compute=ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        for row in ranked.iter_rows():
            result = ShardResult(json.loads(row["rows"]), int(row["prompt_tokens"]), float(row["seconds"]))
            on_shard(int(row["shard"]), result)
    finally:
        if started:
            ray.shutdown()
