"""The typed config behind `mmrec batch-rank` (and scripts/batch_rank.py): every `mmrec rank` option, plus where
the shards go, which users, how big a shard is, and the engine that runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmrec_gen.data.data_args import check_positive
from mmrec_gen.rank.rank_config import RankConfig

ENGINES = ("local", "ray")


@dataclass(kw_only=True)
class BatchRankConfig(RankConfig):
    out: str = field(
        metadata={
            "help": "Output folder: Parquet shards (shard-NNNNN.parquet) and a manifest.json written last. "
            "The same command again resumes; `mmrec evaluate DIR` reads it like a JSONL file."
        }
    )
    users: str | None = field(
        default=None,
        metadata={"help": "A file of user ids, one per line, in output order (default: every user of the split)."},
    )
    shard_size: int = field(default=256, metadata={"help": "Users per Parquet shard (the unit of resume)."})
    engine: str = field(
        default="local",
        metadata={
            "help": "local: this process; ray: Ray Data actors that each load the model once (local mode here, "
            "any cluster through RAY_ADDRESS)."
        },
    )
    workers: int = field(default=1, metadata={"help": "Ray engine: model-holding actors ranking shards at once."})
    explain: bool = field(default=False, metadata={"help": "Also explain each user's top-ranked item."})
    explain_max_new_tokens: int = field(default=64, metadata={"help": "--explain: explanation length in tokens."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start --out over (delete its shards and manifest). Without it, the same command continues a "
            "killed job (finished shards are kept) and a job with other options is refused, naming them."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "shard_size", "workers", "explain_max_new_tokens")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "local" and self.workers > 1:
            raise ValueError(
                f"--workers {self.workers} needs --engine ray (Ray's local mode runs the actors on this machine); "
                "--engine local ranks in this process"
            )
