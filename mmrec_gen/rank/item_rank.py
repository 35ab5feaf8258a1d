"""Ranking with an item-token recommender: everything it was trained with is read from its folder.

`mmrec rank --adapter DIR` (a trained adapter) or `mmrec rank --model DIR` (a merged model) finds an item-token
model's config.json there (model_type `mmrec_item_rec`) and takes the head, the item-token sources, the template,
the layer cut and the prompt budgets from it. The feature tables are part of the saved weights: nothing is refitted
or re-encoded; the data must have the catalogue the model was trained on (checked before any model loads).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mmrec_gen.data.split import id_sort_key
from mmrec_gen.models.item_rec_io import item_rec_folder, read_item_rec_config

logger = logging.getLogger(__name__)

# Prompt options an item-token model fixes (the training prompt is the inference prompt).
PROMPT_OPTIONS = ("template", "max_history", "max_model_len", "max_text_chars")


def item_model_folder(cfg) -> str | None:
    """The run's item-token folder: its --adapter, or its --model when that is a merged item-token model."""
    for path in (getattr(cfg, "adapter", None), getattr(cfg, "model", None)):
        if item_rec_folder(path):
            return str(path)
    return None


def item_token_config(cfg) -> dict | None:
    """A plain summary of the run's item-token model (head, sources, catalogue size, recipe), or None."""
    folder = item_model_folder(cfg)
    if folder is None:
        return None
    config = read_item_rec_config(folder)
    return {"folder": folder, "head": config.head, "sources": config.sources, "items": len(config.item_ids),
            **config.recipe}  # fmt: skip


def apply_adapter_options(cfg, config: dict):
    """The run config with the model's prompt options (a differing explicit value is overridden, with a log)."""
    changes = {k: config[k] for k in PROMPT_OPTIONS if k in config and getattr(cfg, k, None) != config[k]}
    if changes:
        logger.info("item-token model %s: using its prompt options %s", config["folder"], changes)
    return replace(cfg, **changes)


def check_item_model_data(cfg, config: dict, dataset) -> None:
    """Before anything slow: the run's split and catalogue must be the model's."""
    if config.get("split") not in (None, cfg.split):
        raise ValueError(
            f"{config['folder']}: its cf/text item tokens were fitted for --split {config.get('split')}, "
            f"this run ranks --split {cfg.split}; train a model with --split {cfg.split}"
        )
    trained = read_item_rec_config(config["folder"]).item_ids
    catalogue = sorted(dataset.items, key=id_sort_key)
    if trained != catalogue:
        unknown = [i for i in catalogue if i not in set(trained)]
        raise ValueError(
            f"{config['folder']}: trained on a catalogue of {len(trained)} items, {dataset.name} has {len(catalogue)}"
            + (f" (first unknown item: {unknown[0]!r})" if unknown else "")
            + "; rank the dataset the model was trained on, or train one on this data"
        )


def load_item_token_model(cfg, config: dict, loaded=None):
    """The run's item-token model as a LoadedModel: an adapter applied (merged) to its base, or a merged folder."""
    from mmrec_gen.models.item_rec_io import is_adapter_folder, load_item_rec

    folder = config["folder"]
    base = None
    if is_adapter_folder(folder):
        import copy

        from mmrec_gen.models.registry import load_model

        base_name = cfg.model if cfg.model != _default_model() else read_item_rec_config(folder).base_model
        if loaded is not None:  # never change the caller's (possibly cached) model in place
            base = replace(loaded, model=copy.deepcopy(loaded.model))
        else:
            base = load_model(base_name or cfg.model, dtype=cfg.dtype)
    return load_item_rec(folder, dtype=cfg.dtype, base=base, max_lora_rank=cfg.max_lora_rank)


def _default_model() -> str:
    from mmrec_gen.models.model_args import ModelArguments

    return ModelArguments.__dataclass_fields__["model"].default
