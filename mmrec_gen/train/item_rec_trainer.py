"""`mmrec train sft --item-tokens cf,text --head items|labels`: the item-token recommender trained by a `Trainer`.

The model is `models.item_rec.ItemRecForRanking` (the base LLM cut to `--num-layers`, plus the item tokens) with a
PEFT LoRA adapter on its decoder layers; the item tokens (projectors, head, feature tables) are PEFT
`modules_to_save`, so checkpoints, resume, `load_best_model_at_end` and the saved adapter are PEFT's and the
Trainer's. Every TrainingArguments option applies (report_to, optim, gradient_checkpointing, bf16, eval_strategy,
save_total_limit, ...); runs under `accelerate launch` as any Trainer does.

- Loss: the model's own (`ItemRecOutput.loss`): next item over the whole catalogue at every slot and the answer
  position (items head), or the answer's letter among the candidates' letters (labels head).
- Evaluation (`--eval-strategy steps|epoch`): the valid split's candidate file, HR@1 and NDCG@10 from the item
  scores (`ranking_metrics`); `--load-best-model-at-end` with `--metric-for-best-model ndcg@10` keeps the best step.
- LLaRA's curriculum (`--curriculum F`): the share of rows whose slots carry their soft tokens ramps from 0 to 1 over
  the first F of the steps (the others get zero vectors there), drawn from (seed, step).
- A non-finite loss stops the run with an error naming the step; nothing is saved from it.

The output folder: PEFT's adapter files, `config.json` (the `ItemRecConfig`: base model, layer cut, sources,
fingerprints, prompt options), the tokenizer, `mmrec_adapter.json` (the base model's fingerprint),
`trainer_state.json` (the loss and eval log) and `train_summary.json`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from mmrec_gen.data.files import dumps_json
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.adapters import write_adapter_metadata
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.recsys.item_features import build_item_features
from mmrec_gen.train.config import TrainConfig
from mmrec_gen.train.item_data import (
    ItemRecCollator,
    evaluation_rows,
    item_head_examples,
    label_head_examples,
    training_rows,
)
from mmrec_gen.train.trainers import SUMMARY_FILE, NonFiniteLossError, _cpu_seconds, check_resume, load_base

logger = logging.getLogger(__name__)

# Prompt options the model is trained with; `mmrec rank` takes them from the model (config.recipe).
RECIPE_FIELDS = ("template", "max_history", "max_model_len", "max_text_chars", "split", "seed", "text_encoder",
                 "num_candidates")  # fmt: skip


def hybrid_share(curriculum: float, step: int, steps: int) -> float:
    """LLaRA's curriculum: the share of prompts whose item slots carry their soft tokens ramps linearly from 0 to 1
    over the first `curriculum` fraction of the steps (0: every prompt is hybrid from the start)."""
    ramp = curriculum * steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def ranking_metrics(eval_pred) -> dict[str, float]:
    """HR@1 and NDCG@10 of the right candidate (`candidate_labels`) among each row's scores; ties count against it."""
    scores = np.asarray(eval_pred.predictions, dtype=np.float64)
    labels = np.asarray(eval_pred.label_ids).reshape(-1)
    right = scores[np.arange(len(labels)), labels]
    others = np.ones_like(scores, dtype=bool)
    others[np.arange(len(labels)), labels] = False
    rank = 1 + ((scores >= right[:, None]) & others).sum(-1)
    ndcg = np.where(rank <= 10, 1.0 / np.log2(rank + 1), 0.0)
    return {"hr@1": float((rank == 1).mean()), "ndcg@10": float(ndcg.mean())}


class ItemRecTrainer(Trainer):
    """The item-token recommender's trainer: the model's own loss, LLaRA's curriculum, a non-finite loss stops."""

    def __init__(self, *args, curriculum: float = 0.0, projector_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.curriculum = curriculum
        # LLaVA's tune_mm_mlp_adapter: only the (trainable) projector is in checkpoints, as in llava_trainer.py.
        self.projector_only = projector_only
        self.prompt_tokens = 0  # attended tokens of the training rows seen (tokens/s in the summary)
        # The model averages its loss over its prediction positions; the Trainer divides by accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.curriculum > 0 and model.training:
            step = self.state.global_step + 1
            share = hybrid_share(self.curriculum, step, self.state.max_steps)
            rng = rng_for(self.args.seed, "item-sft", "soft", step, self.args.process_index)
            soft = rng.random(inputs["input_ids"].shape[0]) < share
            inputs = {**inputs, "soft_mask": torch.as_tensor(soft, device=inputs["input_ids"].device)}
        if model.training:
            self.prompt_tokens += int(inputs["attention_mask"].sum())
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training and not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"training diverged at step {self.state.global_step + 1}: the loss is {loss.item()}; nothing is saved "
                "from this run. Lower --learning-rate or --max-grad-norm, or check the data and features"
            )
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not self.projector_only:
            return super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(Path(output_dir) / "model.safetensors"), metadata={"format": "pt"})

    def _issue_warnings_after_load(self, load_result) -> None:
        if not self.projector_only:  # a projector-only checkpoint lacks the frozen weights by design
            return super()._issue_warnings_after_load(load_result)
        model = self.accelerator.unwrap_model(self.model)
        missing = [k for k in load_result.missing_keys if dict(model.named_parameters()).get(k) is not None
                   and dict(model.named_parameters())[k].requires_grad]  # fmt: skip
        if missing or load_result.unexpected_keys:
            raise ValueError(
                f"checkpoint does not hold this run's projector (missing {missing[:3]}, unexpected "
                f"{load_result.unexpected_keys[:3]}); resume with the same options or start over"
            )


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class ItemRun:
    """What every item-token training run builds before its rows: data, features, base model, prompts."""

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
    # Written before the layer cut: the adapter records the full base model (the cut is in config.json).
    write_adapter_metadata(cfg.output_dir, loaded, kind=kind, template=cfg.template, head=cfg.head)
    builder = PromptBuilder.from_options(loaded.tokenizer, cfg.template, cfg, 1, item_tokens=True)
    index = {item: k for k, item in enumerate(features.item_ids)}
    return ItemRun(ds, split_result, features, loaded, builder, index)


def new_item_model(cfg: TrainConfig, run: ItemRun):
    """The cut base model with new item tokens over the run's features (seeded), as an ItemRecForRanking."""
    from mmrec_gen.models.item_rec import ItemRecForRanking, item_rec_config

    config = item_rec_config(
        run.loaded.model, item_ids=run.features.item_ids, tables=run.features.tables, num_layers=cfg.num_layers,
        item_token_id=run.builder.item_token_id, head=cfg.head, base_model=run.loaded.name,
        recipe={k: getattr(cfg, k) for k in RECIPE_FIELDS},
    )  # fmt: skip
    model = ItemRecForRanking.from_language_model(
        run.loaded.model, config, tables=run.features.tables, has_image=run.features.has_image, seed=cfg.seed
    )
    if cfg.projector:  # LLaVA's stage (b): the image projector starts from the aligned one (mmrec train align)
        from mmrec_gen.train.projector import load_aligned_projector

        load_aligned_projector(model.item_tokens, cfg.projector, run.loaded.model)
    return model


def lora_item_model(cfg: TrainConfig, model):
    """PEFT LoRA on the decoder layers' linear modules (all, or the last --lora-last-layers); the item tokens train
    in full (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    layers = len(model.model.layers)
    first = 0 if cfg.lora_last_layers is None else max(0, layers - cfg.lora_last_layers)
    names = sorted({
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
        and int(name.split(".")[2]) >= first
        and (cfg.lora_target_modules == ["all-linear"] or name.rsplit(".", 1)[-1] in cfg.lora_target_modules)
    })  # fmt: skip
    if not names:
        raise ValueError(f"--lora-target-modules {cfg.lora_target_modules} matches no linear layer of the decoder")
    peft = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=names,
            modules_to_save=["item_tokens"],
        ),
    )  # fmt: skip
    if cfg.gradient_checkpointing:
        peft.enable_input_require_grads()
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    logger.info("LoRA + item tokens: %.2fM trainable parameters", trainable / 1e6)
    return peft


def item_training_args(cfg: TrainConfig, run: ItemRun):
    """The config itself (a TrainingArguments) with what the machine and the model decide filled in (a new object:
    its devices and distributed state are set up from these values, as `trainers.training_arguments` does)."""
    import dataclasses

    from mmrec_gen.models.loading import cpu_has_fast_bf16

    on_gpu = torch.cuda.is_available()
    fp32_on_fast_cpu = not on_gpu and run.loaded.dtype == "float32" and cpu_has_fast_bf16()
    return dataclasses.replace(
        cfg,
        # bf16 autocast over fp32 master weights where the CPU has native bf16 matmuls; bf16 weights train in bf16.
        bf16=run.loaded.dtype == "bfloat16" or fp32_on_fast_cpu,
        fp16=False,
        use_cpu=not on_gpu,
        disable_tqdm=not cfg.progress,
        remove_unused_columns=False,
        label_names=["candidate_labels"],
        dataloader_num_workers=0,
        data_seed=cfg.seed,
        # The labels head leaves the item head without gradient: DDP must not wait for it.
        ddp_find_unused_parameters=True if cfg.head == "labels" else cfg.ddp_find_unused_parameters,
    )


def run_item_sft(cfg: TrainConfig, loaded=None, callbacks=()) -> dict:
    """Train LoRA + item tokens through the Trainer; write the adapter folder (module docstring); return the summary."""
    started, cpu_started = time.time(), _cpu_seconds()
    resume_from = check_resume(cfg, "sft")
    run = prepare_run(cfg, "sft", loaded)
    if cfg.head == "items":
        examples, dropped = item_head_examples(cfg, run.ds, run.split_result, run.builder, run.index)
        letters = None
    else:
        examples, dropped = label_head_examples(cfg, run.ds, run.split_result, run.builder)
        letters = label_token_ids(run.loaded.tokenizer, [chr(ord("A") + k) for k in range(cfg.num_candidates)])
    if not examples:
        raise ValueError(f"{cfg.data}: no training example (every window was dropped or no user has 2 train items)")
    logger.info("%d training examples (%d dropped) for the %s head", len(examples), dropped, cfg.head)
    rows = training_rows(examples, cfg.head, run.index)
    eval_rows = None
    if str(cfg.eval_strategy) not in ("no", "IntervalStrategy.NO"):
        eval_rows = validation_rows(cfg, run)
    model = lora_item_model(cfg, new_item_model(cfg, run))
    trainer = ItemRecTrainer(
        model=model,
        args=item_training_args(cfg, run),
        train_dataset=rows,
        eval_dataset=eval_rows,
        data_collator=ItemRecCollator(run.loaded.tokenizer.pad_token_id, run.builder.item_token_id, letters),
        compute_metrics=ranking_metrics if eval_rows else None,
        callbacks=list(callbacks),
        curriculum=cfg.curriculum,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    summary = {"examples": len(examples), "dropped": dropped, "eval_users": len(eval_rows or ())}
    return save_item_run(cfg, run, trainer, "sft", summary, started, cpu_started, resume_from)


def validation_rows(cfg: TrainConfig, run: ItemRun) -> list[dict]:
    """Evaluation rows of the valid split's candidate file (the one `mmrec rank --split valid` uses)."""
    from mmrec_gen.data.candidates import get_or_create_candidates
    from mmrec_gen.data.paths import candidates_dir

    cache = Path(cfg.cache_dir) if getattr(cfg, "cache_dir", None) else candidates_dir()
    cand = get_or_create_candidates(run.ds, run.split_result, "valid", cfg.seed, cfg.num_candidates, cache)
    rows = evaluation_rows(run.ds, run.split_result, cand, run.builder, run.index, cfg.head, cfg.eval_max_users)
    logger.info("evaluation during training: %d users of %s", len(rows), cand.path)
    return rows


def save_item_run(cfg, run: ItemRun, trainer, kind: str, summary: dict, started, cpu_started, resume_from):
    """The adapter folder: PEFT files, config.json, tokenizer, trainer_state.json, train_summary.json."""
    out = Path(cfg.output_dir)
    trainer.save_model(str(out))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return {}
    model.get_base_model().config.save_pretrained(str(out))
    run.loaded.tokenizer.save_pretrained(str(out))
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    log = trainer.state.log_history
    losses = [h for h in log if "loss" in h]
    evals = [{k: h[k] for k in ("step", "eval_hr@1", "eval_ndcg@10") if k in h} for h in log if "eval_ndcg@10" in h]
    runtime = next((h["train_runtime"] for h in reversed(log) if "train_runtime" in h), None)
    steps = trainer.state.global_step
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * trainer.accelerator.num_processes
    summary = {
        "kind": kind, "path": f"item-tokens/{cfg.head}", "model": run.loaded.name, "sources": cfg.item_token_sources,
        **summary, "steps": steps, "windows_per_step": per_step,
        "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
        "evaluations": evals, "best_step": _best_step(trainer), "best_metric": trainer.state.best_metric,
        "prompt_tokens_per_s": round(trainer.prompt_tokens / runtime, 1) if runtime else None,
        "train_runtime_s": round(runtime, 1) if runtime else None, "wall_s": round(time.time() - started, 1),
        "cpu_s": round(_cpu_seconds() - cpu_started, 1), "resumed_from": resume_from,
    }  # fmt: skip
    if (
        run.features is not None and run.features.image_report is not None
    ):  # every bad image file (the log names the first 3)
        summary["images"] = run.features.image_report
    (out / SUMMARY_FILE).write_text(dumps_json(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("adapter saved to %s: %s", out, dumps_json(summary))
    return summary


def _best_step(trainer) -> int | None:
    best = trainer.state.best_model_checkpoint
    return int(Path(best).name.split("-")[-1]) if best else None
