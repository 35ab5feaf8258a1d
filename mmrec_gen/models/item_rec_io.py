"""Open an item-token recommender folder: a trained adapter (`mmrec train sft --item-tokens ... --output-dir`) or a
merged model (`mmrec train merge --out`). Both hold `config.json` of model_type `mmrec_item_rec`.

- adapter folder: PEFT's adapter files (LoRA on the decoder, the item tokens as modules_to_save) + config.json;
  the base model named in the config is loaded, cut to the config's layers, and the adapter applied (merged);
- merged folder: one plain `ItemRecForRanking.from_pretrained` folder.

Every check runs when the folder is opened and before anything slow: the config's fields and types
(`ItemRecConfig.validate`), then, once loaded, the feature tables' fingerprints and finite weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmrec_gen.models.types import LoadedModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


def item_rec_folder(path: str | Path | None) -> bool:
    """True when `path` is a folder whose config.json is an item-token model's (adapter or merged)."""
    if not path or not Path(path, CONFIG_FILE).is_file():
        return False
    try:
        data = json.loads(Path(path, CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "mmrec_item_rec"


def read_item_rec_config(path: str | Path):
    """The folder's ItemRecConfig, or a ValueError naming the file, the field and the fix."""
    from mmrec_gen.models.item_rec import ItemRecConfig

    file = Path(path, CONFIG_FILE)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not valid JSON ({exc}); copy the model folder again or retrain it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: holds a JSON {type(data).__name__}, expected an object; copy it again or retrain")
    try:
        return ItemRecConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{file}: {exc}. Fix the field, or retrain the model (mmrec train sft --output-dir)"
        ) from None


def is_adapter_folder(path: str | Path) -> bool:
    return Path(path, "adapter_config.json").is_file()


def load_item_rec(path: str | Path, *, dtype: str = "auto", base: LoadedModel | None = None, max_lora_rank: int = 64,
                  trainable: bool = False) -> LoadedModel:  # fmt: skip
    """The model of an item-token folder as a LoadedModel (adapter folders merged unless `trainable`, where the
    PEFT model is returned with its adapter trainable). `base`: the adapter's base model, already loaded."""
    import torch

    from mmrec_gen.models.item_rec import ItemRecForRanking

    path = Path(path)
    config = read_item_rec_config(path)
    if is_adapter_folder(path):
        from peft import PeftModel

        from mmrec_gen.models.adapters import check_adapter
        from mmrec_gen.models.registry import load_model

        if base is None:
            if not config.base_model:
                raise ValueError(f"{path}/{CONFIG_FILE}: names no base_model; pass --model with the base model")
            base = load_model(config.base_model, dtype=dtype)
        check_adapter(path, base, max_lora_rank=max_lora_rank)
        rec = ItemRecForRanking.from_language_model(base.model, config)
        try:
            model = PeftModel.from_pretrained(rec, str(path), is_trainable=trainable)
        except (RuntimeError, ValueError) as exc:  # a shape mismatch: another architecture or size
            raise ValueError(f"{path}: its weights do not fit its config.json ({exc}); retrain the adapter") from None
        checked = model.get_base_model()
        tokenizer = base.tokenizer
        name = f"{base.name}+{path.resolve().name}"
        if not trainable:
            model = checked = model.merge_and_unload()
        served_path = None
    else:
        model = checked = ItemRecForRanking.from_pretrained(str(path), dtype=_torch_dtype(dtype))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        name = path.resolve().name
        served_path = str(path)
    checked.item_tokens.float()
    checked.check_tables(str(path))
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}); the model "
                         "is damaged or its training diverged: retrain it")  # fmt: skip
    if not trainable:
        model.eval()
    dtype_name = str(next(checked.model.parameters()).dtype).replace("torch.", "")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("loaded item-token model %s (%d items, sources %s, %d layers)", path, len(config.item_ids),
                ",".join(config.sources), config.text_config.num_hidden_layers)  # fmt: skip
    return LoadedModel(name, model, tokenizer, dtype_name, n_params, served_path)


def _torch_dtype(dtype: str):
    from mmrec_gen.models.loading import resolve_dtype

    return resolve_dtype(dtype)


def save_merged(loaded: LoadedModel, out: str | Path) -> None:
    """One plain folder: the merged ItemRecForRanking (`from_pretrained`-able) and its tokenizer."""
    loaded.model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
