"""`mmrec train dpo --adapter DIR` where DIR is an item-token model: S-DPO over its scores, through the Trainer.

S-DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for Recommendation") prefers the chosen item
over k rejected ones: -log sigmoid(-log sum_r exp(beta * (margin_r - margin_c))), margin = log pi - log pi_ref.
Both heads give a softmax policy over items, and its normaliser cancels inside each margin difference, so the raw
scores serve as log-probabilities (`train.fast.sdpo_loss`):

- `--head items`: at every prediction position of a train window (each history slot and the answer, as in SFT),
  the chosen item is the next one and the rejected ones are `--num-negatives` catalogue items the user never
  interacted with (seeded per user and window); scores are the head's `head(h) . item_token(i)`.
- `--head labels`: the chosen answer is the held-out item's letter, the rejected ones `--num-negatives` other
  candidates' letters; scores are the letters' logits.

As in TRL's DPOTrainer, the reference scores are computed once before training, with the starting model (LoRA,
projectors, head), and `beta` weighs the margins. The head, template, layer cut, seed and prompt budgets are the
adapter's (its config.json), so the command needs only --data, --adapter and --output-dir; the result is an
item-token adapter like SFT's, on the same base model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from mmrec_gen.data.candidates import sample_excluding
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.adapters import write_adapter_metadata
from mmrec_gen.models.item_rec_io import load_item_rec, read_item_rec_config
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.train.config import DPOTrainConfig
from mmrec_gen.train.fast import sdpo_loss
from mmrec_gen.train.item_data import ItemRecCollator, item_head_examples, label_head_examples, training_rows
from mmrec_gen.train.item_rec_trainer import (
    ItemRecTrainer,
    ItemRun,
    item_training_args,
    ranking_metrics,
    save_item_run,
    validation_rows,
)
from mmrec_gen.train.trainers import _cpu_seconds, check_resume, load_base

logger = logging.getLogger(__name__)

# What an item-token model fixes for every run on top of it (cfg field <- config.recipe key).
ADAPTER_OPTIONS = ("template", "split", "seed", "text_encoder", "max_history", "max_model_len", "max_text_chars",
                   "num_candidates")  # fmt: skip


def adopt_adapter_options(cfg: DPOTrainConfig, config) -> None:
    """Set the run's head, sources, template, layers, seed and prompt budgets to the adapter's (logging changes)."""
    wanted = {k: config.recipe[k] for k in ADAPTER_OPTIONS if k in config.recipe}
    wanted.update(
        head=config.head, num_layers=config.text_config.num_hidden_layers, item_tokens=",".join(config.sources)
    )
    if cfg.item_tokens and cfg.item_token_sources != config.sources:
        raise ValueError(
            f"{cfg.adapter}: its item tokens are {','.join(config.sources)}, not --item-tokens {cfg.item_tokens}; "
            "DPO continues the adapter with its own sources (drop --item-tokens)"
        )
    if cfg.curriculum:
        raise ValueError("--curriculum applies to SFT from scratch; DPO starts from an adapter that has item tokens")
    changed = {k: v for k, v in wanted.items() if getattr(cfg, k) != v}
    for key, value in changed.items():
        setattr(cfg, key, value)
    if changed:
        logger.info("item-token adapter %s: DPO runs with its options %s", cfg.adapter, changed)


def item_preferences(cfg: DPOTrainConfig, split_result, rows: list[dict], users: Sequence[str], index: dict) -> None:
    """Per prediction position of each row: the chosen catalogue row (its target) and --num-negatives items the user
    never interacted with (seeded per user and row), as the row's `columns` (positions, 1 + k)."""
    seen: dict[str, np.ndarray] = {}
    for k, (row, user) in enumerate(zip(rows, users, strict=True)):
        if user not in seen:
            items = {i.item_id for i in split_result.users[user].train}
            seen[user] = np.array(sorted(index[i] for i in items), dtype=np.int64)
        rng = rng_for(cfg.seed, "item-dpo", "negatives", user, k)
        negatives = np.stack(
            [sample_excluding(rng, len(index), seen[user], cfg.num_negatives) for _ in row["targets"]]
        )
        row["columns"] = np.concatenate([np.array(row["targets"])[:, None], negatives], axis=1).tolist()


def label_preferences(cfg: DPOTrainConfig, rows: list[dict]) -> None:
    for k, row in enumerate(rows):
        target = row["candidate_label"]
        rng = rng_for(cfg.seed, "item-dpo", "labels", k)
        others = rng.choice(
            [i for i in range(cfg.num_candidates) if i != target], size=cfg.num_negatives, replace=False
        )
        row["columns"] = [[target, *others.tolist()]]


class PreferenceCollator(ItemRecCollator):
    """ItemRecCollator's batch, with each row's scored columns (and reference scores) in place of its SFT labels."""

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        if "columns" not in features[0]:  # evaluation rows: ranked as in SFT
            return batch
        if "item_labels" in batch:
            batch["score_positions"] = batch.pop("item_labels") != -100
        batch.pop("candidate_labels", None)
        batch["position_candidates"] = torch.as_tensor([c for f in features for c in f["columns"]], dtype=torch.long)
        if "reference" in features[0]:
            batch["reference"] = torch.as_tensor([r for f in features for r in f["reference"]], dtype=torch.float32)
        return batch


def preference_scores(model, inputs: dict) -> torch.Tensor:
    """(positions, 1 + k) scores of the batch's columns under `model` as it is now."""
    inputs = {k: v for k, v in inputs.items() if k != "reference"}
    if "label_token_ids" in inputs:  # labels head: the letters' logits at the answer position
        columns = inputs.pop("position_candidates")
        scores = model(**inputs).item_scores
        return scores.gather(-1, columns)
    return model(**inputs).position_scores


class ItemRecDPOTrainer(ItemRecTrainer):
    def __init__(self, *args, beta: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "position_candidates" not in inputs:  # evaluation on the valid split: the model's own scores and loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.prompt_tokens += int(inputs["attention_mask"].sum())
        scores = preference_scores(model, inputs)
        reference = inputs["reference"].to(scores.device)
        loss = sdpo_loss(scores[:, 0], scores[:, 1:], reference[:, 0], reference[:, 1:], self.beta)
        if model.training and not torch.isfinite(loss.detach()):
            from mmrec_gen.train.trainers import NonFiniteLossError

            raise NonFiniteLossError(
                f"training diverged at step {self.state.global_step + 1}: the S-DPO loss is {loss.item()}; nothing is "
                "saved from this run. Lower --learning-rate or --beta"
            )
        return (loss, scores) if return_outputs else loss


@torch.no_grad()
def add_reference(model, rows: list[dict], collator: PreferenceCollator, batch_size: int) -> None:
    """Each row's `reference`: the starting model's scores of its columns (TRL's precompute_ref_log_probs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        scores = preference_scores(model, batch).float().cpu()
        sizes = [len(r["columns"]) for r in chunk]
        for row, ref in zip(chunk, torch.split(scores, sizes), strict=True):
            row["reference"] = ref.tolist()
    model.train(was_training)


def run_item_dpo(cfg: DPOTrainConfig, loaded=None, callbacks=()) -> dict:
    """S-DPO on top of an item-token adapter (see module docstring); writes a new adapter folder."""
    started, cpu_started = time.time(), _cpu_seconds()
    config = read_item_rec_config(cfg.adapter)
    adopt_adapter_options(cfg, config)
    if config.base_model and cfg.model != config.base_model:
        logger.info("item-token adapter %s: DPO runs on its base model %s", cfg.adapter, config.base_model)
        cfg.model = config.base_model
    # Every check that can refuse the run comes before the output folder is touched.
    ds = load_dataset(cfg.data, images_dir=cfg.images)
    split_result = split_dataset(ds)
    index = {item: k for k, item in enumerate(config.item_ids)}
    unknown = [i for i in ds.items if i not in index]
    if unknown or len(index) != len(ds.items):
        raise ValueError(f"{cfg.adapter}: trained on a catalogue of {len(index)} items, {cfg.data} has "
                         f"{len(ds.items)}; run DPO on the data the adapter was trained on")  # fmt: skip
    loaded = loaded or load_base(cfg)
    from mmrec_gen.models.adapters import check_adapter

    check_adapter(cfg.adapter, loaded, max_lora_rank=1 << 30)
    resume_from = check_resume(cfg, "dpo")
    model_loaded = load_item_rec(cfg.adapter, dtype=cfg.dtype, base=loaded, trainable=True)
    write_adapter_metadata(cfg.output_dir, loaded, kind="dpo", template=cfg.template, head=cfg.head)
    builder = PromptBuilder.from_options(loaded.tokenizer, cfg.template, cfg, 1, item_tokens=True)
    run = ItemRun(ds, split_result, None, model_loaded, builder, index)
    if cfg.head == "items":
        examples, dropped = item_head_examples(cfg, ds, split_result, builder, index)
        rows = training_rows(examples, "items", index)
        item_preferences(cfg, split_result, rows, [e.user for e in examples], index)
        letters = None
    else:
        examples, dropped = label_head_examples(cfg, ds, split_result, builder)
        rows = training_rows(examples, "labels", index)
        label_preferences(cfg, rows)
        letters = label_token_ids(loaded.tokenizer, [chr(ord("A") + k) for k in range(cfg.num_candidates)])
    if not rows:
        raise ValueError(f"{cfg.data}: no training example (every window was dropped or no user has 2 train items)")
    collator = PreferenceCollator(loaded.tokenizer.pad_token_id, builder.item_token_id, letters)
    reference_started = time.time()
    add_reference(model_loaded.model, rows, collator, cfg.per_device_train_batch_size)
    logger.info("%d preference prompts (%d dropped), %d negatives each, reference scored in %.0f s",
                len(rows), dropped, cfg.num_negatives, time.time() - reference_started)  # fmt: skip
    eval_rows = validation_rows(cfg, run) if str(cfg.eval_strategy) not in ("no", "IntervalStrategy.NO") else None
    trainer = ItemRecDPOTrainer(
        model=model_loaded.model,
        args=item_training_args(cfg, run),
        train_dataset=rows,
        eval_dataset=eval_rows,
        data_collator=collator,
        compute_metrics=ranking_metrics if eval_rows else None,
        callbacks=list(callbacks),
        beta=cfg.beta,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    summary = {"examples": len(rows), "dropped": dropped, "beta": cfg.beta, "from_adapter": cfg.adapter}
    return save_item_run(cfg, run, trainer, "dpo", summary, started, cpu_started, resume_from)
