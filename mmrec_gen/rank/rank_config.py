"""Typed configs behind `mmrec rank` / scripts/zero_shot.py / scripts/few_shot.py (RankConfig) and
`mmrec explain` / scripts/explain.py (ExplainConfig). Both share RunConfig: data, candidates, model, batching."""

from __future__ import annotations

from dataclasses import dataclass, field

MODES = ("score", "constrained", "generate")
SPLITS = ("valid", "test")


@dataclass
class RunConfig:
    data: str = field(metadata={"help": "Dataset folder (MovieLens 100K/1M/latest or generic JSONL/Parquet)."})
    out: str = field(metadata={"help": "Output JSONL: one line per user (see README 'Output format')."})
    model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Registered model name (mmrec models), HF model id or local folder."},
    )
    images: str | None = field(default=None, metadata={"help": "Folder of <item_id>.jpg|png item images."})
    split: str = field(default="test", metadata={"help": "Evaluation split: valid or test."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per user (target + negatives)."})
    max_users: int | None = field(default=None, metadata={"help": "Rank only the first N users (by user id)."})
    seed: int = field(default=0, metadata={"help": "Global seed; per-user seeds derive from (seed, user id)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass (length-sorted batches)."})
    backend: str = field(default="hf", metadata={"help": "Inference backend: hf (transformers)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware is fast), bfloat16, float32."})
    max_model_len: int = field(default=2048, metadata={"help": "Context length: prompt + answer tokens."})
    max_history: int = field(
        default=20, metadata={"help": "Most recent history items to show (oldest dropped first)."}
    )
    max_text_chars: int = field(
        default=300, metadata={"help": "Each item text field is cut to this many characters (with an ellipsis)."}
    )
    candidates: str | None = field(
        default=None,
        metadata={"help": "An existing candidate file to rank (default: built or reused from the cache)."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where candidate files live (default $MMREC_HOME/candidates)."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder to apply (the --output-dir of mmrec train sft|dpo)."}
    )
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge the adapter into the weights (as fast as the base model)."}
    )
    max_lora_rank: int = field(
        default=64, metadata={"help": "Refuse adapters of a higher LoRA rank (the serving limit, as vLLM's)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be valid or test, got {self.split!r}")
        if not 2 <= self.num_candidates <= 26:
            raise ValueError(f"--num-candidates must be between 2 and 26 (labels A-Z), got {self.num_candidates}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"--max-users must be >= 1, got {self.max_users}")


@dataclass
class RankConfig(RunConfig):
    mode: str = field(
        default="score",
        metadata={
            "help": "score: label logits (one forward pass); constrained: decoding over unused labels; "
            "generate: free text parsed back to candidates."
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt template id (mmrec prompts list); default rank_listwise or "
            "rank_fewshot when --shots > 0; 'pointwise' scores each candidate Yes/No."
        },
    )
    shots: int = field(default=0, metadata={"help": "In-context demonstrations from other users' training data."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generate mode answer length; default 3 x candidates + 8."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 0, got {self.shots}")
        if self.template is None:
            self.template = "rank_fewshot" if self.shots > 0 else "rank_listwise"
        if self.template == "pointwise" and self.mode != "score":
            raise ValueError("the pointwise template scores each candidate Yes/No: use it with --mode score")
        if self.max_new_tokens is None:
            self.max_new_tokens = 3 * self.num_candidates + 8


@dataclass
class ExplainConfig(RunConfig):
    ranking: str | None = field(
        default=None,
        metadata={
            "help": "A `mmrec rank` JSONL whose top-ranked item gets explained; default: rank in score mode first."
        },
    )
    template: str = field(default="explain", metadata={"help": "Explanation template id."})
    max_new_tokens: int = field(default=64, metadata={"help": "Explanation length in tokens."})
