"""`mmrec train align`: LLaVA's stage 1 for the `image` item-token source (projector alignment).

Each catalogue item with an image becomes one example: a prompt that shows the item only as its image item token
(`align_caption`: the cached image features through the `image` mlp2x_gelu projector, placed at the item's slot)
and, as the answer, its caption "title (year), genres". The LLM is frozen (no LoRA); only the image projector is
trained, by the cross-entropy of the caption tokens (the prompt is masked), so the projector learns to map image
features to where the LLM reads the item's text. Items without an image are not captioned: in stage (b) they get
the learned "no image" vector (their count is logged).

It is the item-token model (models/item_rec.py, the whole LLM, the image source only) trained by the same Trainer
as SFT (`ItemRecTrainer`) with `projector_only` set: LLaVA's `tune_mm_mlp_adapter` flag, where only the projector
is trainable and only the projector is saved, in checkpoints and at the end.

Stage (b) is `mmrec train sft --item-tokens text,image --projector OUT`: the image projector starts from the aligned
one (`load_aligned_projector`), after checking that it was aligned on the same image feature table (catalogue,
images, encoder) and the same base model.

The output folder holds `image_projector.safetensors`, `mmrec_align.json` (base model and its fingerprint, the
image table's fingerprint, encoder, counts) and `train_summary.json`; checkpoints every `--save-steps` (the projector's weights, the
optimizer and the schedule: the Trainer's) let a killed run resume to the same projector.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrec_gen.data.files import dumps_json
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.schema import Item
from mmrec_gen.models.adapters import base_fingerprint
from mmrec_gen.prompting.render import PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.prompting.sanitize import neutralize, text_tokenizer
from mmrec_gen.recsys.item_features import build_item_features
from mmrec_gen.train.config import TrainConfig
from mmrec_gen.train.projector import ALIGN_FILE, PREFIX, PROJECTOR_FILE

logger = logging.getLogger(__name__)

ALIGN_TEMPLATE = "align_caption"


@dataclass(kw_only=True)
class AlignConfig(TrainConfig):
    """`mmrec train align`: the training options of `mmrec train sft` (model, data, --images, steps, batch, resume),
    with the image source fixed and laptop defaults for a projector-only run."""

    item_tokens: str = field(default="image", metadata={"help": "Fixed: alignment trains the image projector."})
    template: str | None = field(default=ALIGN_TEMPLATE, metadata={"help": "Fixed: the align_caption template."})
    image_encoder: str = field(default="efficientnet-lite0", metadata={"help": "Encoder of the image features."})
    max_caption_tokens: int = field(default=48, metadata={"help": "Captions are cut to this many tokens."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (LLaVA stage 1: 1e-3)."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Items per forward pass."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimizer step."})
    warmup_steps: float = field(default=0.03, metadata={"help": "Linear warm-up steps (a value < 1: a ratio)."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N optimizer steps (resume point)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N steps."})

    def __post_init__(self):
        if self.item_tokens != "image" or self.template != ALIGN_TEMPLATE:
            raise ValueError("mmrec train align trains the image projector on align_caption prompts only")
        if not self.images:
            raise ValueError("mmrec train align needs --images DIR (the item images to align)")
        if self.num_layers is not None:
            raise ValueError("--num-layers: alignment runs the whole LLM (captions are read at its last layer)")
        if self.max_caption_tokens < 1:
            raise ValueError(f"--max-caption-tokens must be >= 1, got {self.max_caption_tokens}")
        super().__post_init__()


def caption(item: Item) -> str:
    """The item's caption: "title (year), genre, genre" (the year only when the title does not hold it)."""
    title = item.title.strip()
    year = str(item.fields.get("year", "") or "").strip()
    if year and not re.search(r"\(\s*" + re.escape(year) + r"\s*\)", title):
        title = f"{title} ({year})"
    genres = [g.strip() for g in re.split(r"[|,]", item.fields.get("genres", "") or "") if g.strip()]
    genres = [g for g in genres if g.lower() != "(no genres listed)"]
    return ", ".join([title, *genres])


@dataclass
class AlignExample:
    prompt: RenderedPrompt
    answer: list[int]  # caption + end-of-turn token ids


def end_of_turn_text(tokenizer) -> str:
    """What the chat template writes after an assistant answer (e.g. `<|im_end|>`)."""
    from mmrec_gen.train.vlm_trainer import end_of_turn

    return end_of_turn(tokenizer, content_blocks=False)


def align_examples(cfg: AlignConfig, ds, item_ids, has_image, builder: PromptBuilder) -> list[AlignExample]:
    tok = builder.tokenizer
    eot = tok(end_of_turn_text(builder.chat), add_special_tokens=False)["input_ids"]
    examples, dropped = [], 0
    for item_id, has in zip(item_ids, has_image, strict=True):
        if not has:
            continue
        item = ds.items[item_id]
        try:
            prompt = builder.explain(f"item {item_id}", [], item)
        except PromptTooLongError as exc:
            dropped += 1
            logger.warning("alignment example of item %s dropped: %s", item_id, exc)
            continue
        text = neutralize(caption(item), builder.special_tokens)
        ids = tok(text, add_special_tokens=False)["input_ids"][: cfg.max_caption_tokens]
        examples.append(AlignExample(prompt, ids + eot))
    if dropped:
        logger.warning("%d alignment examples dropped (prompt too long)", dropped)
    return examples


def align_rows(examples: list[AlignExample], index: dict) -> list[dict]:
    """Trainer rows: the prompt + caption tokens, the item's catalogue row at its slot, and the caption as labels
    (the prompt masked with -100; labels line up with input_ids, the model shifts them)."""
    return [
        {
            "input_ids": e.prompt.input_ids + e.answer,
            "item_indices": [index[i] for i in e.prompt.item_slots],
            "labels": [-100] * len(e.prompt.input_ids) + e.answer,
        }
        for e in examples
    ]


def run_align(cfg: AlignConfig, loaded=None, callbacks=()) -> dict:
    """Align the image projector (see the module docstring); return the summary written to train_summary.json."""
    from safetensors.torch import save_file

    from mmrec_gen.models.item_rec import ItemRecForRanking, item_rec_config
    from mmrec_gen.train.item_data import ItemRecCollator
    from mmrec_gen.train.item_rec_trainer import ItemRecTrainer, ItemRun, item_training_args
    from mmrec_gen.train.trainers import SUMMARY_FILE, _cpu_seconds, check_resume, load_base

    started, cpu_started = time.time(), _cpu_seconds()
    resume_from = check_resume(cfg, "align")
    ds = load_dataset(cfg.data, images_dir=cfg.images)
    features = build_item_features(  # the image table needs no split
        ds, None, ["image"], split=cfg.split, seed=cfg.seed, image_encoder=cfg.image_encoder,
        on_bad_image=cfg.on_bad_image, max_image_pixels=cfg.max_image_pixels,
    )  # fmt: skip
    has_image = np.asarray(features.has_image, bool)
    loaded = loaded or load_base(cfg)
    tokenizer = text_tokenizer(loaded.tokenizer)
    builder = PromptBuilder.from_options(
        loaded.tokenizer, ALIGN_TEMPLATE, cfg, cfg.max_caption_tokens + 4, item_tokens=True
    )
    examples = align_examples(cfg, ds, features.item_ids, has_image, builder)
    if not examples:
        raise ValueError(f"{cfg.images}: no item of {cfg.data} has an image to align; check --images")
    logger.info(
        "alignment: %d items with an image (%d without: they get the no-image vector in stage (b))",
        len(examples), int((~has_image).sum()),
    )  # fmt: skip
    fingerprint = base_fingerprint(loaded.model)  # of the base model as loaded (stage (b) checks it)
    index = {item: k for k, item in enumerate(features.item_ids)}
    config = item_rec_config(
        loaded.model, item_ids=features.item_ids, tables=features.tables, item_token_id=builder.item_token_id,
        base_model=loaded.name,
    )  # fmt: skip
    model = ItemRecForRanking.from_language_model(
        loaded.model, config, tables=features.tables, has_image=has_image, seed=cfg.seed
    )
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("item_tokens." + PREFIX))  # the head and the no-image vector are stage (b)'s
    run = ItemRun(ds, None, features, loaded, builder, index)
    trainer = ItemRecTrainer(
        model=model,
        args=item_training_args(cfg, run),
        train_dataset=align_rows(examples, index),
        data_collator=ItemRecCollator(tokenizer.pad_token_id, builder.item_token_id),
        callbacks=list(callbacks),
        projector_only=True,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    out = Path(cfg.output_dir)
    state = {
        k[len("item_tokens.") :]: v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad
    }
    save_file(state, str(out / PROJECTOR_FILE))
    meta = {
        "base_model": loaded.name, "base_fingerprint": fingerprint, "hidden_size": config.hidden_size,
        "image_encoder": cfg.image_encoder, "image_fingerprint": config.fingerprints["image"],
        "items": len(features.item_ids), "items_with_image": int(has_image.sum()), "data": str(cfg.data),
    }  # fmt: skip
    (out / ALIGN_FILE).write_text(dumps_json(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    runtime = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None)
    summary = {
        "kind": "align", "model": loaded.name, "examples": len(examples),
        "items_without_image": int((~has_image).sum()), "steps": trainer.state.global_step,
        "items_per_step": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "train_runtime_s": round(runtime, 1) if runtime else None, "wall_s": round(time.time() - started, 1),
        "cpu_s": round(_cpu_seconds() - cpu_started, 1), "resumed_from": resume_from,
    }  # fmt: skip
    (out / SUMMARY_FILE).write_text(dumps_json(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("aligned image projector saved to %s", out)
    return summary
