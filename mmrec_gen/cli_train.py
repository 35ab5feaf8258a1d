"""`mmrec train sft|dpo|merge`: tune a LoRA adapter with TRL + PEFT, or merge one into its base model."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

USAGE = """usage: mmrec train {sft,dpo,merge,align} [options]   (mmrec train ACTION --help for its options)

  sft     supervised fine-tuning on the train split (answer = the held-out item's label, or a full ranking)
  dpo     DPO / S-DPO: the held-out item's label preferred over negatives' labels (start from an SFT --adapter)
  merge   fold an adapter into its base model and save a plain model folder (usable as --model)
  align   LLaVA stage 1 for image item tokens: train the image projector on item image -> caption pairs
"""


@dataclass
class MergeConfig:
    adapter: str = field(metadata={"help": "Adapter folder (the --output-dir of mmrec train sft|dpo)."})
    out: str = field(metadata={"help": "Folder for the merged model and its tokenizer."})
    model: str | None = field(
        default=None, metadata={"help": "Base model; default: the one recorded in the adapter's mmrec_adapter.json."}
    )
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16 or float32."})


def train_and_report(kind: str, cfg) -> int:
    """Run one training command for a filled config and print its summary (also used by scripts/)."""
    from mmrec_gen.models.item_rec_io import item_rec_folder
    from mmrec_gen.train.item_rec_trainer import run_item_sft
    from mmrec_gen.train.trainers import RunFinished, run_dpo, run_sft

    try:
        if kind == "align":
            from mmrec_gen.train.align import run_align

            summary = run_align(cfg)
        elif kind == "sft" and _vision_language(cfg.model):
            from mmrec_gen.train.vlm_trainer import run_vlm_sft

            summary = run_vlm_sft(cfg)  # refuses --item-tokens: the model reads the images themselves
        elif kind == "dpo" and _vision_language(cfg.model):
            raise ValueError(
                f"mmrec train dpo does not take vision-language models yet ({cfg.model}): its images would not reach "
                "the model; tune it with mmrec train sft"
            )
        elif kind == "sft" and cfg.uses_item_tokens:
            summary = run_item_sft(cfg)
        elif kind == "dpo" and item_rec_folder(cfg.adapter):
            from mmrec_gen.train.item_rec_dpo import run_item_dpo

            summary = run_item_dpo(cfg)
        elif kind == "dpo" and cfg.uses_item_tokens:
            raise ValueError(
                "mmrec train dpo continues an item-token SFT adapter: pass it as --adapter (the --output-dir of "
                "`mmrec train sft --item-tokens ...`); its sources and head are read from it"
            )
        else:
            summary = (run_sft if kind == "sft" else run_dpo)(cfg)
    except RunFinished as done:  # the same command again after it finished: nothing to do, nothing touched
        print(done)
        summary = done.summary
    print(json.dumps(summary))
    if kind == "align":
        print(f"projector: {cfg.output_dir}  (use it with: mmrec train sft --item-tokens text,image "
              f"--projector {cfg.output_dir} ...)")  # fmt: skip
        return 0
    print(f"adapter: {cfg.output_dir}  (use it with: mmrec rank --adapter {cfg.output_dir} ...)")
    return 0


def _vision_language(model: str) -> bool:
    """A --model that names a vision-language model (a folder or hub id whose config has a vision tower)."""
    from mmrec_gen.models.loading import is_vision_language
    from mmrec_gen.models.registry import MODELS

    return model not in MODELS and is_vision_language(model)


def merge(cfg: MergeConfig) -> int:
    from mmrec_gen.data.files import check_output_dir
    from mmrec_gen.models.adapters import read_adapter_metadata, with_adapter
    from mmrec_gen.models.registry import load_model

    check_output_dir(cfg.out, "--out")
    from mmrec_gen.models.item_rec_io import item_rec_folder, load_item_rec, save_merged

    if item_rec_folder(cfg.adapter):  # an item-token recommender: one from_pretrained folder, tables included
        base = load_model(cfg.model, dtype=cfg.dtype) if cfg.model else None
        save_merged(load_item_rec(cfg.adapter, dtype=cfg.dtype, base=base), cfg.out)
        print(f"merged {cfg.adapter}: {cfg.out}  (use it with: mmrec rank --model {cfg.out} ...)")
        return 0
    base = cfg.model or (read_adapter_metadata(cfg.adapter) or {}).get("base_model")
    if base is None:
        raise ValueError(f"{cfg.adapter}: no mmrec_adapter.json names its base model; pass --model")
    merged = with_adapter(load_model(base, dtype=cfg.dtype), cfg.adapter, merge=True)
    merged.model.save_pretrained(cfg.out)
    merged.tokenizer.save_pretrained(cfg.out)
    print(f"merged {cfg.adapter} into {base}: {cfg.out}  (use it with: mmrec rank --model {cfg.out} ...)")
    return 0


def cmd_train(argv: Sequence[str]) -> int:
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.train.config import DPOTrainConfig, SFTTrainConfig

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    action, rest = argv[0], argv[1:]
    if action == "sft":
        return train_and_report("sft", parse_config(SFTTrainConfig, rest, "mmrec train sft", _SFT_HELP))
    if action == "dpo":
        return train_and_report("dpo", parse_config(DPOTrainConfig, rest, "mmrec train dpo", _DPO_HELP))
    if action == "align":
        from mmrec_gen.train.align import AlignConfig

        return train_and_report("align", parse_config(AlignConfig, rest, "mmrec train align", _ALIGN_HELP))
    if action == "merge":
        return merge(parse_config(MergeConfig, rest, "mmrec train merge", "Merge a LoRA adapter into its base."))
    raise ValueError(f"unknown train action {action!r}: use sft, dpo, merge or align")


_SFT_HELP = (
    "Supervised fine-tuning of a LoRA adapter on windows of the train split (never valid/test targets). "
    "The score target trains on the answer position only (--fast, the default); --target ranking and "
    "--explanations use TRL's SFTTrainer. Killed runs resume from their last checkpoint; a finished run (or a "
    "folder of other files) is never trained over without --overwrite."
)
_DPO_HELP = (
    "DPO of a LoRA adapter (S-DPO with several negatives on the fast path, TRL's DPOTrainer otherwise), "
    "by default continuing --adapter (the SFT adapter), which is also the frozen reference. With an item-token "
    "adapter (mmrec train sft --item-tokens ...), S-DPO runs over its head's candidate scores, with the adapter's "
    "head, sources, template and layers."
)
_ALIGN_HELP = (
    "LLaVA's stage 1 for the image item-token source: each item with an image is shown to the frozen LLM as its "
    "image item token (cached image features through the image projector), and the projector alone is trained on "
    "the item's caption (title (year), genres). Stage (b): mmrec train sft --item-tokens text,image --projector "
    "OUT. Killed runs resume from their last checkpoint."
)
