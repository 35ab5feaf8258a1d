"""LoRA adapters: attach with checks (R12), merge, and record which base model an adapter belongs to.

An adapter folder written by `mmrec train` holds PEFT's `adapter_config.json` + `adapter_model.safetensors` and our
`mmrec_adapter.json`: the base model's name and a fingerprint of its weights, so an adapter applied to another base
model is refused with a clear error instead of producing silent garbage. Missing or unexpected adapter keys are
errors too (PEFT only warns), and so is a LoRA rank above the serving limit (vLLM's `max_lora_rank`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

from mmrec_gen.data.files import dumps_json
from mmrec_gen.models.types import LoadedModel

logger = logging.getLogger(__name__)

METADATA_FILE = "mmrec_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_MAX_LORA_RANK = 64


def base_fingerprint(model) -> dict:
    """Architecture numbers plus a hash of the first input-embedding values (rounded to bf16, so fp32 and bf16
    loads of the same checkpoint agree)."""
    import torch

    config = model.get_text_config() if hasattr(model, "get_text_config") else model.config
    weights = model.get_input_embeddings().weight.detach().flatten()[:4096].to(torch.bfloat16).view(torch.int16)
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "embedding_sha256": hashlib.sha256(weights.cpu().numpy().tobytes()).hexdigest(),
    }


def write_adapter_metadata(adapter_dir: str | Path, loaded: LoadedModel, **extra) -> None:
    meta = {"base_model": loaded.name, "base_fingerprint": base_fingerprint(loaded.model), **extra}
    Path(adapter_dir, METADATA_FILE).write_text(dumps_json(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_adapter_metadata(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir, METADATA_FILE)
    return _json_object(path) if path.exists() else None


class AdapterFileError(ValueError):
    """A damaged or foreign file in an adapter folder; the message names the file and the fix."""


_DAMAGED = "copy the adapter folder again, or retrain it (`mmrec train sft|dpo --output-dir DIR`)"


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AdapterFileError(f"{path}: not a UTF-8 JSON file ({exc.reason}); {_DAMAGED}") from None
    except json.JSONDecodeError as exc:
        raise AdapterFileError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {_DAMAGED}"
        ) from None
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path}: holds a JSON {type(data).__name__}, expected an object; {_DAMAGED}")
    return data


def check_adapter_files(adapter_dir: str | Path) -> dict:
    """The adapter's `adapter_config.json`, after cheap checks that need no model (run when a command's options are
    parsed, so a damaged adapter fails before any model loads): the folder exists; the config is a JSON object
    naming a PEFT `peft_type`; the weights file exists and its safetensors header reads; our metadata is JSON."""
    from peft import PeftType

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json); pass the --output-dir of "
            "`mmrec train sft|dpo` or a PEFT adapter folder"
        )
    config = _json_object(config_path)
    peft_type = config.get("peft_type")
    known = [t.value for t in PeftType]
    if peft_type not in known:
        what = "has no 'peft_type'" if peft_type is None else f"has peft_type {peft_type!r}, which PEFT does not know"
        raise AdapterFileError(
            f'{config_path}: {what} (e.g. "peft_type": "LORA"); it is not a PEFT adapter config. Fix: pass a '
            "folder written by PEFT's save_pretrained (the --output-dir of `mmrec train sft|dpo`)"
        )
    weights = [adapter_dir / name for name in WEIGHT_FILES if (adapter_dir / name).is_file()]
    if not weights:
        raise AdapterFileError(
            f"{adapter_dir}: has adapter_config.json but no weights file ({' or '.join(WEIGHT_FILES)}); {_DAMAGED}"
        )
    for path in sorted(adapter_dir.glob("*.safetensors")):  # the LoRA weights and, for item tokens, theirs
        _check_safetensors(path)
    if (adapter_dir / METADATA_FILE).exists():
        _json_object(adapter_dir / METADATA_FILE)
    return config


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            n = len(list(fh.keys()))
    except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError: either way the file cannot be used
        raise AdapterFileError(f"{path}: not a readable safetensors file ({exc}); {_DAMAGED}") from None
    if n == 0:
        raise AdapterFileError(f"{path}: holds no tensors; {_DAMAGED}")


def _adapter_config(adapter_dir: Path):
    from peft import PeftConfig

    check_adapter_files(adapter_dir)
    return PeftConfig.from_pretrained(str(adapter_dir))


def check_adapter(adapter_dir: str | Path, loaded: LoadedModel, *, max_lora_rank: int = DEFAULT_MAX_LORA_RANK):
    """Raise ValueError when `adapter_dir` does not fit `loaded` (another base model, rank above the limit)."""
    adapter_dir = Path(adapter_dir)
    config = _adapter_config(adapter_dir)
    rank = max([getattr(config, "r", 0) or 0, *(getattr(config, "rank_pattern", None) or {}).values()])
    if rank > max_lora_rank:
        raise ValueError(
            f"{adapter_dir}: LoRA rank {rank} is above the serving limit {max_lora_rank} (--max-lora-rank); "
            "retrain with a smaller --lora-r, merge it into the base model (mmrec train merge), or raise the limit"
        )
    meta = read_adapter_metadata(adapter_dir)
    if meta is not None and meta.get("base_fingerprint") != base_fingerprint(loaded.model):
        raise ValueError(
            f"{adapter_dir}: this adapter was trained on base model {meta.get('base_model')!r}, not on "
            f"{loaded.name!r} (their weights differ); pass --model {meta.get('base_model')}"
        )
    return config


def attach_adapter(
    loaded: LoadedModel,
    adapter_dir: str | Path,
    *,
    trainable: bool = False,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
):
    """A PeftModel of `loaded.model` with the adapter's weights, after checking every key was loaded."""
    from peft import get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    adapter_dir = Path(adapter_dir)
    config = check_adapter(adapter_dir, loaded, max_lora_rank=max_lora_rank)
    config.inference_mode = not trainable
    try:
        model = get_peft_model(loaded.model, config)
        result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir)))
    except (RuntimeError, ValueError) as exc:  # shape mismatch: another architecture or size
        raise ValueError(f"{adapter_dir}: does not fit base model {loaded.name!r}: {exc}") from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(
            f"{adapter_dir}: the adapter file lacks {len(missing)} LoRA weights the config names "
            f"(first: {missing[0]}); the file is incomplete or from another model"
        )
    if result.unexpected_keys:
        raise ValueError(
            f"{adapter_dir}: {len(result.unexpected_keys)} adapter weights match no module of {loaded.name!r} "
            f"(first: {result.unexpected_keys[0]}); it was trained on another base model"
        )
    if not trainable:
        model.eval()
    return model


def with_adapter(
    loaded: LoadedModel, adapter_dir: str | Path, *, merge: bool = True, max_lora_rank: int = DEFAULT_MAX_LORA_RANK
) -> LoadedModel:
    """`loaded` with the adapter applied: merged into the weights (as fast as the base model) or kept as LoRA."""
    model = attach_adapter(loaded, adapter_dir, max_lora_rank=max_lora_rank)
    if merge:
        model = model.merge_and_unload()
    name = f"{loaded.name}+{Path(adapter_dir).resolve().name}"
    logger.info("applied adapter %s to %s (%s)", adapter_dir, loaded.name, "merged" if merge else "unmerged")
    return replace(loaded, name=name, model=model, path=None)
