"""`mmrec train align`: LLaVA's stage 1 for the `image` item-token source (projector alignment).

Each catalogue item with an image becomes one example: a prompt that shows the item only as its image item token
(`align_caption`: the cached image features through the `image` mlp2x_gelu projector, placed at the item's slot)
and, as the answer, its caption "title (year), genres". The LLM is frozen (no LoRA); only the image projector is
trained, by the cross-entropy of the caption tokens (the prompt is masked), so the projector learns to map image
features to where the LLM reads the item's text. Items without an image are not captioned: in stage (b) they get
the learned "no image" vector (their count is logged).

Stage (b) is `mmrec train sft --item-tokens text,image --projector OUT`: the image projector starts from the aligned
one (`load_aligned_projector`), after checking that it was aligned on the same image feature table (catalogue,
images, encoder) and the same base model.

The output folder holds `image_projector.safetensors`, `mmrec_align.json` (base model and its fingerprint, the
image table's fingerprint, encoder, counts) and `train_summary.json`; checkpoints every `--save-steps` let a killed
run resume (each step's items are drawn from (seed, step)), as the other trainers do.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.schema import Item
from mmrec_gen.data.seeding import derive_seed
from mmrec_gen.models.adapters import base_fingerprint
from mmrec_gen.models.item_tokens import ItemTokens
from mmrec_gen.prompting.render import PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.prompting.sanitize import neutralize, text_tokenizer
from mmrec_gen.recsys.item_features import build_item_features
from mmrec_gen.train.config import TrainConfig
from mmrec_gen.train.item_trainer import ItemTokenLM, _fast_bf16, train_loop
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


class CaptionLM(ItemTokenLM):
    """The frozen LLM reading a prompt whose item slot holds the image item token; only the image projector trains."""

    def train(self, mode: bool = True):
        """The LLM stays in eval mode (frozen: no dropout) while the projector trains."""
        super().train(mode)
        self.llm.eval()
        return self

    def loss(self, examples: list[AlignExample]) -> torch.Tensor:
        rows = [e.prompt.input_ids + e.answer for e in examples]
        hidden = self.hidden_of(rows, [e.prompt.item_slots for e in examples])
        # Caption token t is predicted at position t - 1: the prompt's last position predicts the first one.
        rows_idx, cols, targets = [], [], []
        for r, e in enumerate(examples):
            start = len(e.prompt.input_ids)
            rows_idx += [r] * len(e.answer)
            cols += list(range(start - 1, start - 1 + len(e.answer)))
            targets += e.answer
        states = hidden[torch.tensor(rows_idx), torch.tensor(cols)].float()
        logits = self.lm_head(states.to(self.lm_head.weight.dtype)).float()
        return nn.functional.cross_entropy(logits, torch.tensor(targets))


def run_align(cfg: AlignConfig, loaded=None) -> dict:
    """Align the image projector (see the module docstring); return the summary written to train_summary.json."""
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

    torch.manual_seed(derive_seed(cfg.seed, "align", "init"))
    hidden_size = loaded.model.get_input_embeddings().weight.shape[1]
    item_tokens = ItemTokens(features.item_ids, features.tables, hidden_size, has_image=has_image)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    for name, p in item_tokens.named_parameters():
        p.requires_grad_(name.startswith(PREFIX))  # the head and the no-image vector are stage (b)'s
    autocast = loaded.dtype == "float32" and _fast_bf16()
    model = CaptionLM(loaded.model, item_tokens, builder.item_token_id, tokenizer.pad_token_id, autocast)
    steps, losses, _, loop_s = train_loop(
        cfg, model, examples, lambda m, batch, soft: m.loss(batch), resume_from, "align"
    )
    out = Path(cfg.output_dir)

    from safetensors.torch import save_file

    state = {k: v for k, v in item_tokens.trainable_state().items() if k.startswith(PREFIX)}
    save_file(state, str(out / PROJECTOR_FILE))
    meta = {
        "base_model": loaded.name, "base_fingerprint": base_fingerprint(loaded.model), "hidden_size": hidden_size,
        "image_encoder": cfg.image_encoder, "image_fingerprint": item_tokens.fingerprints()["image"],
        "items": len(features.item_ids), "items_with_image": int(has_image.sum()), "data": str(cfg.data),
    }  # fmt: skip
    (out / ALIGN_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    summary = {
        "kind": "align", "model": loaded.name, "examples": len(examples),
        "items_without_image": int((~has_image).sum()), "steps": steps, "items_per_step": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "train_loop_s": round(loop_s, 1), "wall_s": round(time.time() - started, 1),
        "cpu_s": round(_cpu_seconds() - cpu_started, 1), "resumed_from": resume_from, "losses": losses,
    }  # fmt: skip
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("aligned image projector saved to %s", out)
    return {k: v for k, v in summary.items() if k != "losses"}
