"""The .npy cache every item feature table goes through (text embeddings, image features, or any table aligned
to an item order, such as SASRec's item embeddings): keyed by a content hash, written atomically."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.paths import embeddings_dir

logger = logging.getLogger(__name__)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` under a temporary name and rename it, so a killed run never leaves half a cache."""
    with atomic_write(path, binary=True) as fh:
        np.save(fh, array)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:]


def cache_file(name: str, digest: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`<cache_dir or $MMREC_HOME/embeddings>/<name>-<digest[:16]>.npy`; `digest` must cover everything the
    table depends on (encoder settings, item ids, texts or image files)."""
    return (Path(cache_dir) if cache_dir else embeddings_dir()) / f"{_slug(name)}-{digest[:16]}.npy"


def cached_table(
    path: Path, shape: tuple[int, ...] | None, compute: Callable[[], np.ndarray], what: str
) -> np.ndarray:
    """The array at `path` (when `shape` is given, only if it has that shape), else `compute()` written there
    atomically."""
    if path.is_file():
        table = np.load(path)
        if shape is None or table.shape == tuple(shape):
            logger.info("%s: reusing %s", what, path)
            return table
        logger.warning("%s has shape %s, expected %s: recomputing it", path, table.shape, tuple(shape))
    table = compute()
    save_npy_atomic(path, table)
    return table


def aligned(table: np.ndarray, table_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """Rows of `table` (one per `table_ids`) in the order of `item_ids`; an unknown id raises KeyError."""
    row = {item: k for k, item in enumerate(table_ids)}
    return table[[row[i] for i in item_ids]]
