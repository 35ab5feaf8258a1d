"""Typed configs behind `mmrec train sft` / scripts/train_sft.py and `mmrec train dpo` / scripts/train_dpo.py.

One dataclass per command, filled by HfArgumentParser from flags on top of `--config FILE.yaml`: the shared
data/model/prompt groups, the training options of mmrec (LoRA, examples, target), and TRL's own SFTConfig /
DPOConfig, which it extends (TRL's pattern), so every transformers training option (--report-to, --optim, ...)
is there. Only defaults that must differ on a laptop are re-declared: no bf16 unless the model is loaded in bf16,
no gradient checkpointing unless asked for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from mmrec_gen.data.data_args import DataArguments, check_positive
from mmrec_gen.models.model_args import ModelArguments
from mmrec_gen.prompting.prompt_args import PromptArguments

TARGETS = ("score", "ranking", "explanation")
# TrainingArguments fields that decide what a run computes (a resumed run must match them). Not output_dir: where
# a run lives does not change what it computes, and a moved run folder is the same run.
FINGERPRINT_TRAINING = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "lr_scheduler_type", "weight_decay", "gradient_checkpointing", "save_steps", "seed", "beta",
)  # fmt: skip
_TRL_FIELDS = {f.name for f in fields(SFTConfig)} | {f.name for f in fields(DPOConfig)}
QUANTIZATION = ("none", "4bit")


@dataclass(kw_only=True)
class TrainConfig(PromptArguments, ModelArguments, DataArguments, TrainingArguments):
    """The mmrec options of both training commands; SFTTrainConfig / DPOTrainConfig add TRL's config class."""

    output_dir: str = field(metadata={"help": "Where checkpoints, the adapter and train_summary.json go."})
    template: str | None = field(
        default=None,
        metadata={
            "help": "Rank template id (the one used at inference); default rank_listwise, or with item tokens "
            "rec_items (--head items) / rec_labels (--head labels)."
        },
    )
    item_tokens: str = field(
        default="",
        metadata={
            "help": "Item-token sources, a comma list of cf (SASRec item embeddings fitted on the train split), "
            "text (--text-encoder embeddings of the item text), image (EfficientNet-Lite0 features of --images); "
            "each item in the prompt then carries one soft token (projected features). Empty: none."
        },
    )
    head: str = field(
        default="labels",
        metadata={
            "help": "labels: next-token logits over candidate letters; items: the answer position's hidden "
            "state . each item's token (needs --item-tokens; candidates need not be in the prompt)."
        },
    )
    num_layers: int | None = field(
        default=None,
        metadata={"help": "Item-token runs: keep only the first N transformer layers (faster); default all."},
    )
    text_encoder: str = field(default="minilm", metadata={"help": "Encoder of the `text` item-token source."})
    curriculum: float = field(
        default=0.0,
        metadata={
            "help": "Item-token runs: LLaRA's curriculum. The share of training prompts whose item slots carry "
            "their soft tokens ramps linearly from 0 to 1 over this fraction of the steps (the others are "
            "text-only: zero vectors at the slots); 0 = every prompt hybrid from the first step."
        },
    )
    projector: str | None = field(
        default=None,
        metadata={
            "help": "Item-token runs with the image source: start the image projector from this `mmrec train align` "
            "--output-dir (LLaVA's stage 1); refused if aligned on other images or another base model."
        },
    )
    eval_max_users: int | None = field(
        default=None,
        metadata={
            "help": "Item-token runs with --eval-strategy steps|epoch: evaluate on the first N users of the valid "
            "split's candidate file (default all)."
        },
    )
    split: str = field(
        default="test",
        metadata={
            "help": "Item-token runs: the split the adapter will rank (valid or test); cf features are fitted on "
            "that split's training view, like `mmrec baseline sasrec --split`."
        },
    )
    target: str = field(
        default="score",
        metadata={
            "help": "score: the answer is the held-out item's label (what --mode score reads); ranking: all "
            "labels, held-out item first (for --mode constrained/generate); explanation: the explain prompt of "
            "the answer (with its evidence), answered by a grounded explanation citing the most related history "
            "item (what `mmrec explain` decodes; template explain)."
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
    train_projector: bool = field(
        default=False,
        metadata={
            "help": "Vision-language models: also train the multi-modal projector (LLaVA's stage 2), saved with the "
            "adapter; the vision tower stays frozen either way."
        },
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
    # Laptop defaults for transformers' own TrainingArguments fields (every other one, e.g. --report-to
    # tensorboard|trackio|wandb, keeps the default of TRL's SFTConfig / DPOConfig that the commands extend).
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the examples."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Examples per forward pass."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Forward passes per optimizer step."})
    warmup_steps: float = field(default=5, metadata={"help": "Linear warm-up steps (a value < 1: a ratio)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward (saves memory, costs ~30%% time)."}
    )
    # TRL turns bf16 on by default, which fails (or, without native bf16, crawls) on a CPU: the trainer sets it
    # exactly when the model was loaded in bf16 (--dtype auto picks bf16 where the hardware is fast).
    bf16: bool = field(default=False, metadata={"help": "Ignored: follows the dtype the model is loaded in."})
    save_steps: float = field(default=25, metadata={"help": "Checkpoint every N optimizer steps (resume point)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=5, metadata={"help": "Log the loss every N steps."})
    resume: bool = field(
        default=True, metadata={"help": "Continue from the last checkpoint in --output-dir when there is one."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Train into --output-dir even when it holds a finished run (any config) or files that mmrec did "
            "not write; without it such a folder is refused, and a finished run of the same config is left as is."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    seed: int = field(default=0, metadata={"help": "Seed of windows, negatives, shuffling and initialisation."})

    def __post_init__(self):
        from mmrec_gen.models.item_tokens import HEADS, SOURCES

        sources = self.item_token_sources
        if sorted(set(sources) - set(SOURCES)) or len(set(sources)) != len(sources):
            raise ValueError(
                f"--item-tokens must be a comma list of distinct {', '.join(SOURCES)}, got {self.item_tokens!r}"
            )
        if self.head not in HEADS:
            raise ValueError(f"--head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "items" and not sources:
            raise ValueError("--head items scores items by their item tokens: pass --item-tokens (e.g. cf,text)")
        if not 0.0 <= self.curriculum <= 1.0:
            raise ValueError(f"--curriculum is a fraction of the steps in [0, 1], got {self.curriculum}")
        if self.curriculum and not sources:
            raise ValueError("--curriculum ramps in item tokens: pass --item-tokens (e.g. cf,text)")
        if self.projector and "image" not in sources:
            raise ValueError("--projector starts the image projector: add image to --item-tokens (e.g. text,image)")
        if self.split not in ("valid", "test"):
            raise ValueError(f"--split must be valid or test, got {self.split!r}")
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.target == "explanation" and (sources or self.explanations):
            raise ValueError(
                "--target explanation trains explanations alone, on the TRL path: drop --item-tokens / --explanations"
            )
        if self.template is None and self.target == "explanation":
            self.template = "explain"
        if self.template is None:
            self.template = "rank_listwise" if not sources else "rec_items" if self.head == "items" else "rec_labels"
        if self.quantization not in QUANTIZATION:
            raise ValueError(f"--quantization must be one of {', '.join(QUANTIZATION)}, got {self.quantization!r}")
        if self.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {self.lora_r}")
        check_positive(
            self, "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "windows_per_user"
        )
        super().__post_init__()

    @property
    def item_token_sources(self) -> list[str]:
        return [s.strip() for s in self.item_tokens.split(",") if s.strip()]

    @property
    def uses_item_tokens(self) -> bool:
        return bool(self.item_token_sources)

    @property
    def uses_fast_path(self) -> bool:
        return self.fast and self.target == "score" and not self.explanations

    def fingerprint(self) -> dict:
        """The fields that decide what a run computes; a resumed run must match them (else it would mix two runs):
        every mmrec option (not resume/progress/overwrite) and the TrainingArguments fields listed in FINGERPRINT_TRAINING."""
        own = {f.name for c in type(self).__mro__ if c in _MMREC_GROUPS or c is type(self) for f in fields(c)}
        training = {name for name in FINGERPRINT_TRAINING if hasattr(self, name)}  # beta: DPO only
        names = sorted((own - _TRL_FIELDS - {"resume", "progress", "overwrite"}) | training)
        return {k: _plain(getattr(self, k)) for k in names}


@dataclass(kw_only=True)
class SFTTrainConfig(TrainConfig, SFTConfig):
    """`mmrec train sft`: the mmrec options plus every option of TRL's SFTConfig (TrainingArguments included)."""


@dataclass(kw_only=True)
class DPOTrainConfig(TrainConfig, DPOConfig):
    """`mmrec train dpo`: the mmrec options plus every option of TRL's DPOConfig (--beta among them)."""

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


_MMREC_GROUPS = (DataArguments, ModelArguments, PromptArguments, TrainConfig)


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value
