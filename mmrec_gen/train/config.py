"""Typed configs behind `mmrec train sft` / scripts/train_sft.py and `mmrec train dpo` / scripts/train_dpo.py.

One dataclass per command, filled by HfArgumentParser from flags on top of `--config FILE.yaml`. The fields map
onto TRL's SFTConfig / DPOConfig (or, for the fast path, transformers' TrainingArguments) in `train/trainers.py`,
with the CPU-safe choices made explicit: bf16 only where the hardware runs it fast, no gradient checkpointing
unless asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mmrec_gen.data.data_args import DataArguments, check_positive
from mmrec_gen.models.model_args import ModelArguments
from mmrec_gen.prompting.prompt_args import PromptArguments

TARGETS = ("score", "ranking")
QUANTIZATION = ("none", "4bit")


@dataclass(kw_only=True)
class TrainConfig(PromptArguments, ModelArguments, DataArguments):
    output_dir: str = field(metadata={"help": "Where checkpoints, the adapter and train_summary.json go."})
    template: str = field(default="rank_listwise", metadata={"help": "Rank template id (the one used at inference)."})
    target: str = field(
        default="score",
        metadata={
            "help": "score: the answer is the held-out item's label (what --mode score reads); ranking: all "
            "labels, held-out item first (for --mode constrained/generate)."
        },
    )
    explanations: bool = field(
        default=False,
        metadata={"help": "Follow the answer with a short explanation citing history items (TRL path only)."},
    )
    fast: bool = field(
        default=True,
        metadata={
            "help": "score target: train on the one answer position (logits_to_keep=1) instead of TRL's "
            "full-sequence logits. Ignored (TRL is used) for --target ranking or --explanations."
        },
    )
    windows_per_user: int = field(default=1, metadata={"help": "Examples per user (sliding windows, seeded)."})
    min_history: int = field(default=5, metadata={"help": "History items before a window's answer, at least."})
    max_examples: int | None = field(default=None, metadata={"help": "Keep a seeded subset of this many examples."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get LoRA; all-linear = every linear layer of the language model."},
    )
    lora_last_layers: int | None = field(
        default=None,
        metadata={
            "help": "LoRA only on the last N transformer layers; backward then stops below them (faster on a CPU). "
            "Default: every layer."
        },
    )
    quantization: str = field(
        default="none", metadata={"help": "none, or 4bit (QLoRA; needs bitsandbytes and a GPU)."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the examples."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs decide)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Examples per forward pass."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Forward passes per optimizer step."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward (saves memory, costs ~30%% time)."}
    )
    save_steps: int = field(default=25, metadata={"help": "Checkpoint every N optimizer steps (resume point)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: int = field(default=5, metadata={"help": "Log the loss every N steps."})
    resume: bool = field(
        default=True, metadata={"help": "Continue from the last checkpoint in --output-dir when there is one."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    seed: int = field(default=0, metadata={"help": "Seed of windows, negatives, shuffling and initialisation."})

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.quantization not in QUANTIZATION:
            raise ValueError(f"--quantization must be one of {', '.join(QUANTIZATION)}, got {self.quantization!r}")
        if self.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {self.lora_r}")
        check_positive(
            self, "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "windows_per_user"
        )
        super().__post_init__()

    @property
    def uses_fast_path(self) -> bool:
        return self.fast and self.target == "score" and not self.explanations

    def fingerprint(self) -> dict:
        """The fields that decide what a run computes; a resumed run must match them (else it would mix two runs)."""
        skip = {"resume", "progress", "logging_steps", "save_total_limit"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(kw_only=True)
class SFTTrainConfig(TrainConfig):
    pass


@dataclass(kw_only=True)
class DPOTrainConfig(TrainConfig):
    beta: float = field(default=0.1, metadata={"help": "DPO beta (strength of the pull to the reference)."})
    num_negatives: int = field(
        default=3,
        metadata={
            "help": "Rejected answers per prompt (S-DPO): one multi-negative loss on the fast path, one "
            "prompt/chosen/rejected row each on the TRL path."
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.num_negatives <= self.num_candidates - 1:
            raise ValueError(
                f"--num-negatives must be between 1 and num_candidates - 1 ({self.num_candidates - 1}), "
                f"got {self.num_negatives}"
            )
