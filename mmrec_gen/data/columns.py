"""Column checks shared by the MovieLens and generic readers.

A reader hands over a `RawTable` (values exactly as read, plus the line or row number each row came from); these
helpers turn its columns into typed ids and numbers, or raise a `DataFormatError` that names the file, the line/row,
the column, the bad value and the fix.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.schema import Item

_INTEGER_RE = re.compile(r"[0-9]+")
# An id longer than this is a corrupt record, not an id (a 200k-digit "id" would also exceed int()'s digit limit).
MAX_ID_CHARS = 128


def show_value(value: object, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters with its length, so an error message never prints a huge field."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def has_visible_text(text: object) -> bool:
    """True when `text` is a string with a character that shows: not only spaces (Unicode Z*), control and format
    characters (Cc, Cf: zero-width spaces and joiners, byte-order marks, bidi marks), which `str.strip` keeps."""
    return isinstance(text, str) and any(unicodedata.category(c)[0] not in "ZC" for c in text)


def canonical_integer(text: str) -> str:
    """The decimal digits of a whole-number id without leading zeros ("007" -> "7"), as int() would print them,
    without int()'s 4300-digit limit. `text` must match [0-9]+."""
    return text.lstrip("0") or "0"


@dataclass
class RawTable:
    """Raw values of one file. `positions[i]` is the 1-based line (or row, for Parquet) of `frame.iloc[i]`."""

    path: Path
    frame: pd.DataFrame
    positions: np.ndarray
    unit: str = "line"  # "line" for text files, "row" for Parquet

    def where(self, i: int) -> str:
        return f"{self.path}: {self.unit} {int(self.positions[i])}"


@dataclass
class RawDataset:
    """What a reader found, before the shared filters run."""

    items: dict[str, Item]
    interactions: pd.DataFrame  # user_id, item_id (str), timestamp (int64), rating (float64)
    interactions_path: Path
    items_path: Path


def require_columns(path: Path, found: Iterable[str], required: Iterable[str], hint: str = "") -> None:
    """Raise unless every required column is present; the message lists what is missing and what was found."""
    found_list = list(found)
    missing = [c for c in required if c not in found_list]
    if missing:
        found_text = ", ".join(map(str, found_list)) or "(none)"
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; columns found: {found_text}."
            f" Fix: add the missing column(s){hint}."
        )


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def id_to_str(value: object) -> str | None:
    """The canonical string form of an id value (None when it is not a usable id).

    Strings are stripped; ints and integral floats (Parquet turns int columns with nulls into floats) become their
    decimal digits, so item 5 in one file and "5" in another are the same item.
    """
    if isinstance(value, bool) or _is_missing(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return None


def _is_text_column(series: pd.Series) -> bool:
    """True for a pandas string column (what the CSV readers produce), not for object columns of mixed JSON values."""
    return series.dtype != object and pd.api.types.is_string_dtype(series)


def parse_ids(table: RawTable, column: str, *, integer: bool) -> pd.Series:
    """Ids of `column` as strings; `integer=True` (MovieLens) also requires non-negative whole numbers."""
    raw = table.frame[column]
    if integer and _is_text_column(raw):
        # Vectorised path for the MovieLens text readers (ml-1m has 1M rows); errors fall through to the loop below.
        stripped = raw.str.strip()
        ok = stripped.str.fullmatch(r"[0-9]+").fillna(False) & (stripped.str.len() <= MAX_ID_CHARS)
        if bool(ok.all()):
            canonical = stripped.str.lstrip("0").mask(lambda s: s == "", "0")
            return pd.Series(canonical.to_numpy(dtype=object), index=raw.index)
    values = raw.tolist()
    out: list[str] = []
    need = "a whole-number id" if integer else "an id (string or integer)"
    for i, value in enumerate(values):
        text = id_to_str(value)
        if text is None or (integer and not _INTEGER_RE.fullmatch(text)):
            what = "is empty" if _is_missing(value) else f"has {show_value(value)}"
            raise DataFormatError(
                f"{table.where(i)}, column '{column}' {what}, expected {need}. Fix: correct or remove that record."
            )
        if len(text) > MAX_ID_CHARS:
            raise DataFormatError(
                f"{table.where(i)}, column '{column}' has an id of {len(text)} characters ({show_value(text)}), "
                f"expected {need} of at most {MAX_ID_CHARS}. Fix: correct or remove that record."
            )
        out.append(canonical_integer(text) if integer else text)
    return pd.Series(out, index=table.frame.index, dtype=object)


def parse_numbers(
    table: RawTable, column: str, *, required: bool, integral: bool, limits: tuple[float, float, str] | None = None
) -> pd.Series:
    """Numbers of `column`: int64 when `integral` (timestamps), else float64 with NaN for missing optional values.
    `limits` (low, high, what): a value outside [low, high] is refused as "expected {what}"."""
    raw = table.frame[column]
    if _is_text_column(raw):
        stripped = raw.str.strip()
        missing = (stripped.isna() | (stripped == "")).to_numpy(dtype=bool)
        numbers = pd.to_numeric(stripped.where(~missing, None), errors="coerce").astype("float64")
    else:
        values = raw.tolist()
        missing = np.array([_is_missing(v) for v in values], dtype=bool)
        # JSON true/false would silently become 1/0 in to_numeric; a boolean is never a valid number here.
        is_bool = np.array([isinstance(v, bool) for v in values], dtype=bool)
        cleaned = [None if m or b else v for v, m, b in zip(values, missing, is_bool, strict=True)]
        numbers = pd.to_numeric(pd.Series(cleaned, dtype=object), errors="coerce").astype("float64")
    filled = numbers.fillna(0).to_numpy()
    bad = (numbers.isna().to_numpy() & ~missing) | ~np.isfinite(filled)
    if integral:
        bad |= ~missing & (filled % 1 != 0)
    if required:
        bad |= missing
    outside = np.zeros(len(numbers), dtype=bool)
    if limits is not None:
        outside = ~bad & ~missing & ((filled < limits[0]) | (filled > limits[1]))
    if bad.any() or outside.any():
        i = int(np.flatnonzero(bad | outside)[0])
        value = raw.iloc[i]
        what = "is empty" if missing[i] else f"has {show_value(value)}"
        need = "a whole number (Unix seconds)" if integral else "a number"
        need = limits[2] if outside[i] else need
        raise DataFormatError(
            f"{table.where(i)}, column '{column}' {what}, expected {need}. Fix: correct or remove that record."
        )
    numbers.index = raw.index
    if integral:
        return numbers.astype("int64")
    return numbers
