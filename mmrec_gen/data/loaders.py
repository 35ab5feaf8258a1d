"""Load a dataset folder into a `Dataset`, detecting its format from the files present.

Formats (checked in this order; a folder matching more than one is an error, never a guess):

- ``ml-100k``: ``u.data`` (user \\t item \\t rating \\t timestamp) + ``u.item`` (``|``-separated, latin-1);
- ``ml-1m``: ``ratings.dat`` + ``movies.dat`` (``::``-separated, latin-1);
- ``ml-latest``: ``ratings.csv`` + ``movies.csv`` [+ ``tags.csv``: the 5 most frequent tags per movie -> ``tags``];
- ``generic``: ``interactions.jsonl|.parquet`` + ``items.jsonl|.parquet`` (see `mmrec_gen.data.generic`).

Errors (`DataFormatError`, naming the file, the line/row or id, the column and the fix): no known file set, a
missing partner file, missing columns, an id/timestamp/rating that is not a number where one is required, a
repeated item id in the items file.

Filters, applied to every format in this order. Each is counted in ``Dataset.filter_counts`` (every key is always
present, 0 when nothing was filtered) and logged at WARNING when non-zero:

1. ``duplicate_rows``: exact duplicate interaction rows (same user, item, timestamp and rating) -> the first kept.
2. ``unknown_item_ids``: interactions whose item id is not in the items file -> dropped.
3. ``repeat_interactions``: the same (user, item) at several times -> only the latest kept (for equal timestamps,
   the one later in the file); the count is the number of rows dropped.
4. ``items_without_image``: (only counted, nothing dropped) items left with ``image=None`` when ``images_dir`` is
   given, or when generic items carry an ``image`` column.

Users with too few interactions are not filtered here; `split_dataset` drops and counts them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mmrec_gen.data.columns import RawDataset
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.generic import find_generic_file, read_generic
from mmrec_gen.data.movielens import read_ml1m, read_ml100k, read_ml_latest
from mmrec_gen.data.schema import INTERACTION_COLUMNS, Dataset, Item

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # preference order when one item has several files
FILTER_KEYS = ("duplicate_rows", "unknown_item_ids", "repeat_interactions", "items_without_image")

# format name -> (interactions file, items file); generic is detected separately (two possible suffixes).
_MOVIELENS_FILES = {
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-latest": ("ratings.csv", "movies.csv"),
}
_READERS: dict[str, Callable[[Path], RawDataset]] = {
    "ml-100k": read_ml100k,
    "ml-1m": read_ml1m,
    "ml-latest": read_ml_latest,
    "generic": read_generic,
}
_LOOKED_FOR = "u.data+u.item (ml-100k), ratings.dat+movies.dat (ml-1m), ratings.csv+movies.csv (ml-latest), " + (
    "interactions.jsonl|.parquet+items.jsonl|.parquet (generic)"
)


def detect_format(data_dir: str | Path) -> str:
    """The format of `data_dir` ('ml-100k', 'ml-1m', 'ml-latest' or 'generic'), from its interactions file."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder. Fix: pass the folder that holds the dataset files.")
    matches = [name for name, (ratings, _) in _MOVIELENS_FILES.items() if (root / ratings).is_file()]
    if find_generic_file(root, "interactions") is not None:
        matches.append("generic")
    if not matches:
        raise DataFormatError(f"{root}: no known dataset files. Looked for {_LOOKED_FOR}.")
    if len(matches) > 1:
        raise DataFormatError(
            f"{root}: files of several formats are present ({', '.join(matches)}). Fix: keep one dataset per folder."
        )
    name = matches[0]
    if name in _MOVIELENS_FILES and not (root / _MOVIELENS_FILES[name][1]).is_file():
        ratings, items = _MOVIELENS_FILES[name]
        raise DataFormatError(f"{root}: found {ratings} ({name}) but not {items}. Fix: add {items} to the folder.")
    return name


def _apply_filters(raw: RawDataset, counts: dict[str, int]) -> pd.DataFrame:
    frame = raw.interactions[list(INTERACTION_COLUMNS)]
    where = raw.interactions_path

    duplicated = frame.duplicated(keep="first").to_numpy()
    counts["duplicate_rows"] = int(duplicated.sum())
    frame = frame.loc[~duplicated]

    unknown = ~frame["item_id"].isin(raw.items.keys()).to_numpy()
    counts["unknown_item_ids"] = int(unknown.sum())
    if unknown.any():
        examples = sorted(set(frame.loc[unknown, "item_id"].tolist()))[:5]
        logger.warning(
            "%s: dropped %d interactions whose item id is not in %s (unknown_item_ids), e.g. %s",
            where, counts["unknown_item_ids"], raw.items_path.name, ", ".join(examples),
        )  # fmt: skip
    frame = frame.loc[~unknown]

    # A stable sort by time, then keep="last": the latest timestamp wins, and for equal times the later line.
    by_time = frame.sort_values("timestamp", kind="stable")
    repeat = by_time.duplicated(["user_id", "item_id"], keep="last")
    counts["repeat_interactions"] = int(repeat.sum())
    frame = by_time.loc[~repeat].sort_index()

    if counts["duplicate_rows"]:
        logger.warning("%s: dropped %d exact duplicate rows (duplicate_rows)", where, counts["duplicate_rows"])
    if counts["repeat_interactions"]:
        logger.warning(
            "%s: dropped %d earlier repeats of the same (user, item); the latest is kept (repeat_interactions)",
            where, counts["repeat_interactions"],
        )  # fmt: skip
    frame = frame.reset_index(drop=True)
    return frame.astype({"user_id": object, "item_id": object, "timestamp": "int64", "rating": "float64"})


def _image_files(images_dir: Path) -> dict[str, str]:
    """item id (file stem) -> absolute path, preferring .jpg over .jpeg over .png for the same stem."""
    best: dict[str, tuple[int, str]] = {}
    for entry in os.scandir(images_dir):
        stem, suffix = os.path.splitext(entry.name)
        suffix = suffix.lower()
        if suffix in IMAGE_SUFFIXES and entry.is_file():
            rank = IMAGE_SUFFIXES.index(suffix)
            if stem not in best or rank < best[stem][0]:
                best[stem] = (rank, os.path.abspath(entry.path))
    return {stem: path for stem, (_, path) in best.items()}


def _attach_images(items: dict[str, Item], images_dir: Path) -> dict[str, Item]:
    if not images_dir.is_dir():
        raise DataFormatError(f"{images_dir}: images folder not found. Fix: pass an existing folder or leave it out.")
    files = _image_files(images_dir)
    return {item_id: dataclasses.replace(item, image=files.get(item_id)) for item_id, item in items.items()}


def _report_ratings(path: Path, ratings: pd.Series) -> None:
    """Log the ratings' range; a warning when some are negative (a scale such as -10..10 loads, but prompts show
    ratings as given and the MSE baseline predicts on that scale: worth a look)."""
    rated = ratings.dropna()
    if rated.empty:
        return
    low, high, negative = float(rated.min()), float(rated.max()), int((rated < 0).sum())
    log = logger.warning if negative else logger.info
    log(
        "%s: ratings range from %g to %g (%d negative)%s", path, low, high, negative,
        ": check that this is the data's scale" if negative else "",
    )  # fmt: skip


def load_dataset(data_dir: str | Path, images_dir: str | Path | None = None) -> Dataset:
    """Load `data_dir` (format auto-detected), filtering and counting as the module docstring documents.

    `images_dir`, when given, maps `<item_id>.jpg|.jpeg|.png` in it to `Item.image` (absolute paths) and takes
    precedence over a generic `image` column; items without a file get `image=None`. Images are not opened here.
    """
    root = Path(data_dir)
    source_format = detect_format(root)
    raw = _READERS[source_format](root)
    if not raw.items:
        raise DataFormatError(f"{raw.items_path}: no items. Fix: add one record per item (id, title, ...).")
    counts = dict.fromkeys(FILTER_KEYS, 0)
    interactions = _apply_filters(raw, counts)
    if interactions.empty:
        dropped = f" (all {len(raw.interactions)} rows were dropped, see above)" if len(raw.interactions) else ""
        raise DataFormatError(
            f"{raw.interactions_path}: no interactions{dropped}. Fix: add (user, item, timestamp) rows to the file."
        )
    items = raw.items
    if images_dir is not None:
        items = _attach_images(items, Path(images_dir))
    if images_dir is not None or any(item.image for item in items.values()):
        counts["items_without_image"] = sum(item.image is None for item in items.values())
        if counts["items_without_image"]:
            logger.warning(
                "%s: %d of %d items have no image (items_without_image)",
                images_dir or raw.items_path, counts["items_without_image"], len(items),
            )  # fmt: skip
    dataset = Dataset(
        name=root.resolve().name,
        source_format=source_format,
        items=items,
        interactions=interactions,
        filter_counts=counts,
        image_dir=os.path.abspath(images_dir) if images_dir is not None else None,
    )
    logger.info(
        "loaded %s (%s): %d users, %d items, %d interactions",
        dataset.name, source_format, interactions["user_id"].nunique(), len(items), len(interactions),
    )  # fmt: skip
    _report_ratings(raw.interactions_path, interactions["rating"])
    return dataset
