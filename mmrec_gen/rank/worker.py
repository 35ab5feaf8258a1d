"""The worker side of a ranking run: a picklable spec -> model, backend and Ranker, in any process.

`mmrec rank` builds its ranker in-process from a `RankWorkerSpec`; a batch job (mmrec_gen/jobs/) ships the same
spec to a subprocess or a Ray actor, which loads the model once from its name or path (and the adapter from its
path) and ranks the users it is sent. The spec holds only plain values (the run config, the rows' `meta`, catalogue
titles): never a model, so it pickles small.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace

from mmrec_gen.data.inputs import RunInputs
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.rank.rank_config import RankConfig, RunConfig
from mmrec_gen.rank.ranker import Ranker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankWorkerSpec:
    """What a process needs to rank: `config` names the model, adapter, backend, mode and prompt options."""

    config: RankConfig
    mode: str  # the Ranker's mode: the config's, or "items" for an item-token adapter with an item head
    meta: dict  # the rows' meta; its "model" is the loaded model's name, filled in by build_ranker
    num_candidates: int
    catalogue_titles: tuple[str, ...] = ()  # generate mode: counts out-of-candidate titles
    item_config: dict | None = field(default=None)  # rank/item_rank.py item_token_config: an item-token model

    def row_meta(self, model_name: str) -> dict:
        return {**self.meta, "model": model_name}


def load_run_model(cfg: RunConfig, inputs: RunInputs | None, loaded_model=None, item_config: dict | None = None):
    """The run's model (an item-token model when `item_config` names one). Called only after every input has been
    checked, so bad input never waits for a model to load."""
    from mmrec_gen.models.registry import load_model
    from mmrec_gen.rank.backend import BACKENDS

    if item_config:
        from mmrec_gen.rank.item_rank import load_item_token_model

        if cfg.images and "image" not in item_config["sources"]:
            logger.warning("--images: item images are mapped, but the item-token model reads no image source")
        return load_item_token_model(cfg, item_config, loaded_model)
    loaded = loaded_model or load_model(cfg.model, dtype=cfg.dtype)
    from mmrec_gen.prompting.image_blocks import is_multimodal

    if cfg.images and not is_multimodal(loaded.tokenizer):
        logger.warning("--images: item images are mapped, but %s reads item text only", cfg.model)
    if cfg.adapter and getattr(BACKENDS.resolve(cfg.backend), "applies_adapters", False):
        from mmrec_gen.models.adapters import check_adapter

        # The backend applies the adapter itself (vLLM: a LoRARequest per prompt): checked here, never merged.
        check_adapter(cfg.adapter, loaded, max_lora_rank=cfg.max_lora_rank)
        return replace(loaded, adapter=str(cfg.adapter))
    if cfg.adapter:
        from mmrec_gen.models.adapters import with_adapter

        if loaded_model is not None:  # never change the caller's (possibly cached) model in place
            loaded = replace(loaded, model=copy.deepcopy(loaded.model))
        loaded = with_adapter(loaded, cfg.adapter, merge=cfg.merge_adapter, max_lora_rank=cfg.max_lora_rank)
    return loaded


def build_ranker(
    spec: RankWorkerSpec, *, loaded_model=None, inputs: RunInputs | None = None, progress: bool | None = None
) -> Ranker:
    """Load the model (or take `loaded_model`), apply the adapter, and build the backend (by name, through the
    backend registry) and the Ranker. `inputs` are only read for item-token adapters (loaded from the config's
    data options when not given)."""
    from mmrec_gen.rank.backend import create_backend

    cfg, mode = spec.config, spec.mode
    loaded = load_run_model(cfg, inputs, loaded_model, spec.item_config)
    max_new = {"score": 1, "items": 1, "constrained": 2 * spec.num_candidates}
    builder = PromptBuilder.from_options(
        loaded.tokenizer, cfg.template, cfg, max_new.get(mode, cfg.max_new_tokens), item_tokens=bool(spec.item_config)
    )
    backend = create_backend(
        cfg.backend,
        loaded,
        batch_size=cfg.batch_size,
        progress=cfg.progress if progress is None else progress,
        config=cfg,
    )
    return Ranker(
        backend,
        builder,
        mode,
        meta=spec.row_meta(loaded.name),
        max_new_tokens=cfg.max_new_tokens,
        catalogue_titles=spec.catalogue_titles,
        permutations=cfg.permutations,
        seed=cfg.seed,
    )
