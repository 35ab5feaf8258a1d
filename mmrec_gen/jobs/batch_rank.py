"""`mmrec batch-rank`: rank many users into Parquet shards that survive a kill, on this machine or on Ray Data.

The plan is `mmrec rank`'s (rank/pipeline.py `plan_rank`: data, split, candidate file) plus the user list and its
shards; the worker is rank/worker.py's spec (model name or path, adapter path, backend name) built once per
process or Ray actor; the writer is jobs/shard_store.py. Every user of the list ends as exactly one row (a
ranking, or an error row naming it) in list order, whatever the engine, the number of workers or the kills.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec_gen.data.files import check_output_dir
from mmrec_gen.data.rows import ResultRow
from mmrec_gen.jobs.batch_config import BatchRankConfig
from mmrec_gen.jobs.job_lock import JobLock
from mmrec_gen.jobs.shard_store import ShardStore
from mmrec_gen.jobs.shard_worker import BatchWorkerSpec, ShardEntry, ShardResult
from mmrec_gen.rank.pipeline import RUN_ONLY_OPTIONS, RankPlan, build_task, plan_rank, rank_fingerprint

logger = logging.getLogger(__name__)

# Options that decide nothing about the rows: where they go, how they are shown, which engine runs them (local and
# Ray give the same rows, so a job started on one resumes on the other), and the users file's path (its content
# is in the fingerprint as `user_list`).
JOB_ONLY_OPTIONS = RUN_ONLY_OPTIONS | {"engine", "workers", "users"}


@dataclass
class BatchPlan:
    rank: RankPlan
    user_ids: list[str]
    shards: list[list[ShardEntry]]
    fingerprint: dict[str, Any]


@dataclass
class BatchSummary:
    out: str
    users: int
    shards: int
    skipped_shards: int = 0
    ranked_users: int = 0  # in this run (not counting resumed shards)
    error_rows: int = 0  # in the whole output
    prompt_tokens: int = 0  # in this run
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)

    @property
    def users_per_s(self) -> float:
        return self.ranked_users / self.seconds if self.seconds else 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.out}: {self.users} users in {self.shards} shards ({self.skipped_shards} already done), "
            f"{self.error_rows} error rows; this run ranked {self.ranked_users} users in {self.seconds:.1f} s "
            "(model load included): "
            f"{self.users_per_s:.2f} users/s, {self.prompt_tokens_per_s:.0f} prompt tokens/s"
        )


def read_user_ids(path: str) -> list[str]:
    """One user id per line (blank lines skipped); a repeated id is refused, naming its lines."""
    ids: list[str] = []
    first_line: dict[str, int] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--users {path}: cannot read it ({exc.strerror})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        user = line.strip()
        if not user:
            continue
        if user in first_line:
            raise ValueError(
                f"{path}:{line_no}: user {user!r} already on line {first_line[user]}; each user is ranked once: "
                "remove the repeat"
            )
        first_line[user] = line_no
        ids.append(user)
    if not ids:
        raise ValueError(f"--users {path}: no user ids in it (one per line)")
    return ids


def plan_batch(cfg: BatchRankConfig) -> BatchPlan:
    """Data, candidates, users and shards; a user that cannot be planned becomes an error row naming it."""
    plan = plan_rank(cfg)
    cfg, inputs = plan.config, plan.inputs
    cand = inputs.candidate_file
    by_user = {row.user_id: row for row in cand.rows}
    user_ids = read_user_ids(cfg.users) if cfg.users else [row.user_id for row in cand.rows]
    user_ids = user_ids[: cfg.max_users] if cfg.max_users else user_ids
    meta = plan.worker.row_meta(cfg.model)
    entries: list[ShardEntry] = []
    for user in user_ids:
        row = by_user.get(user)
        if row is None:
            message = (
                f"user {user!r} is not in the candidate file {cand.path} (split {cand.split}; a user needs 3 or more "
                "interactions): check the --users file"
            )
            logger.warning(message)
            entries.append(ResultRow.failed(user, None, None, message, meta).to_dict())
            continue
        try:
            entries.append(build_task(inputs, row, split=cfg.split, shots=cfg.shots, seed=cfg.seed))
        except (KeyError, ValueError) as exc:  # a bad record: this user only
            logger.warning("user %s: %s: %s", user, type(exc).__name__, exc)
            message = f"bad record: {type(exc).__name__}: {exc}"
            entries.append(ResultRow.failed(user, row.candidates, row.target, message, meta).to_dict())
    shards = [entries[i : i + cfg.shard_size] for i in range(0, len(entries), cfg.shard_size)]
    user_list = hashlib.sha256("\n".join(user_ids).encode()).hexdigest()[:16]
    fingerprint = {**rank_fingerprint(cfg, inputs, skip=JOB_ONLY_OPTIONS), "user_list": user_list}
    return BatchPlan(plan, user_ids, shards, fingerprint)


def _user_id(entry: ShardEntry) -> str:
    return str(entry["user_id"] if isinstance(entry, dict) else entry.user_id)


def run_batch_rank(cfg: BatchRankConfig, loaded_model=None) -> BatchSummary:
    """Rank the job's users into cfg.out, resuming a killed job of the same config; returns the summary. The folder
    is locked for the run (jobs/job_lock.py): another job on it is refused with FolderInUseError."""
    check_output_dir(cfg.out, "--out")
    if cfg.explain:  # the explanation template is checked before any model loads
        from mmrec_gen.rank.rank_config import check_template

        check_template("explain", ("explain",))
    plan = plan_batch(cfg)
    with JobLock(cfg.out):  # one job per folder: a second one is refused while this one lives
        return _run_locked(cfg, plan, loaded_model)


def _run_locked(cfg: BatchRankConfig, plan: BatchPlan, loaded_model) -> BatchSummary:
    from tqdm.auto import tqdm

    from mmrec_gen.jobs.engines import run_local, run_ray

    store = ShardStore(cfg.out, plan.fingerprint, [[_user_id(e) for e in shard] for shard in plan.shards])
    done = store.start(overwrite=cfg.overwrite)
    todo = [(i, shard) for i, shard in enumerate(plan.shards) if i not in done]
    summary = BatchSummary(cfg.out, len(plan.user_ids), len(plan.shards), skipped_shards=len(done))
    spec = BatchWorkerSpec(plan.rank.worker, explain=cfg.explain, explain_max_new_tokens=cfg.explain_max_new_tokens)
    bar = tqdm(
        total=len(plan.user_ids), initial=sum(len(plan.shards[i]) for i in done), unit="user",
        desc="batch-rank", disable=not cfg.progress,
    )  # fmt: skip
    start = time.perf_counter()

    def on_shard(index: int, result: ShardResult) -> None:
        store.write(index, result.rows)
        summary.ranked_users += len(result.rows)
        summary.prompt_tokens += result.prompt_tokens
        bar.update(len(result.rows))
        bar.set_postfix(users_per_s=f"{summary.ranked_users / (time.perf_counter() - start):.2f}")

    try:
        if cfg.engine == "ray":
            run_ray(spec, todo, on_shard, workers=cfg.workers)
        else:
            run_local(spec, todo, on_shard, loaded_model=loaded_model, inputs=plan.rank.inputs)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.manifest = store.finish()
    summary.error_rows = summary.manifest["counts"]["error_rows"]
    return summary
