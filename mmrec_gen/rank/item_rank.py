"""Ranking with an item-token adapter: everything it was trained with is read from the adapter folder.

`mmrec rank --adapter DIR` finds `mmrec_item_tokens.json` there and takes the head, the item-token sources, the
template, the layer cut and the prompt budgets from it; the feature tables are rebuilt (or read from the cache)
for the data being ranked and must have the fingerprints the adapter was trained on, else it is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from mmrec_gen.data.inputs import RunInputs
from mmrec_gen.models.item_tokens import (
    ItemTokens,
    check_fingerprints,
    keep_first_layers,
    read_item_token_config,
)
from mmrec_gen.models.types import LoadedModel

logger = logging.getLogger(__name__)

# Prompt options an item-token adapter fixes (the training prompt is the inference prompt).
PROMPT_OPTIONS = ("template", "max_history", "max_model_len", "max_text_chars")


@dataclass
class ItemTokenSetup:
    config: dict
    loaded: LoadedModel
    item_tokens: ItemTokens


def item_token_config(adapter: str | None) -> dict | None:
    return read_item_token_config(adapter) if adapter else None


def apply_adapter_options(cfg, config: dict):
    """The run config with the adapter's prompt options (a differing explicit value is overridden, with a log)."""
    changes = {k: config[k] for k in PROMPT_OPTIONS if k in config and getattr(cfg, k, None) != config[k]}
    if changes:
        logger.info("item-token adapter %s: using its prompt options %s", cfg.adapter, changes)
    return replace(cfg, **changes)


def load_item_token_model(cfg, config: dict, inputs: RunInputs, loaded: LoadedModel) -> ItemTokenSetup:
    """Cut the base model to the adapter's layers, apply the LoRA adapter, rebuild and check the item tokens."""
    import copy

    from mmrec_gen.models.adapters import check_adapter, with_adapter
    from mmrec_gen.recsys.item_features import build_item_features

    if config.get("split") != cfg.split:
        raise ValueError(
            f"{cfg.adapter}: its cf/text item tokens were fitted for --split {config.get('split')}, "
            f"this run ranks --split {cfg.split}; train an adapter with --split {cfg.split}"
        )
    check_adapter(cfg.adapter, loaded, max_lora_rank=cfg.max_lora_rank)
    features = build_item_features(
        inputs.dataset, inputs.split_result, config["sources"], split=cfg.split, seed=config["seed"],
        text_encoder=config.get("text_encoder", "minilm"), max_text_chars=config.get("max_text_chars", 300),
        on_bad_image=cfg.on_bad_image, max_image_pixels=cfg.max_image_pixels,
    )  # fmt: skip
    hidden = loaded.model.get_input_embeddings().weight.shape[1]
    module = ItemTokens(features.item_ids, features.tables, hidden, has_image=features.has_image)
    check_fingerprints(cfg.adapter, config["fingerprints"], module)
    module.load(cfg.adapter)
    model = copy.deepcopy(loaded.model)  # never change the caller's (possibly cached) model in place
    keep_first_layers(model, config.get("num_layers"))
    cut = replace(loaded, model=model)
    merged = with_adapter(cut, cfg.adapter, merge=cfg.merge_adapter, max_lora_rank=cfg.max_lora_rank)
    return ItemTokenSetup(config, merged, module)
