"""`mmrec train sft --item-tokens cf,text --head items|labels`: LoRA + item-token projectors + item head, trained
together on the train split.

- `--head items`: each example is a window of a user's train sequence shown as item tokens (the compact
  `rec_items` template, candidates not in the prompt). One forward pass trains every prefix, as SASRec does: the
  hidden state at each history item's slot predicts the next item, and the answer position predicts the window's
  last item; the loss is the softmax over the whole catalogue of `head(h) . item_token(i)`.
- `--head labels`: the verbalizer over candidate letters (`rec_labels`: history and candidates as item tokens);
  the loss is the cross-entropy of the answer's letter among the candidates' letters at the answer position.

`--num-layers N` keeps the first N transformer layers (the rest are never run, in training or ranking): on a CPU
it buys examples per minute in proportion. The loop is ours (not transformers.Trainer) because only LoRA, the
projectors and the head are trainable state: a checkpoint holds those plus the optimizer and scheduler, every
`--save-steps`; each step draws its windows and dropout from (seed, step), so a killed run resumed from its last
checkpoint ends with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.seeding import derive_seed, rng_for
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.adapters import write_adapter_metadata
from mmrec_gen.models.item_tokens import (
    ItemTokens,
    check_fingerprints,
    decoder_and_head,
    keep_first_layers,
    read_item_token_config,
    write_item_token_config,
)
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.recsys.item_features import build_item_features
from mmrec_gen.train.config import TrainConfig
from mmrec_gen.train.examples import build_examples
from mmrec_gen.train.trainers import SUMMARY_FILE, _cpu_seconds, check_resume, load_base, peft_model

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


@dataclass
class ItemExample:
    prompt: RenderedPrompt
    targets: list[int]  # items head: catalogue row per slot, then the answer position's; labels head: [answer index]
    user: str = ""


def _windows(sequence: list, length: int, limit: int) -> list[list]:
    """Spans of `length` items from the sequence's end backwards (most recent first), at most `limit`; neighbours
    share their boundary item, so every item after the first is some window's answer or a slot's target once."""
    out, end = [], len(sequence)
    while end >= 2 and len(out) < limit:
        out.append(sequence[max(0, end - length) : end])
        end -= length - 1
    return out


def item_head_examples(cfg: TrainConfig, ds, split_result, builder: PromptBuilder, index: dict) -> list[ItemExample]:
    examples, dropped = [], 0
    users = list(split_result.users)[: cfg.max_users] if cfg.max_users else list(split_result.users)
    for user in users:
        train = list(split_result.users[user].train)
        for window in _windows(train, cfg.max_history + 1, cfg.windows_per_user):
            history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in window[:-1]]
            try:
                prompt = builder.rank(user, history, [])
            except PromptTooLongError as exc:
                dropped += 1
                logger.warning("training window of user %s dropped: %s", user, exc)
                continue
            shown = [i.item_id for i in window[-1 - prompt.n_history_used : -1]] if prompt.n_history_used else []
            nexts = [i.item_id for i in window[len(window) - prompt.n_history_used :]]
            assert prompt.item_slots == shown, "slots must be the shown history"
            examples.append(ItemExample(prompt, [index[i] for i in nexts] + [index[window[-1].item_id]], user))
    return examples, dropped


def label_head_examples(cfg: TrainConfig, ds, split_result, builder: PromptBuilder) -> list[ItemExample]:
    examples, dropped = [], 0
    for ex in build_examples(
        ds, split_result, seed=cfg.seed, num_candidates=cfg.num_candidates, windows_per_user=cfg.windows_per_user,
        min_history=cfg.min_history, max_examples=cfg.max_examples, max_users=cfg.max_users,
    ):  # fmt: skip
        history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in ex.history]
        try:
            prompt = builder.rank(ex.user_id, history, [ds.items[c] for c in ex.candidates])
        except PromptTooLongError as exc:
            dropped += 1
            logger.warning("training example of user %s dropped: %s", ex.user_id, exc)
            continue
        examples.append(ItemExample(prompt, [ex.target_index], ex.user_id))
    return examples, dropped


class ItemTokenLM(nn.Module):
    """The (LoRA) LLM and the item tokens as one module: forward returns the final hidden states."""

    def __init__(self, llm, item_tokens: ItemTokens, placeholder: int, pad_id: int, autocast: bool) -> None:
        super().__init__()
        self.llm = llm
        self.item_tokens = item_tokens
        self.placeholder = placeholder
        self.pad_id = pad_id
        self.autocast = autocast
        self.decoder, self.lm_head = decoder_and_head(llm)

    def batch(self, id_rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, id_rows))
        ids = torch.full((len(id_rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(id_rows), width), dtype=torch.long)
        for row, tokens in enumerate(id_rows):  # right padding: every row's positions start at 0
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def hidden_of(self, id_rows: list[list[int]], slots: list[list[str]], soft=None) -> torch.Tensor:
        """Final hidden states (B, T, H) of token rows whose placeholders hold the items `slots[b]`; rows with
        soft[b] False get no soft tokens at their slots (curriculum)."""
        ids, mask = self.batch(id_rows)
        embeds = self.item_tokens.embed(self.llm.get_input_embeddings(), ids, slots, self.placeholder, soft=soft)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.last_hidden_state.float()

    def hidden(self, prompts: list[RenderedPrompt], soft: list[bool] | None = None) -> torch.Tensor:
        return self.hidden_of([p.input_ids for p in prompts], [p.item_slots for p in prompts], soft)


def prediction_states(model: ItemTokenLM, examples: list[ItemExample], soft=None) -> torch.Tensor:
    """Hidden states at every prediction position of the examples, in order: each history slot (predicting the
    next item), then the answer position; (sum of positions, hidden)."""
    hidden = model.hidden([e.prompt for e in examples], soft)
    rows, cols = [], []
    for r, ex in enumerate(examples):
        ids = torch.tensor(ex.prompt.input_ids)
        positions = (ids == model.placeholder).nonzero().flatten().tolist() + [len(ex.prompt.input_ids) - 1]
        rows += [r] * len(positions)
        cols += positions
    return hidden[torch.tensor(rows), torch.tensor(cols)]


def item_head_loss(model: ItemTokenLM, examples: list[ItemExample], soft=None) -> torch.Tensor:
    scores = model.item_tokens.score(prediction_states(model, examples, soft))
    return nn.functional.cross_entropy(scores, torch.tensor([t for e in examples for t in e.targets]))


def label_logits(model: ItemTokenLM, examples: list[ItemExample], label_ids: list[int], soft=None) -> torch.Tensor:
    """(batch, candidates) next-token logits of the candidate letters at each prompt's answer position."""
    hidden = model.hidden([e.prompt for e in examples], soft)
    last = torch.tensor([len(e.prompt.input_ids) - 1 for e in examples])
    states = hidden[torch.arange(len(examples)), last]
    logits = model.lm_head(states.to(model.lm_head.weight.dtype)).float()
    return logits[:, torch.tensor(label_ids[: len(examples[0].prompt.labels)])]


def label_head_loss(model: ItemTokenLM, examples: list[ItemExample], label_ids: list[int], soft=None) -> torch.Tensor:
    logits = label_logits(model, examples, label_ids, soft)
    return nn.functional.cross_entropy(logits, torch.tensor([e.targets[0] for e in examples]))


def _save_checkpoint(out: Path, step: int, model: ItemTokenLM, optim, sched, losses, keep: int | None) -> None:
    folder = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"step": step, "trainable": trainable, "optim": optim.state_dict(), "sched": sched.state_dict(),
                "losses": losses}, tmp / STATE_FILE)  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # a checkpoint folder exists only once complete
    if keep:
        older = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]
        for stale in older:
            shutil.rmtree(stale)


@dataclass
class ItemRun:
    """What every item-token training run (SFT, DPO) builds before its examples: data, features, model, prompts."""

    ds: object
    split_result: object
    features: object
    loaded: object
    builder: PromptBuilder
    index: dict


def prepare_run(cfg: TrainConfig, kind: str, loaded=None) -> ItemRun:
    ds = load_dataset(cfg.data, images_dir=cfg.images)
    split_result = split_dataset(ds)
    features = build_item_features(
        ds, split_result, cfg.item_token_sources, split=cfg.split, seed=cfg.seed, text_encoder=cfg.text_encoder,
        max_text_chars=cfg.max_text_chars, on_bad_image=cfg.on_bad_image, max_image_pixels=cfg.max_image_pixels,
    )  # fmt: skip
    loaded = loaded or load_base(cfg)
    # Written before the layer cut: the adapter records the full base model (num_layers is item-token config).
    write_adapter_metadata(cfg.output_dir, loaded, kind=kind, template=cfg.template, head=cfg.head)
    builder = PromptBuilder.from_options(loaded.tokenizer, cfg.template, cfg, 1, item_tokens=True)
    index = {item: k for k, item in enumerate(features.item_ids)}
    return ItemRun(ds, split_result, features, loaded, builder, index)


def build_model(cfg: TrainConfig, run: ItemRun, adapter: str | None = None) -> ItemTokenLM:
    """The cut base model with LoRA (new, or `adapter`'s weights, trainable) and the item tokens (new, or the
    adapter's, after checking they were trained on these feature tables)."""
    keep_first_layers(run.loaded.model, cfg.num_layers)
    torch.manual_seed(derive_seed(cfg.seed, "item-tokens", "init"))
    hidden_size = run.loaded.model.get_input_embeddings().weight.shape[1]
    item_tokens = ItemTokens(run.features.item_ids, run.features.tables, hidden_size, has_image=run.features.has_image)
    if adapter:
        check_fingerprints(adapter, read_item_token_config(adapter)["fingerprints"], item_tokens)
        item_tokens.load(adapter)
    elif cfg.projector:  # LLaVA's stage (b): the image projector starts from the aligned one (mmrec train align)
        from mmrec_gen.train.projector import load_aligned_projector

        load_aligned_projector(item_tokens, cfg.projector, run.loaded.model)
    llm = peft_model(cfg, run.loaded)
    autocast = run.loaded.dtype == "float32" and _fast_bf16()
    return ItemTokenLM(llm, item_tokens, run.builder.item_token_id, run.loaded.tokenizer.pad_token_id, autocast)


def hybrid_share(cfg: TrainConfig, step: int, steps: int) -> float:
    """LLaRA's curriculum: the share of prompts whose item slots carry their soft tokens ramps linearly from 0 to 1
    over the first `curriculum` fraction of the steps (0: every prompt is hybrid from the start)."""
    ramp = cfg.curriculum * steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def train_loop(cfg: TrainConfig, model: ItemTokenLM, examples: list, loss_fn, resume_from: str | None, tag: str):
    """AdamW over the trainable parameters, `loss_fn(model, batch, soft)` per micro-batch (soft: per example,
    whether its slots carry soft tokens); checkpoints every --save-steps; returns (steps, losses, tokens, loop_s)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, int(cfg.num_train_epochs * len(examples) / per_step))
    warmup = int(cfg.warmup_steps * steps) if cfg.warmup_steps < 1 else int(cfg.warmup_steps)
    from transformers import get_scheduler

    sched = get_scheduler(cfg.lr_scheduler_type, optim, num_warmup_steps=warmup, num_training_steps=steps)
    out = Path(cfg.output_dir)
    start_step, losses = 0, []
    if resume_from:
        state = torch.load(Path(resume_from) / STATE_FILE, weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start_step, losses = state["step"], state["losses"]
        logger.info("resumed at step %d from %s", start_step, resume_from)

    model.train()
    bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", disable=not cfg.progress)
    tokens = 0
    loop_start = time.time()
    for step in range(start_step + 1, steps + 1):
        rng = rng_for(cfg.seed, tag, "step", step)
        torch.manual_seed(derive_seed(cfg.seed, tag, "dropout", step))
        chosen = rng.choice(len(examples), size=min(per_step, len(examples)), replace=False)
        soft = rng.random(len(chosen)) < hybrid_share(cfg, step, steps)
        optim.zero_grad()
        total = 0.0
        for start in range(0, len(chosen), cfg.per_device_train_batch_size):
            stop = start + cfg.per_device_train_batch_size
            batch = [examples[i] for i in chosen[start:stop]]
            tokens += sum(len(e.prompt.input_ids) for e in batch)
            loss = loss_fn(model, batch, soft[start:stop].tolist())
            (loss * len(batch) / len(chosen)).backward()
            total += loss.item() * len(batch) / len(chosen)
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optim.step()
        sched.step()
        losses.append(round(total, 5))
        bar.update(1)
        if step % int(cfg.logging_steps) == 0 or step == steps:
            logger.info("step %d/%d loss %.4f (mean of last %d: %.4f)", step, steps, total, int(cfg.logging_steps),
                        float(np.mean(losses[-int(cfg.logging_steps):])))  # fmt: skip
        if step % int(cfg.save_steps) == 0 and step < steps:
            _save_checkpoint(out, step, model, optim, sched, losses, cfg.save_total_limit)
    bar.close()
    return steps, losses, tokens, time.time() - loop_start


def save_run(cfg: TrainConfig, run: ItemRun, model: ItemTokenLM, kind: str, summary: dict) -> dict:
    """Write the adapter folder (LoRA, item tokens, their config) and train_summary.json; drop the checkpoints."""
    out = Path(cfg.output_dir)
    model.llm.save_pretrained(str(out))
    model.item_tokens.save(out)
    write_item_token_config(
        out, head=cfg.head, sources=cfg.item_token_sources, template=cfg.template, num_layers=cfg.num_layers,
        split=cfg.split, seed=cfg.seed, text_encoder=cfg.text_encoder, max_history=cfg.max_history,
        max_model_len=cfg.max_model_len, max_text_chars=cfg.max_text_chars, num_candidates=cfg.num_candidates,
        items=len(run.features.item_ids), fingerprints=model.item_tokens.fingerprints(),
    )  # fmt: skip
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    summary = {"kind": kind, "path": f"item-tokens/{cfg.head}", "model": run.loaded.name,
               "sources": cfg.item_token_sources, **summary}  # fmt: skip
    if run.features.image_report is not None:  # every bad image file (the log names the first 3)
        summary["images"] = run.features.image_report
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("adapter saved to %s: %s", out, json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return {k: v for k, v in summary.items() if k != "losses"}


def loop_summary(examples: list, dropped: int, steps: int, per_step: int, losses: list, tokens: int, loop_s: float,
                 started: float, cpu_started: float, resume_from: str | None) -> dict:  # fmt: skip
    return {
        "examples": len(examples), "dropped": dropped, "steps": steps, "windows_per_step": per_step,
        "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "prompt_tokens_per_s": round(tokens / loop_s, 1) if loop_s else None, "train_loop_s": round(loop_s, 1),
        "wall_s": round(time.time() - started, 1), "cpu_s": round(_cpu_seconds() - cpu_started, 1),
        "resumed_from": resume_from, "losses": losses,
    }  # fmt: skip


def run_item_sft(cfg: TrainConfig, loaded=None) -> dict:
    """Train LoRA + projectors + head; write the adapter folder (see module docstring); return the summary."""
    started, cpu_started = time.time(), _cpu_seconds()
    resume_from = check_resume(cfg, "sft")
    run = prepare_run(cfg, "sft", loaded)
    if cfg.head == "items":
        examples, dropped = item_head_examples(cfg, run.ds, run.split_result, run.builder, run.index)
        loss_fn = item_head_loss
    else:
        examples, dropped = label_head_examples(cfg, run.ds, run.split_result, run.builder)
        label_ids = label_token_ids(run.loaded.tokenizer, [chr(ord("A") + k) for k in range(cfg.num_candidates)])

        def loss_fn(model, batch, soft):
            return label_head_loss(model, batch, label_ids, soft)

    if not examples:
        raise ValueError(f"{cfg.data}: no training example (every window was dropped or no user has 2 train items)")
    logger.info("%d training examples (%d dropped) for the %s head", len(examples), dropped, cfg.head)
    model = build_model(cfg, run)
    steps, losses, tokens, loop_s = train_loop(cfg, model, examples, loss_fn, resume_from, "item-sft")
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return save_run(cfg, run, model, "sft", loop_summary(
        examples, dropped, steps, per_step, losses, tokens, loop_s, started, cpu_started, resume_from))  # fmt: skip


def _fast_bf16() -> bool:
    from mmrec_gen.models.loading import cpu_has_fast_bf16

    return not torch.cuda.is_available() and cpu_has_fast_bf16()
