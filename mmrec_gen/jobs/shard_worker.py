"""What ranks one shard of users, in this process or in a Ray actor: built once from a picklable spec (the model
loads once per worker), then called per shard.

Every entry of a shard ends as exactly one row, in shard order: a UserTask is ranked (and explained with
--explain); an entry the plan already turned into an error row (an unknown user id, a bad record) is passed
through. A shard that fails as a whole is retried user by user, and a user that still fails becomes an error row
naming it, so the job goes on (out-of-memory is halved and retried inside the backend, R8).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmrec_gen.data.rows import ResultRow
from mmrec_gen.rank.ranker import UserTask
from mmrec_gen.rank.worker import RankWorkerSpec, build_ranker

logger = logging.getLogger(__name__)

ShardEntry = UserTask | dict  # a task to rank, or an error row the plan already made


@dataclass(frozen=True)
class BatchWorkerSpec:
    rank: RankWorkerSpec
    explain: bool = False
    explain_max_new_tokens: int = 64


@dataclass
class ShardResult:
    rows: list[dict[str, Any]]
    prompt_tokens: int
    seconds: float


class TokenCounter:
    """The backend, counting the prompt tokens that go through it (for the job's prompt tokens/s)."""

    def __init__(self, backend):
        self.backend = backend
        self.prompt_tokens = 0

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def _count(self, prompts) -> None:
        self.prompt_tokens += sum(len(p.input_ids) for p in prompts)

    def label_logits(self, prompts, token_ids):
        self._count(prompts)
        return self.backend.label_logits(prompts, token_ids)

    def generate(self, prompts, max_new_tokens):
        self._count(prompts)
        return self.backend.generate(prompts, max_new_tokens)

    def constrained_rank(self, prompts, vocab):
        self._count(prompts)
        return self.backend.constrained_rank(prompts, vocab)

    def item_scores(self, prompts):
        self._count(prompts)
        return self.backend.item_scores(prompts)


class ShardWorker:
    def __init__(self, spec: BatchWorkerSpec, *, loaded_model=None, inputs=None):
        self.spec = spec
        self.ranker = build_ranker(spec.rank, loaded_model=loaded_model, inputs=inputs, progress=False)
        self.counter = TokenCounter(self.ranker.backend)
        self.ranker.backend = self.counter
        if spec.explain:
            from mmrec_gen.prompting.render import PromptBuilder
            from mmrec_gen.rank.titles import normalize_title

            self.explain_builder = PromptBuilder.from_options(
                self.counter.tokenizer, "explain", spec.rank.config, spec.explain_max_new_tokens
            )
            self.catalogue = {normalize_title(t): t for t in spec.rank.catalogue_titles}

    def rank_shard(self, entries: Sequence[ShardEntry]) -> ShardResult:
        start, tokens = time.perf_counter(), self.counter.prompt_tokens
        tasks = [e for e in entries if isinstance(e, UserTask)]
        ranked = iter(self._rank(tasks))
        rows = [next(ranked) if isinstance(e, UserTask) else e for e in entries]
        if self.spec.explain:
            rows = self._explain(entries, rows)
        return ShardResult(rows, self.counter.prompt_tokens - tokens, time.perf_counter() - start)

    def _rank(self, tasks: Sequence[UserTask]) -> list[dict]:
        if not tasks:
            return []
        try:
            return self.ranker.rank(tasks)
        except Exception as exc:  # noqa: BLE001 - one user's failure must not end the job; it is named below
            if len(tasks) > 1:
                logger.warning("a shard of %d users failed (%s); ranking them one by one", len(tasks), exc)
                return [row for task in tasks for row in self._rank([task])]
            task = tasks[0]
            logger.warning("user %s: %s: %s", task.user_id, type(exc).__name__, exc)
            return [
                ResultRow.failed(
                    task.user_id, [c.item_id for c in task.candidates], task.target,
                    f"{type(exc).__name__}: {exc}", self.ranker.meta,
                ).to_dict()
            ]  # fmt: skip

    def _explain(self, entries: Sequence[ShardEntry], rows: list[dict]) -> list[dict]:
        """Each ranked user's top item explained (rank/explain.py), merged into its row as extra keys."""
        from mmrec_gen.rank.explain import explain

        keep = [
            i for i, (e, r) in enumerate(zip(entries, rows, strict=True)) if isinstance(e, UserTask) and r["ranking"]
        ]
        tasks = [entries[i] for i in keep]
        top = [{c.item_id: c for c in t.candidates}[rows[i]["ranking"][0]] for t, i in zip(tasks, keep, strict=True)]
        explained = explain(
            self.counter, self.explain_builder, tasks, top, catalogue=self.catalogue,
            max_new_tokens=self.spec.explain_max_new_tokens, meta=self.ranker.meta,
        )  # fmt: skip
        by_index = dict(zip(keep, explained, strict=True))
        out = []
        for i, row in enumerate(rows):
            got = by_index.get(i)
            extra = {
                "explanation": got.get("explanation") if got else None,
                "mentioned_titles": got.get("mentioned_titles") if got else None,
                "hallucinated_titles": got.get("hallucinated_titles") if got else None,
                "cites_history": got.get("cites_history") if got else None,
                "explanation_error": got.get("error") if got else f"no ranking: {row['error']}",
            }
            out.append({**row, **extra})
        return out


class RayShardRanker:
    """Ray Data's callable class (`map_batches(..., compute=ActorPoolStrategy(size=W))`): each actor builds one
    ShardWorker (the model loads once) and ranks one shard per batch."""

    def __init__(self, spec: BatchWorkerSpec):
        self.worker = ShardWorker(spec)

    def __call__(self, batch: dict) -> dict:
        import json
        import pickle

        import numpy as np

        shards, rows, tokens, seconds = [], [], [], []
        for shard, payload in zip(batch["shard"], batch["payload"], strict=True):
            result = self.worker.rank_shard(pickle.loads(payload))
            shards.append(int(shard))
            rows.append(json.dumps(result.rows, ensure_ascii=False))
            tokens.append(result.prompt_tokens)
            seconds.append(result.seconds)
        return {
            "shard": np.array(shards, dtype=np.int64),
            "rows": np.array(rows, dtype=object),
            "prompt_tokens": np.array(tokens, dtype=np.int64),
            "seconds": np.array(seconds, dtype=np.float64),
        }
