"""`mmrec train sft|dpo`: examples -> rows -> a LoRA adapter, with TRL (general path) or the fast score path.

Output folder: checkpoint-N/ (resume points, docs/RELIABILITY.md R9), the final adapter (PEFT files + mmrec_adapter.json),
`mmrec_train_config.json` (what the run computes; a resumed run must match it) and `train_summary.json`
(row counts and drops, steps, loss, tokens/s, wall and CPU seconds).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

from mmrec_gen.data.files import check_output_dir, dumps_json
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.adapters import attach_adapter, write_adapter_metadata
from mmrec_gen.models.registry import load_model
from mmrec_gen.models.types import LoadedModel
from mmrec_gen.prompting.evidence import EXPLANATION_MAX_NEW_TOKENS
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.train.config import DPOTrainConfig, TrainConfig
from mmrec_gen.train.examples import build_examples
from mmrec_gen.train.rows import (
    RowStats,
    fast_dpo_rows,
    fast_sft_rows,
    render_examples,
    trl_dpo_rows,
    trl_sft_rows,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "mmrec_train_config.json"
SUMMARY_FILE = "train_summary.json"
# LoRA goes on the language model only: never on a vision tower or the projector of a LLaVA-style model.
_NOT_LANGUAGE_MODEL = r".*(vision_tower|vision_model|visual|multi_modal_projector|mm_projector).*"
# Module names of the projector between vision tower and language model (LLaVA, Qwen2-VL's merger, Idefics3).
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger", "connector")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def answer_budget(cfg: TrainConfig) -> int:
    """New-token budget the prompt leaves free: the same as inference in the matching mode, so the history kept
    (and hence the prompt) is identical to the one `mmrec rank` builds (R11)."""
    if cfg.target == "score" and not cfg.explanations:
        return 1
    if cfg.target == "explanation":
        return EXPLANATION_MAX_NEW_TOKENS  # mmrec explain's default --max-new-tokens
    return 3 * cfg.num_candidates + 8 + (64 if cfg.explanations else 0)


# ------------------------------------------------------------------------------------------------ divergence
class NonFiniteLossError(FloatingPointError):
    """Training diverged (a NaN or infinite loss): the run stops with the step, and nothing is saved from it."""


def non_finite_loss_callback():
    """A TrainerCallback that stops a run at the first logged loss that is NaN or infinite, naming the step."""
    import math

    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NonFiniteLossError(
                    f"training diverged by step {state.global_step}: the loss is {loss}; nothing is saved from this "
                    "run. Lower --learning-rate (or --beta for DPO), or check the data"
                )

    return StopOnNonFiniteLoss()


# ------------------------------------------------------------------------------------------------ output folder
class RunFinished(Exception):
    """--output-dir holds a finished run with this very config: there is nothing to train, and it is left as is."""

    def __init__(self, output_dir: Path, summary: dict) -> None:
        super().__init__(f"{output_dir}: a finished run with this config; left as it is (--overwrite trains again)")
        self.output_dir, self.summary = output_dir, summary


def _changed(saved: dict | None, wanted: dict) -> str:
    saved = saved or {}
    return ", ".join(sorted(k for k in set(wanted) | set(saved) if saved.get(k) != wanted.get(k)))


def _check_output_dir_holds_no_other_run(out: Path, saved: dict | None, wanted: dict) -> None:
    """Raise RunFinished or ValueError unless training may write into `out` (R9: never lose a finished run)."""
    if saved is None:
        foreign = sorted(p.name for p in out.iterdir())
        if foreign:
            raise ValueError(
                f"{out} holds files that no mmrec training run wrote ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); use a new --output-dir, or pass --overwrite to train into "
                "it anyway (mmrec's files there are replaced, other files are kept)"
            )
        return
    summary_path = out / SUMMARY_FILE
    if summary_path.exists():
        if saved == wanted:
            raise RunFinished(out, json.loads(summary_path.read_text(encoding="utf-8")))
        raise ValueError(
            f"{out} holds a finished run with another config (changed: {_changed(saved, wanted)}); use a new "
            "--output-dir, or pass --overwrite to replace it"
        )


def check_resume(cfg: TrainConfig, kind: str) -> str | None:
    """The checkpoint to resume from, or None. Refuses to resume a run whose config changed and to train over a
    finished run or another tool's files unless --overwrite (R9); a finished run of this config raises
    RunFinished."""
    import shutil

    from transformers.trainer_utils import get_last_checkpoint

    check_output_dir(cfg.output_dir)
    out = Path(cfg.output_dir)
    wanted = {"kind": kind, **cfg.fingerprint()}
    saved_path = out / CONFIG_FILE
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if saved_path.exists() else None
    if saved is not None:
        saved.pop("output_dir", None)  # recorded by earlier versions; a moved run folder is the same run
    if out.is_dir() and not cfg.overwrite:
        _check_output_dir_holds_no_other_run(out, saved, wanted)
    elif out.is_dir():  # --overwrite: start over; nothing of the old run may be resumed or reported later
        stale = [*out.glob("checkpoint-*"), out / SUMMARY_FILE]
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        logger.warning("--overwrite: training %s from the start (its checkpoints and summary are removed)", out)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last and cfg.resume:
        if saved != wanted:
            raise ValueError(
                f"{out} holds checkpoints of a run with another config (changed: {_changed(saved, wanted)}); "
                "resume with the same options, pass --resume false to start over there, or use a new --output-dir"
            )
        logger.info("resuming from %s", last)
    elif last:  # --resume false: start over, so that no stale checkpoint is resumed later
        for stale_checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(stale_checkpoint)
        logger.warning("--resume false: removed the checkpoints in %s, training from the start", out)
    out.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(dumps_json(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return last if cfg.resume else None


# ------------------------------------------------------------------------------------------------ model
def load_base(cfg: TrainConfig) -> LoadedModel:
    kwargs = {}
    if cfg.quantization == "4bit":
        import importlib.util

        import torch

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise ValueError(
                "--quantization 4bit (QLoRA) needs the bitsandbytes package and a CUDA GPU; "
                "use --quantization none on this machine"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return load_model(cfg.model, dtype=cfg.dtype, **kwargs)


def peft_model(cfg: TrainConfig, loaded: LoadedModel):
    """The base model with a new LoRA adapter, or with --adapter loaded trainable (checked, R12)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if cfg.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.adapter:
        # A serving limit does not apply to an adapter we keep training.
        model = attach_adapter(loaded, cfg.adapter, trainable=True, max_lora_rank=1 << 30)
    else:
        import re

        targets = cfg.lora_target_modules
        has_vision = any(re.fullmatch(_NOT_LANGUAGE_MODEL, name) for name, _ in model.named_modules())
        if targets == ["all-linear"] and cfg.lora_last_layers is not None:
            # PEFT takes a layer subset only with explicit module names: every linear layer's name but the head.
            targets = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)
                    and ".layers." in name
                    and not re.fullmatch(_NOT_LANGUAGE_MODEL, name)
                }
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets[0] if targets == ["all-linear"] else targets,
                exclude_modules=_NOT_LANGUAGE_MODEL if has_vision else None,
                layers_to_transform=_last_layers(model, cfg.lora_last_layers),
                task_type="CAUSAL_LM",
                # LLaVA's stage 2 also trains the projector: a full trainable copy, saved with the adapter.
                modules_to_save=_projector_modules(model) if cfg.train_projector else None,
            ),
        )
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA: %.2fM trainable parameters of %.1fM", trainable / 1e6, loaded.num_parameters / 1e6)
    return model


def _projector_modules(model) -> list[str]:
    """The multi-modal projector of a vision-language model, by its module name (LLaVA, Qwen2-VL, Idefics3)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [n for n in _PROJECTOR_NAMES if n in names]
    if not found:
        raise ValueError(
            f"--train-projector: {type(model).__name__} has no multi-modal projector module (looked for "
            f"{', '.join(_PROJECTOR_NAMES)}); it is for vision-language models"
        )
    return found


def _last_layers(model, n: int | None) -> list[int] | None:
    if n is None:
        return None
    config = model.get_text_config() if hasattr(model, "get_text_config") else model.config
    total = config.num_hidden_layers
    if not 1 <= n <= total:
        raise ValueError(f"--lora-last-layers must be between 1 and {total} (the model's layers), got {n}")
    return list(range(total - n, total))


def training_arguments(cfg: TrainConfig, loaded: LoadedModel, **extra):
    """The config itself (it is a TRL SFTConfig / DPOConfig) with the choices that depend on the loaded model and
    the machine filled in, plus the path-specific `extra` options."""
    import dataclasses

    import torch

    return dataclasses.replace(
        cfg,
        save_strategy="steps",
        data_seed=cfg.seed,
        # bf16 exactly when the model was loaded in bf16 (dtype auto picks it where the hardware is fast).
        bf16=loaded.dtype == "bfloat16",
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not cfg.progress,
        dataloader_num_workers=0,
        **extra,
    )


# ------------------------------------------------------------------------------------------------ runs
def _examples(cfg: TrainConfig, loaded: LoadedModel, stats: RowStats):
    ds = load_dataset(cfg.data, images_dir=cfg.images)
    split_result = split_dataset(ds)
    examples = build_examples(
        ds,
        split_result,
        seed=cfg.seed,
        num_candidates=cfg.num_candidates,
        windows_per_user=cfg.windows_per_user,
        min_history=cfg.min_history,
        max_examples=cfg.max_examples,
        max_users=cfg.max_users,
    )
    if not examples:
        raise ValueError(
            f"{cfg.data}: no training example (every user's train sequence is shorter than "
            f"--min-history {cfg.min_history} + 1); lower --min-history"
        )
    builder = PromptBuilder.from_options(loaded.tokenizer, cfg.template, cfg, answer_budget(cfg))
    task = "explain" if cfg.target == "explanation" else "rank"
    if builder.spec.task != task:
        raise ValueError(
            f"--template {cfg.template!r} is a {builder.spec.task!r} template; --target {cfg.target} needs a {task} one"
        )
    if "demos" in builder.spec.required_fields:
        raise ValueError(f"--template {cfg.template!r} is few-shot; train with the zero-shot rank_listwise")
    rendered = render_examples(builder, ds, examples, stats)
    logger.info("%d training examples from %d users", len(rendered), len({e.user_id for e in examples}))
    return ds, rendered


def chat_prompt_len(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat prompt (with the assistant prefix) that TRL builds from `messages`."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _drop_overlong(rows: list[dict], tokenizer, max_length: int, stats: RowStats, keys: tuple[str, ...]) -> list:
    """TRL truncates a row longer than max_length and then silently drops a row whose completion was cut away:
    drop those rows here instead, and count them."""
    kept = []
    for row in rows:
        answer_len = max(
            len(tokenizer.encode(m["content"], add_special_tokens=False)) + 4 for k in keys for m in row[k]
        )  # + 4: the end-of-turn tokens the chat template adds after the answer
        if chat_prompt_len(tokenizer, row["prompt"]) + answer_len > max_length:
            stats.dropped["completion_truncated"] += 1
            logger.warning("training row dropped: its answer would be truncated at max_length %d", max_length)
        else:
            kept.append(row)
    return kept


def prompt_tokens(rows: list[dict], tokenizer) -> int:
    """Prompt tokens of the rows (fast-path ids, or TRL prompts tokenised as TRL does)."""
    if rows and "input_ids" in rows[0]:
        return sum(len(r["input_ids"]) for r in rows)
    return sum(chat_prompt_len(tokenizer, r["prompt"]) for r in rows)


def _finish(cfg, kind, trainer, loaded, model, stats, rows, path, started, cpu_started, resumed_from) -> dict:
    trainer.save_model(cfg.output_dir)
    write_adapter_metadata(
        cfg.output_dir, loaded, kind=kind, template=cfg.template, target=cfg.target, lora_r=cfg.lora_r
    )
    history = [h for h in trainer.state.log_history if "loss" in h]
    epochs = trainer.state.epoch or 0.0
    wall = time.time() - started
    train_runtime = next(
        (h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), wall
    )
    tokens = prompt_tokens(rows, loaded.tokenizer) * epochs
    summary = {
        "kind": kind,
        "path": path,
        "model": loaded.name,
        "rows": len(rows),
        **stats.as_dict(),
        "steps": trainer.state.global_step,
        "epochs": round(epochs, 4),
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "prompt_tokens_per_s": round(tokens / train_runtime, 1) if train_runtime else None,
        "train_runtime_s": round(train_runtime, 1),
        "wall_s": round(wall, 1),
        "cpu_s": round(_cpu_seconds() - cpu_started, 1),
        "resumed_from": resumed_from,
    }
    Path(cfg.output_dir, SUMMARY_FILE).write_text(dumps_json(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("adapter saved to %s: %s", cfg.output_dir, dumps_json(summary))
    return summary


def _train(kind: str, cfg: TrainConfig, loaded: LoadedModel | None, callbacks, make_trainer) -> dict:
    """Shared by SFT and DPO: resume check, base model + LoRA, rows, train, save. `make_trainer` returns
    (trainer, rows, path) for the model and the rendered examples."""
    from transformers import set_seed

    started, cpu_started = time.time(), _cpu_seconds()
    resume_from = check_resume(cfg, kind)
    set_seed(cfg.seed)
    loaded = loaded or load_base(cfg)
    stats = RowStats()
    ds, rendered = _examples(cfg, loaded, stats)
    model = peft_model(cfg, loaded)
    trainer, rows, path = make_trainer(
        cfg, loaded, model, ds, rendered, stats, [*callbacks, non_finite_loss_callback()]
    )
    if not rows:
        raise ValueError("every training example was dropped (see the warnings above); raise --max-model-len")
    trainer.train(resume_from_checkpoint=resume_from)
    return _finish(cfg, kind, trainer, loaded, model, stats, rows, path, started, cpu_started, resume_from)


def _fast_trainer(trainer_cls, cfg, loaded, model, rows, callbacks, **kwargs):
    from datasets import Dataset as HFDataset

    from mmrec_gen.train.fast import LabelTokenCollator

    return trainer_cls(
        model=model,
        args=training_arguments(cfg, loaded, remove_unused_columns=False),
        train_dataset=HFDataset.from_list(rows),
        data_collator=LabelTokenCollator(loaded.tokenizer.pad_token_id),
        callbacks=callbacks,
        **kwargs,
    )


def _trl_trainer(trainer_cls, args, loaded, model, rows, callbacks):
    from datasets import Dataset as HFDataset

    return trainer_cls(
        model=model,
        args=args,
        train_dataset=HFDataset.from_list(rows),
        processing_class=loaded.tokenizer,
        callbacks=callbacks,
    )


def _sft_trainer(cfg, loaded, model, ds, rendered, stats, callbacks):
    if cfg.uses_fast_path:
        from mmrec_gen.train.fast import LabelTokenSFTTrainer

        rows = fast_sft_rows(loaded.tokenizer, rendered)
        return _fast_trainer(LabelTokenSFTTrainer, cfg, loaded, model, rows, callbacks), rows, "fast"
    from trl import SFTTrainer

    max_length = cfg.max_model_len + answer_budget(cfg)
    rows = trl_sft_rows(ds, rendered, target=cfg.target, explanations=cfg.explanations, seed=cfg.seed)
    rows = _drop_overlong(rows, loaded.tokenizer, max_length, stats, ("completion",))
    args = training_arguments(cfg, loaded, max_length=max_length, completion_only_loss=True)
    return _trl_trainer(SFTTrainer, args, loaded, model, rows, callbacks), rows, "trl"


def _dpo_trainer(cfg, loaded, model, ds, rendered, stats, callbacks):
    if cfg.uses_fast_path:
        from mmrec_gen.train.fast import LabelTokenDPOTrainer, reference_logps

        rows = fast_dpo_rows(loaded.tokenizer, rendered, num_negatives=cfg.num_negatives, seed=cfg.seed)
        # The reference is the starting model (the SFT adapter when --adapter is given), scored once up front.
        rows = reference_logps(model, rows, loaded.tokenizer.pad_token_id)
        trainer = _fast_trainer(LabelTokenDPOTrainer, cfg, loaded, model, rows, callbacks, beta=cfg.beta)
        return trainer, rows, "fast"
    from trl import DPOTrainer

    max_length = cfg.max_model_len + answer_budget(cfg)
    rows = trl_dpo_rows(rendered, num_negatives=cfg.num_negatives, seed=cfg.seed)
    rows = _drop_overlong(rows, loaded.tokenizer, max_length, stats, ("chosen", "rejected"))
    args = training_arguments(cfg, loaded, max_length=max_length)
    # With a PEFT model and no ref_model, TRL copies the starting adapter as the frozen reference.
    return _trl_trainer(DPOTrainer, args, loaded, model, rows, callbacks), rows, "trl"


def run_sft(cfg: TrainConfig, loaded: LoadedModel | None = None, callbacks=()) -> dict:
    """Train (or resume) an SFT adapter; returns the summary written to train_summary.json. Raises RunFinished
    when --output-dir already holds this finished run."""
    if cfg.uses_item_tokens:
        raise ValueError("item-token runs train with train.item_rec_trainer.run_item_sft (`mmrec train sft` picks it)")
    return _train("sft", cfg, loaded, callbacks, _sft_trainer)


def run_dpo(cfg: DPOTrainConfig, loaded: LoadedModel | None = None, callbacks=()) -> dict:
    """Train (or resume) a DPO adapter, by default on top of --adapter (the SFT adapter, also the reference)."""
    if cfg.target != "score" or cfg.explanations:
        raise ValueError("DPO prefers the held-out item's label over negatives' labels: use --target score")
    return _train("dpo", cfg, loaded, callbacks, _dpo_trainer)
