"""Item feature tables for item tokens, computed once per catalogue and cached (no prompt ever runs an encoder).

- `cf`: the item embeddings of a SASRec model fitted on the train split only (the same model and early stopping
  as `mmrec baseline sasrec`: for split=test it is fitted on train and monitored on valid; for split=valid the
  last train item is the monitor), cached under a key of (dataset, interactions, split, seed, SASRec params);
- `text`: the item text (title + fields) through a frozen text encoder (MiniLM by default), cached by the
  feature cache;
- `image`: EfficientNet-Lite0 features of the item images; items without an image are flagged (`has_image`) and
  get the learned "no image" vector in the projector (their count is logged). A bad image file follows
  `on_bad_image`: under `skip` its item counts as having no image, under `placeholder` it gets the grey image's
  features, under `fail` nothing is trained; `image_report` lists every bad file for the run summary.

Rows follow `item_ids` (the whole catalogue, id-sorted), so every table lines up with `models.item_tokens`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mmrec_gen.data.schema import Dataset
from mmrec_gen.data.split import SplitResult, id_sort_key
from mmrec_gen.features.cache import cache_file, cached_table

logger = logging.getLogger(__name__)


@dataclass
class ItemFeatures:
    item_ids: list[str]
    tables: dict[str, np.ndarray]
    has_image: np.ndarray | None = None
    image_report: dict | None = None  # data.images.ImageReport.to_dict() of the image table, when it has one


def catalogue(ds: Dataset) -> list[str]:
    return sorted(ds.items, key=id_sort_key)


def cf_table(
    ds: Dataset, split_result: SplitResult, split: str, seed: int, item_ids: Sequence[str], cache_dir=None
) -> np.ndarray:
    """SASRec item embeddings (train split only), fitted on the fly when missing and cached."""
    from mmrec_gen.recsys.baselines import training_view
    from mmrec_gen.recsys.sasrec import SASRecParams, SASRecRecommender

    params = SASRecParams(seed=seed)
    fit, monitor = training_view(split_result, split)
    digest = hashlib.sha256(f"{ds.name}|{split}|{asdict(params)}|{len(item_ids)}".encode())
    for user in sorted(fit, key=id_sort_key):
        digest.update(f"{user}:{','.join(i.item_id for i in fit[user])};{monitor[user].item_id}\n".encode())
    for item in item_ids:
        digest.update(f"{item}\n".encode())

    def compute() -> np.ndarray:
        logger.info(
            "cf item tokens: fitting SASRec on the %s-split training view of %s (once; cached)", split, ds.name
        )
        rec = SASRecRecommender(list(item_ids), params)
        seconds = rec.fit(
            {u: [i.item_id for i in s] for u, s in fit.items()}, {u: m.item_id for u, m in monitor.items()}
        )
        logger.info("cf item tokens: SASRec fitted in %.1f s", seconds)
        return rec.item_embeddings()

    return cached_table(
        cache_file(f"sasrec-{ds.name}-{split}-seed{seed}", digest.hexdigest(), cache_dir), None, compute, "cf"
    )


def build_item_features(
    ds: Dataset,
    split_result: SplitResult,
    sources: Sequence[str],
    *,
    split: str,
    seed: int,
    text_encoder: str = "minilm",
    image_encoder: str = "efficientnet-lite0",
    max_text_chars: int = 300,
    cache_dir=None,
    on_bad_image: str = "skip",
    max_image_pixels: int | None = None,
) -> ItemFeatures:
    """The tables of `sources` for the whole catalogue of `ds` (rows in `catalogue(ds)` order)."""
    item_ids = catalogue(ds)
    tables: dict[str, np.ndarray] = {}
    has_image = None
    image_report = None
    if "cf" in sources:
        tables["cf"] = cf_table(ds, split_result, split, seed, item_ids, cache_dir)
    if "text" in sources:
        from mmrec_gen.features.text_encoders import item_text_embeddings, load_text_encoder

        encoder = load_text_encoder(text_encoder)
        tables["text"] = item_text_embeddings(
            [ds.items[i] for i in item_ids], encoder, max_text_chars=max_text_chars, cache_dir=cache_dir
        )
    if "image" in sources:
        from mmrec_gen.data.images import DEFAULT_MAX_IMAGE_PIXELS
        from mmrec_gen.features.image_features import image_feature_table

        has_image = np.array([bool(ds.items[i].image) for i in item_ids])
        if not has_image.any():
            raise ValueError(f"--item-tokens image: no item of {ds.name} has an image; pass --images DIR")
        missing = int((~has_image).sum())
        if missing:
            logger.warning("image item tokens: %d of %d items have no image (they get the no-image vector)",
                           missing, len(item_ids))  # fmt: skip
        images = image_feature_table(
            image_encoder, ds, item_ids, cache_dir=cache_dir, on_bad_image=on_bad_image,
            max_image_pixels=max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
        )  # fmt: skip
        tables["image"] = images.table
        image_report = images.report.to_dict()
        if on_bad_image == "skip":  # a skipped file leaves its item without an image: the no-image vector
            skipped = {b["item_id"] for b in images.report.bad}
            has_image &= np.array([i not in skipped for i in item_ids])
    return ItemFeatures(item_ids, {s: np.asarray(t, np.float32) for s, t in tables.items()}, has_image, image_report)
