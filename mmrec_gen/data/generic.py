"""Reader for the generic layout: `interactions.jsonl|.parquet` + `items.jsonl|.parquet`.

interactions: `user_id`, `item_id`, `timestamp` (whole number, e.g. Unix seconds) and optional `rating` (number or
null). items: `item_id`, `title`, any other text fields, and an optional `image` (a path relative to the data folder).
Extra item values become strings in `Item.fields`: lists are joined with ", ", numbers are written in decimal, and
null/empty values are left out (so a prompt never gets an empty string).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_gen.data.columns import (
    RawDataset,
    RawTable,
    has_visible_text,
    id_to_str,
    parse_ids,
    parse_numbers,
    require_columns,
    show_value,
)
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.files import JSONLineError, iter_jsonl
from mmrec_gen.data.schema import Item

GENERIC_SUFFIXES = (".jsonl", ".parquet")
_RESERVED_ITEM_COLUMNS = ("item_id", "title", "image")


def find_generic_file(root: Path, stem: str) -> Path | None:
    """`<stem>.jsonl` or `<stem>.parquet` in root; both present is ambiguous and raises."""
    found = [root / f"{stem}{suffix}" for suffix in GENERIC_SUFFIXES if (root / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataFormatError(
            f"{root}: both {found[0].name} and {found[1].name} exist, so it is unclear which one to load. "
            "Fix: remove or rename one of them."
        )
    return found[0] if found else None


# No rating scale is wider (stars, 1-10, 0-100 points, Jester's -10..10): beyond it a value is a corrupt record,
# and 1e308 would overflow the MSE baseline's RMSE. Negative ratings load, and the load log says so (loaders.py).
RATING_LIMITS = (-1000.0, 1000.0, "a rating between -1000 and 1000")


def _read_jsonl(path: Path) -> tuple[list[dict], list[str], np.ndarray]:
    records: list[dict] = []
    positions: list[int] = []
    columns: dict[str, None] = {}  # insertion-ordered union of keys, for the "columns found" message
    try:
        for n, record in iter_jsonl(path, encoding="utf-8-sig"):  # utf-8-sig: tolerate a byte-order mark
            records.append(record)
            positions.append(n)
            columns.update(dict.fromkeys(record))
    except JSONLineError as err:
        if err.not_json:
            raise DataFormatError(
                f"{path}: line {err.line_no} is not valid JSON ({err.problem}). Fix: correct that line."
            ) from err
        raise DataFormatError(
            f"{path}: line {err.line_no} holds a JSON {err.got}, expected an object. Fix: correct that line."
        ) from err
    return records, list(columns), np.asarray(positions, dtype=np.int64)


def _read_records(path: Path) -> tuple[list[dict], list[str], np.ndarray, str]:
    if path.suffix == ".jsonl":
        records, columns, positions = _read_jsonl(path)
        return records, columns, positions, "line"
    import pyarrow.parquet as pq  # only needed for Parquet input

    table = pq.read_table(path)
    records = table.to_pylist()
    return records, list(table.column_names), np.arange(1, len(records) + 1), "row"


def _field_text(value: object) -> str | None:
    """A text form of an extra item value, or None to leave the field out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        parts = [p for p in (_field_text(v) for v in value) if p]
        return ", ".join(parts) or None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def _read_items(root: Path, path: Path) -> dict[str, Item]:
    records, columns, positions, unit = _read_records(path)
    require_columns(path, columns, ["item_id", "title"])
    items: dict[str, Item] = {}
    first: dict[str, int] = {}
    for record, pos in zip(records, positions.tolist(), strict=True):
        where = f"{path}: {unit} {pos}"
        item_id = id_to_str(record.get("item_id"))
        if not item_id:
            raise DataFormatError(
                f"{where}, column 'item_id' has {record.get('item_id')!r}, expected an id. Fix: correct that record."
            )
        title = record.get("title")
        if not has_visible_text(title):  # spaces and zero-width characters only: nothing a prompt could show
            raise DataFormatError(
                f"{where} (item {item_id}), column 'title' has {show_value(title)}, expected a title with visible "
                "characters. Fix: give the item a title."
            )
        if item_id in items:
            raise DataFormatError(
                f"{where} repeats item id {item_id} (first at {unit} {first[item_id]}). Fix: keep one record per item."
            )
        fields = {}
        for key, value in record.items():
            text = _field_text(value) if key not in _RESERVED_ITEM_COLUMNS else None
            if text is not None:
                fields[str(key)] = text
        image_value = record.get("image")
        image = None
        if isinstance(image_value, str) and image_value.strip():
            image = os.path.abspath(root / image_value.strip())
        items[item_id] = Item(item_id, title.strip(), fields, image)
        first[item_id] = pos
    return items


def read_generic(root: Path) -> RawDataset:
    """Read the generic layout from `root` (both files must exist; see the module docstring)."""
    interactions_path = find_generic_file(root, "interactions")
    items_path = find_generic_file(root, "items")
    if interactions_path is None or items_path is None:
        missing = "interactions.jsonl|.parquet" if interactions_path is None else "items.jsonl|.parquet"
        raise DataFormatError(f"{root}: generic data needs {missing} next to the other file. Fix: add it.")
    items = _read_items(root, items_path)
    records, columns, positions, unit = _read_records(interactions_path)
    require_columns(interactions_path, columns, ["user_id", "item_id", "timestamp"], hint=" (rating is optional)")
    wanted = ["user_id", "item_id", "timestamp", "rating"]
    frame = pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in wanted})
    table = RawTable(interactions_path, frame, positions, unit)
    typed = pd.DataFrame(
        {
            "user_id": parse_ids(table, "user_id", integer=False),
            "item_id": parse_ids(table, "item_id", integer=False),
            "timestamp": parse_numbers(table, "timestamp", required=True, integral=True),
            "rating": parse_numbers(table, "rating", required=False, integral=False, limits=RATING_LIMITS),
        }
    )
    return RawDataset(items, typed, interactions_path, items_path)
