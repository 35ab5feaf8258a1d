"""`mmrec train dpo --adapter DIR` where DIR is an item-token adapter: S-DPO over the head's candidate scores.

S-DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for Recommendation") prefers the chosen item
over k rejected ones: -log sigmoid(-log sum_r exp(beta * (margin_r - margin_c))), margin = log pi - log pi_ref.
Both heads give a softmax policy over items, and its normaliser cancels inside each margin difference, so the raw
scores serve as log-probabilities:

- `--head items`: at every prediction position of a train window (each history slot and the answer, as in SFT),
  the chosen item is the next one and the rejected ones are `--num-negatives` catalogue items the user never
  interacted with (seeded per user and window); scores are the head's `head(h) . item_token(i)`.
- `--head labels`: the chosen answer is the held-out item's letter, the rejected ones `--num-negatives` other
  candidates' letters; scores are the letters' next-token logits.

The reference is the starting adapter (LoRA, projectors and head), scored once before training. The head, item-token
sources, template, layer cut and prompt budgets are the adapter's (read from its mmrec_item_tokens.json), so the
command needs only --data, --adapter and --output-dir; the new folder is an adapter `mmrec rank` reads the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from mmrec_gen.data.candidates import sample_excluding
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.models.item_tokens import read_item_token_config
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.train.config import DPOTrainConfig
from mmrec_gen.train.fast import sdpo_loss
from mmrec_gen.train.item_trainer import (
    ItemExample,
    ItemTokenLM,
    build_model,
    item_head_examples,
    label_head_examples,
    label_logits,
    loop_summary,
    prediction_states,
    prepare_run,
    save_run,
    train_loop,
)
from mmrec_gen.train.trainers import _cpu_seconds, check_resume

logger = logging.getLogger(__name__)

# What an item-token adapter fixes for every run on top of it (cfg field <- mmrec_item_tokens.json key).
ADAPTER_OPTIONS = {
    "head": "head", "template": "template", "num_layers": "num_layers", "split": "split", "seed": "seed",
    "text_encoder": "text_encoder", "max_history": "max_history", "max_model_len": "max_model_len",
    "max_text_chars": "max_text_chars", "num_candidates": "num_candidates",
}  # fmt: skip


@dataclass
class Preference:
    """One prompt with, per prediction position, the chosen item (column 0) and the rejected ones, as indices into
    the scored items (catalogue rows for the items head, candidate positions for the labels head), and the
    reference model's scores of those columns."""

    prompt: object
    columns: torch.Tensor  # (positions, 1 + k) long
    reference: torch.Tensor | None = None  # (positions, 1 + k) float


def adopt_adapter_options(cfg: DPOTrainConfig, config: dict) -> None:
    """Set the run's head, sources, template, layers, seed and prompt budgets to the adapter's (logging changes)."""
    changed = {}
    wanted = {field: config[key] for field, key in ADAPTER_OPTIONS.items() if key in config}
    wanted["item_tokens"] = ",".join(config["sources"])
    if cfg.item_tokens and cfg.item_token_sources != config["sources"]:
        raise ValueError(
            f"{cfg.adapter}: its item tokens are {','.join(config['sources'])}, not --item-tokens {cfg.item_tokens}; "
            "DPO continues the adapter with its own sources (drop --item-tokens)"
        )
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            changed[field] = value
            setattr(cfg, field, value)
    if cfg.curriculum:
        raise ValueError("--curriculum applies to SFT from scratch; DPO starts from an adapter that has item tokens")
    if changed:
        logger.info("item-token adapter %s: DPO runs with its options %s", cfg.adapter, changed)


def _negatives(rng, n_items: int, excluded: np.ndarray, k: int, count: int) -> np.ndarray:
    return np.stack([sample_excluding(rng, n_items, excluded, k) for _ in range(count)])


def item_preferences(cfg: DPOTrainConfig, run, examples: list[ItemExample]) -> list[Preference]:
    n_items = len(run.index)
    seen: dict[str, np.ndarray] = {}
    out = []
    for k, ex in enumerate(examples):
        if ex.user not in seen:
            items = {i.item_id for i in run.split_result.users[ex.user].train}
            seen[ex.user] = np.array(sorted(run.index[i] for i in items), dtype=np.int64)
        rng = rng_for(cfg.seed, "item-dpo", "negatives", ex.user, k)
        negatives = _negatives(rng, n_items, seen[ex.user], cfg.num_negatives, len(ex.targets))
        columns = np.concatenate([np.array(ex.targets)[:, None], negatives], axis=1)
        out.append(Preference(ex.prompt, torch.as_tensor(columns)))
    return out


def label_preferences(cfg: DPOTrainConfig, examples: list[ItemExample]) -> list[Preference]:
    out = []
    for k, ex in enumerate(examples):
        target, n = ex.targets[0], len(ex.prompt.labels)
        rng = rng_for(cfg.seed, "item-dpo", "labels", k)
        others = rng.choice([i for i in range(n) if i != target], size=cfg.num_negatives, replace=False)
        out.append(Preference(ex.prompt, torch.as_tensor([[target, *others]])))
    return out


def preference_scores(model: ItemTokenLM, batch: list[Preference], label_ids: list[int]) -> torch.Tensor:
    """(sum of positions, 1 + k) scores of each preference's columns under the model as it is now."""
    examples = [ItemExample(p.prompt, []) for p in batch]
    columns = torch.cat([p.columns for p in batch])
    if label_ids:
        scores = label_logits(model, examples, label_ids)
    else:
        scores = model.item_tokens.score(prediction_states(model, examples))
    return scores.gather(-1, columns)


@torch.no_grad()
def add_reference(model: ItemTokenLM, prefs: list[Preference], label_ids: list[int], batch_size: int) -> None:
    was_training = model.training
    model.eval()
    for start in range(0, len(prefs), batch_size):
        batch = prefs[start : start + batch_size]
        scores = preference_scores(model, batch, label_ids)
        sizes = [len(p.columns) for p in batch]
        for pref, ref in zip(batch, torch.split(scores, sizes), strict=True):
            pref.reference = ref.float().clone()
    model.train(was_training)


def run_item_dpo(cfg: DPOTrainConfig, loaded=None) -> dict:
    """S-DPO on top of an item-token adapter (see module docstring); writes a new adapter folder."""
    started, cpu_started = time.time(), _cpu_seconds()
    config = read_item_token_config(cfg.adapter)
    if config is None:
        raise ValueError(f"{cfg.adapter}: not an item-token adapter (no mmrec_item_tokens.json)")
    adopt_adapter_options(cfg, config)
    resume_from = check_resume(cfg, "dpo")
    run = prepare_run(cfg, "dpo", loaded)
    if cfg.head == "items":
        examples, dropped = item_head_examples(cfg, run.ds, run.split_result, run.builder, run.index)
        prefs, label_ids = item_preferences(cfg, run, examples), []
    else:
        examples, dropped = label_head_examples(cfg, run.ds, run.split_result, run.builder)
        prefs = label_preferences(cfg, examples)
        label_ids = label_token_ids(run.loaded.tokenizer, [chr(ord("A") + k) for k in range(cfg.num_candidates)])
    if not prefs:
        raise ValueError(f"{cfg.data}: no training example (every window was dropped or no user has 2 train items)")
    model = build_model(cfg, run, adapter=cfg.adapter)
    reference_started = time.time()
    add_reference(model, prefs, label_ids, cfg.per_device_train_batch_size)
    logger.info("%d preference prompts (%d dropped), %d negatives each, reference scored in %.0f s",
                len(prefs), dropped, cfg.num_negatives, time.time() - reference_started)  # fmt: skip

    def loss_fn(model, batch, soft):
        scores = preference_scores(model, batch, label_ids)
        reference = torch.cat([p.reference for p in batch])
        return sdpo_loss(scores[:, 0], scores[:, 1:], reference[:, 0], reference[:, 1:], cfg.beta)

    steps, losses, tokens, loop_s = train_loop(cfg, model, prefs, loss_fn, resume_from, "item-dpo")
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    summary = loop_summary(prefs, dropped, steps, per_step, losses, tokens, loop_s, started, cpu_started, resume_from)
    return save_run(cfg, run, model, "dpo", {**summary, "beta": cfg.beta, "from_adapter": cfg.adapter})
