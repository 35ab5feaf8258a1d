"""Readers for the three MovieLens layouts (GroupLens): 100K, 1M and latest / latest-small.

Each reader returns a `RawDataset`: the catalogue as `Item`s (title, `genres` as "Action, Comedy", `year` when the
source has one, `tags` for latest) and the typed interactions. Filtering (duplicates, repeats, unknown items) is
done once for every format in `loaders.py`.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_gen.data.columns import (
    MAX_ID_CHARS,
    RawDataset,
    RawTable,
    canonical_integer,
    has_visible_text,
    parse_ids,
    parse_numbers,
    require_columns,
    show_value,
)
from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.schema import Item

# The 19 genre flags of ml-100k u.item, in file order (also listed in u.genre, which wins when present).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
MAX_TAGS_PER_ITEM = 5
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_YEAR_IN_DATE = re.compile(r"(\d{4})\s*$")


def read_text_any(path: Path) -> tuple[str, str]:
    """(text, encoding) of a MovieLens text file: UTF-8 first (a file re-saved by an editor, BOM allowed), else
    latin-1, the encoding GroupLens ships .dat/.item files in. Reading UTF-8 bytes as latin-1 would turn "Café"
    into "CafÃ©"; latin-1 accented letters are never valid UTF-8, so trying UTF-8 first cannot misread them."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _read_lines(path: Path) -> list[tuple[int, str]]:
    # Keep 1-based line numbers for errors. splitlines() also splits at \x1c-\x1e, \x85, \u2028 and \u2029,
    # which would shift line numbers; MovieLens records end at \n (or \r\n) only.
    text, _ = read_text_any(path)
    lines = text.replace("\r\n", "\n").split("\n")
    return [(n, line.rstrip("\r")) for n, line in enumerate(lines, start=1) if line.strip()]


def _read_delimited(path: Path, sep: str, names: list[str], text: str | None = None) -> RawTable:
    """A headerless, numeric-only table (u.data, ratings.dat) read as strings, keeping line numbers."""
    source = io.StringIO(text) if text is not None else path
    try:
        frame = pd.read_csv(
            source, sep=sep, header=None, names=names, dtype=str, keep_default_na=False, skip_blank_lines=False,
            encoding="latin-1", engine="c",
        )  # fmt: skip
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame({n: pd.Series([], dtype=str) for n in names})  # "no interactions" is raised later
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, f"({', '.join(names)})") from None
    positions = np.arange(1, len(frame) + 1)
    blank = (frame.isna() | (frame == "")).all(axis=1).to_numpy()
    return RawTable(path, frame.loc[~blank].reset_index(drop=True), positions[~blank])


def _typed_interactions(table: RawTable, user: str, item: str, rating: str, timestamp: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": parse_ids(table, user, integer=True),
            "item_id": parse_ids(table, item, integer=True),
            "timestamp": parse_numbers(table, timestamp, required=True, integral=True),
            "rating": parse_numbers(table, rating, required=True, integral=False, limits=RATING_SCALE),
        }
    )


# Every MovieLens release rates 0.5-5 (ml-latest, ml-25m: half stars) or 1-5 (ml-100k, ml-1m).
RATING_SCALE = (0.5, 5.0, "a rating from 0.5 to 5 (the MovieLens scale)")


def _add_item(items: dict[str, Item], lines: dict[str, int], path: Path, line: int, item: Item) -> None:
    if not has_visible_text(item.title):  # spaces and zero-width characters only: nothing a prompt could show
        raise DataFormatError(
            f"{path}: line {line} (item {item.item_id}), column 'title' has no visible character "
            f"({show_value(item.title)}). Fix: give the movie a title."
        )
    if item.item_id in items:
        raise DataFormatError(
            f"{path}: line {line} repeats item id {item.item_id} (first on line {lines[item.item_id]}). "
            "Fix: keep one line per item id."
        )
    items[item.item_id] = item
    lines[item.item_id] = line


def _item_id(path: Path, line: int, raw: str) -> str:
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise DataFormatError(
            f"{path}: line {line}, column 'item_id' has {show_value(raw)}, expected a whole-number id. "
            "Fix: correct that line."
        )
    if len(text) > MAX_ID_CHARS:
        raise DataFormatError(
            f"{path}: line {line}, column 'item_id' has an id of {len(text)} characters ({show_value(text)}), "
            f"expected a whole-number id of at most {MAX_ID_CHARS}. Fix: correct that line."
        )
    return canonical_integer(text)


def _year_fields(title: str) -> dict[str, str]:
    match = _YEAR_IN_TITLE.search(title)
    return {"year": match.group(1)} if match else {}


def read_ml100k(root: Path) -> RawDataset:
    """u.data (user \\t item \\t rating \\t timestamp) + u.item (id|title|release|video|url|19 genre flags)."""
    items_path = root / "u.item"
    genres = list(ML100K_GENRES)
    if (root / "u.genre").is_file():
        named = [line.split("|")[0] for _, line in _read_lines(root / "u.genre")]
        if len(named) == len(ML100K_GENRES):
            genres = named
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for n, line in _read_lines(items_path):
        parts = line.split("|")
        if len(parts) < 5 + len(genres):
            raise DataFormatError(
                f"{items_path}: line {n} has {len(parts)} '|'-separated fields, expected {5 + len(genres)} "
                "(movie id|title|release date|video release date|IMDb URL|19 genre flags). Fix: correct that line."
            )
        flags = parts[5 : 5 + len(genres)]
        bad = [f for f in flags if f.strip() not in ("0", "1")]
        if bad:
            raise DataFormatError(
                f"{items_path}: line {n}, a genre flag column holds {bad[0]!r}, expected 0 or 1. "
                "Fix: correct that line."
            )
        names = [g for g, f in zip(genres, flags, strict=True) if f.strip() == "1"]
        fields = {"genres": ", ".join(names) or "unknown"}
        year = _YEAR_IN_DATE.search(parts[2])
        if year:
            fields["year"] = year.group(1)
        item = Item(_item_id(items_path, n, parts[0]), parts[1].strip(), fields)
        _add_item(items, first_line, items_path, n, item)
    table = _read_delimited(root / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    frame = _typed_interactions(table, "user_id", "item_id", "rating", "timestamp")
    return RawDataset(items, frame, table.path, items_path)


def read_ml1m(root: Path) -> RawDataset:
    """ratings.dat (UserID::MovieID::Rating::Timestamp) + movies.dat (MovieID::Title::Genres, genres '|'-joined)."""
    items_path = root / "movies.dat"
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for n, line in _read_lines(items_path):
        parts = line.split("::")
        if len(parts) != 3:
            raise DataFormatError(
                f"{items_path}: line {n} has {len(parts)} '::'-separated fields, expected 3 (MovieID::Title::Genres). "
                "Fix: correct that line."
            )
        title = parts[1].strip()
        fields = {"genres": ", ".join(g for g in parts[2].strip().split("|") if g) or "unknown", **_year_fields(title)}
        _add_item(items, first_line, items_path, n, Item(_item_id(items_path, n, parts[0]), title, fields))
    ratings_path = root / "ratings.dat"
    # pandas' C parser takes one-character separators only; the fields are all numeric, so "::" -> "\t" is safe
    # and keeps ml-1m (1M lines) fast.
    text = ratings_path.read_text(encoding="latin-1").replace("::", "\t")
    table = _read_delimited(ratings_path, "\t", ["user_id", "item_id", "rating", "timestamp"], text=text)
    frame = _typed_interactions(table, "user_id", "item_id", "rating", "timestamp")
    return RawDataset(items, frame, ratings_path, items_path)


_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _parser_error(path: Path, exc: Exception, expected: str) -> DataFormatError:
    """pandas' "Expected 4 fields in line 5, saw 5" as a message naming the file, the line and the fix."""
    match = _FIELDS_RE.search(str(exc))
    if match:
        return DataFormatError(
            f"{path}: line {match.group(2)} has {match.group(3)} fields, expected {match.group(1)} {expected}. "
            "Fix: correct that line "
            '(a CSV field that holds a comma must be quoted: "Title, The (1999)").'
        )
    return DataFormatError(
        f"{path}: not a readable table ({str(exc).strip()[:200]}). Fix: give every line the same fields {expected}."
    )


def _read_csv(path: Path, required: list[str]) -> RawTable:
    # keep_default_na=False: a title such as "NA" or "None" is a title, not a missing value.
    frame = pd.DataFrame()
    for encoding in ("utf-8-sig", "latin-1"):  # MovieLens CSVs are UTF-8; a latin-1 re-save still reads
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError:
            raise DataFormatError(
                f"{path}: the file is empty (not even a header line). Fix: start it with the header line "
                f"{','.join(required)} and add one line per record."
            ) from None
        except pd.errors.ParserError as exc:
            raise _parser_error(path, exc, "(as many as the header line)") from None
    require_columns(path, frame.columns, required)
    # Line numbers assume one line per record (true for MovieLens CSVs); line 1 is the header.
    return RawTable(path, frame, np.arange(2, len(frame) + 2))


def _top_tags(path: Path, items: dict[str, Item]) -> dict[str, str]:
    """The MAX_TAGS_PER_ITEM most frequent tags per movie (case-folded; ties broken alphabetically)."""
    table = _read_csv(path, ["movieId", "tag"])
    counts: dict[str, Counter[str]] = {}
    for movie, tag in zip(table.frame["movieId"].tolist(), table.frame["tag"].tolist(), strict=True):
        movie_id, text = movie.strip(), tag.strip().lower()
        if text and movie_id in items:
            counts.setdefault(movie_id, Counter())[text] += 1
    return {
        movie_id: ", ".join(t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS_PER_ITEM])
        for movie_id, c in counts.items()
    }


def read_ml_latest(root: Path) -> RawDataset:
    """ratings.csv (userId,movieId,rating,timestamp) + movies.csv (movieId,title,genres) [+ tags.csv]."""
    items_path = root / "movies.csv"
    movies = _read_csv(items_path, ["movieId", "title", "genres"])
    ids = parse_ids(movies, "movieId", integer=True).tolist()
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for i, (item_id, title, genres) in enumerate(
        zip(ids, movies.frame["title"].tolist(), movies.frame["genres"].tolist(), strict=True)
    ):
        title = title.strip()
        fields = {"genres": ", ".join(g for g in genres.strip().split("|") if g) or "unknown", **_year_fields(title)}
        _add_item(items, first_line, items_path, int(movies.positions[i]), Item(item_id, title, fields))
    if (root / "tags.csv").is_file():
        for item_id, tags in _top_tags(root / "tags.csv", items).items():
            items[item_id] = Item(item_id, items[item_id].title, {**items[item_id].fields, "tags": tags})
    table = _read_csv(root / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    frame = _typed_interactions(table, "userId", "movieId", "rating", "timestamp")
    return RawDataset(items, frame, table.path, items_path)
