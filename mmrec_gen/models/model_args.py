"""The model options shared by rank, explain and train (see `data/data_args.py` for how groups combine)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmrec_gen.data.data_args import Arguments


@dataclass(kw_only=True)
class ModelArguments(Arguments):
    model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Registered model name (mmrec models), HF model id or local folder."},
    )
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware is fast), bfloat16, float32."})
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter folder (the --output-dir of mmrec train sft|dpo): applied when ranking; "
            "training continues it (for DPO: the SFT adapter) instead of starting a new one."
        },
    )

    def __post_init__(self):
        if self.adapter:
            from mmrec_gen.models.adapters import check_adapter_files

            check_adapter_files(self.adapter)  # a damaged adapter fails here, before data or a model loads
        super().__post_init__()
