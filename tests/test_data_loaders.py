"""Loaders: the four formats, auto-detection, images and the R14 malformed-data cases, on tiny handmade files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from mmrec_gen.data.errors import DataFormatError
from mmrec_gen.data.loaders import detect_format, load_dataset


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def _ml100k(root: Path, data: str) -> Path:
    _write(root / "u.data", data)
    items = (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}\n"
        f"20|Misérables, Les (1995)|01-Jan-1995||http://y|{_flags(8, 15)}\n"
        f"30|Nothing (1996)|||http://z|{_flags()}\n"
    )
    _write(root / "u.item", items, encoding="latin-1")
    return root


def _ml_latest(root: Path, ratings: str) -> Path:
    _write(root / "ratings.csv", ratings)
    _write(
        root / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",'
        "Comedy|Drama|Romance\n3,NA,(no genres listed)\n",
    )
    return root


def _generic_items() -> list[dict]:
    return [
        {"item_id": "a", "title": "Alpha", "genres": ["Drama", "War"], "year": 1999, "note": None},
        {"item_id": "b", "title": "Beta", "description": "A film.", "image": "img/b.png"},
        {"item_id": 7, "title": "Seven", "score": 2.5},
    ]


def test_ml100k_values_fields_and_latin1(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "ml-100k", "1\t10\t4\t100\n1\t20\t3\t200\n2\t10\t5\t150\n")
    ds = load_dataset(root)
    assert (ds.name, ds.source_format) == ("ml-100k", "ml-100k")
    assert ds.items["20"].title == "Misérables, Les (1995)"
    assert ds.items["10"].fields == {"genres": "Animation, Children's, Comedy", "year": "1995"}
    assert ds.items["20"].fields["genres"] == "Drama, Sci-Fi"
    assert ds.items["30"].fields == {"genres": "unknown"}
    frame = ds.interactions
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert frame.values.tolist() == [["1", "10", 100, 4.0], ["1", "20", 200, 3.0], ["2", "10", 150, 5.0]]
    assert str(frame["timestamp"].dtype) == "int64" and str(frame["rating"].dtype) == "float64"
    assert ds.filter_counts == {
        "duplicate_rows": 0, "unknown_item_ids": 0, "repeat_interactions": 0, "items_without_image": 0,
    }  # fmt: skip


def test_ml1m_values_and_fields(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    _write(root / "ratings.dat", "1::10::4::978300760\n1::11::5::978300761\n\n2::10::3::978300762\n")
    _write(
        root / "movies.dat", "10::Amélie (2001)::Comedy|Romance\n11::Heat (1995)::Action|Crime|Thriller\n", "latin-1"
    )
    ds = load_dataset(root)
    assert ds.source_format == "ml-1m" and ds.name == "ml-1m"
    assert ds.items["10"].title == "Amélie (2001)"
    assert ds.items["10"].fields == {"genres": "Comedy, Romance", "year": "2001"}
    assert ds.interactions.values.tolist() == [
        ["1", "10", 978300760, 4.0], ["1", "11", 978300761, 5.0], ["2", "10", 978300762, 3.0],
    ]  # fmt: skip


def test_ml_latest_values_tags_and_quoted_titles(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "small", "userId,movieId,rating,timestamp\n1,1,4.5,10\n1,2,3.0,20\n2,3,5.0,30\n")
    tags = ["funny", "Funny", "funny", "pixar", "pixar", "cute", "zany", "alpha", "beta", "  "]
    _write(root / "tags.csv", "userId,movieId,tag,timestamp\n" + "".join(f"1,1,{t},5\n" for t in tags) + "1,99,x,5\n")
    ds = load_dataset(root)
    assert ds.source_format == "ml-latest" and len(ds.items) == 3
    assert ds.items["2"].title == "American President, The (1995)"
    assert ds.items["3"].title == "NA"  # not turned into a missing value
    # Top 5 by count (case-folded), ties alphabetical; blank tags and unknown movies ignored.
    assert ds.items["1"].fields == {
        "genres": "Adventure, Animation",
        "year": "1995",
        "tags": "funny, pixar, alpha, beta, cute",
    }
    assert "tags" not in ds.items["2"].fields
    assert ds.interactions["rating"].tolist() == [4.5, 3.0, 5.0]
    # A byte-order mark (Excel's "CSV UTF-8") must not hide the first column name.
    _write(root / "ratings.csv", "\ufeffuserId,movieId,rating,timestamp\n1,1,4.5,10\n")
    assert load_dataset(root).interactions.values.tolist() == [["1", "1", 10, 4.5]]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_generic_values_fields_and_images(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "shop"
    interactions = [
        {"user_id": "u1", "item_id": "a", "timestamp": 5, "rating": 4},
        {"user_id": "u1", "item_id": "b", "timestamp": 6, "rating": None},
        {"user_id": 2, "item_id": 7, "timestamp": 7, "rating": 2.5},
    ]
    if suffix == "jsonl":
        _jsonl(root / "interactions.jsonl", interactions)
        _jsonl(root / "items.jsonl", _generic_items())
    else:
        root.mkdir()
        pd.DataFrame(interactions).astype({"user_id": str, "item_id": str}).to_parquet(root / "interactions.parquet")
        items = pd.DataFrame(_generic_items()).astype({"item_id": str})
        items["genres"] = items["genres"].apply(lambda g: g if isinstance(g, list) else None)
        items.to_parquet(root / "items.parquet")
    ds = load_dataset(root)
    assert (ds.name, ds.source_format) == ("shop", "generic")
    assert ds.items["a"].fields == {"genres": "Drama, War", "year": "1999"}
    assert ds.items["b"].fields == {"description": "A film."}
    assert ds.items["7"].fields == {"score": "2.5"}
    assert ds.items["b"].image == str((root / "img" / "b.png").absolute())
    assert ds.items["a"].image is None
    assert ds.filter_counts["items_without_image"] == 2
    assert ds.interactions["user_id"].tolist() == ["u1", "u1", "2"]
    assert ds.interactions["item_id"].tolist() == ["a", "b", "7"]
    ratings = ds.interactions["rating"].tolist()
    assert ratings[0] == 4.0 and math.isnan(ratings[1]) and ratings[2] == 2.5


def test_images_dir_maps_item_ids_prefers_jpg_and_counts_missing(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "d", "userId,movieId,rating,timestamp\n1,1,4,10\n")
    posters = tmp_path / "posters"
    for name in ["1.png", "1.jpg", "2.PNG", "notes.txt", "x.jpg"]:
        _write(posters / name, "")  # never decoded, so empty files are fine
    ds = load_dataset(root, images_dir=posters)
    assert ds.items["1"].image == str((posters / "1.jpg").absolute())
    assert ds.items["2"].image == str((posters / "2.PNG").absolute())
    assert ds.items["3"].image is None
    assert ds.filter_counts["items_without_image"] == 1
    assert ds.image_dir == str(posters.absolute())
    with pytest.raises(DataFormatError, match="images folder not found"):
        load_dataset(root, images_dir=tmp_path / "nope")


def test_detection_of_each_format_and_failures(tmp_path: Path) -> None:
    _ml100k(tmp_path / "a", "1\t10\t4\t100\n")
    _write(tmp_path / "b" / "ratings.dat", "")
    _write(tmp_path / "b" / "movies.dat", "")
    _ml_latest(tmp_path / "c", "userId,movieId,rating,timestamp\n")
    _jsonl(tmp_path / "d" / "interactions.jsonl", [])
    assert [detect_format(tmp_path / x) for x in "abcd"] == ["ml-100k", "ml-1m", "ml-latest", "generic"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataFormatError, match=r"no known dataset files.*u\.data.*ratings\.dat.*ratings\.csv.*interactions\.jsonl"
    ):
        load_dataset(tmp_path / "empty")
    _write(tmp_path / "c" / "interactions.jsonl", "")
    with pytest.raises(DataFormatError, match=r"several formats .*ml-latest, generic"):
        load_dataset(tmp_path / "c")
    _write(tmp_path / "e" / "u.data", "1\t1\t1\t1\n")
    with pytest.raises(DataFormatError, match=r"found u\.data \(ml-100k\) but not u\.item"):
        load_dataset(tmp_path / "e")
    _jsonl(tmp_path / "f" / "interactions.jsonl", [{"user_id": 1, "item_id": 1, "timestamp": 1}])
    with pytest.raises(DataFormatError, match=r"items\.jsonl\|\.parquet"):
        load_dataset(tmp_path / "f")
    with pytest.raises(DataFormatError, match="no such folder"):
        load_dataset(tmp_path / "missing")


# ---- R14: malformed data -------------------------------------------------------------------------------------


def test_missing_columns_name_file_missing_and_found(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "d", "userId,movieId,rating\n1,1,4\n")
    with pytest.raises(DataFormatError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "ratings.csv" in message and "missing column(s) timestamp" in message
    assert "columns found: userId, movieId, rating" in message

    generic = tmp_path / "g"
    _jsonl(generic / "interactions.jsonl", [{"user_id": 1, "item_id": 1, "timestamp": 1}])
    _jsonl(generic / "items.jsonl", [{"item_id": 1, "name": "x"}])
    with pytest.raises(
        DataFormatError, match=r"items\.jsonl: missing column\(s\) title; columns found: item_id, name"
    ):
        load_dataset(generic)


def test_non_numeric_values_name_file_line_and_column(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "d", "userId,movieId,rating,timestamp\n1,1,4,10\n1,2,4,yesterday\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv: line 3, column 'timestamp' has 'yesterday'"):
        load_dataset(root)

    ml100k = _ml100k(tmp_path / "m", "1\t10\t4\t100\nbob\t10\t4\t100\n")
    with pytest.raises(
        DataFormatError, match=r"u\.data: line 2, column 'user_id' has 'bob', expected a whole-number id"
    ):
        load_dataset(ml100k)

    short = _ml100k(tmp_path / "s", "1\t10\t4\t100\n\n1\t20\t4\n")
    with pytest.raises(DataFormatError, match=r"u\.data: line 3, column 'timestamp' is empty"):
        load_dataset(short)

    generic = tmp_path / "g"
    _jsonl(generic / "items.jsonl", [{"item_id": "a", "title": "A"}])
    _write(
        generic / "interactions.jsonl",
        '{"user_id": "u", "item_id": "a", "timestamp": 1, "rating": 3}\n\n'
        '{"user_id": "u", "item_id": "a", "timestamp": 2, "rating": "great"}\n',
    )
    with pytest.raises(DataFormatError, match=r"interactions\.jsonl: line 3, column 'rating' has 'great'"):
        load_dataset(generic)
    _write(generic / "interactions.jsonl", '{"user_id": "u", "item_id": "a", "timestamp": 1.5}\n')
    with pytest.raises(DataFormatError, match=r"line 1, column 'timestamp' has 1\.5, expected a whole number"):
        load_dataset(generic)
    _write(
        generic / "interactions.jsonl",
        '{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": "u", "item_id": "a"}\n',
    )
    with pytest.raises(DataFormatError, match=r"line 2, column 'timestamp' is empty"):
        load_dataset(generic)
    _write(generic / "interactions.jsonl", '{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": \n')
    with pytest.raises(DataFormatError, match=r"interactions\.jsonl: line 2 is not valid JSON"):
        load_dataset(generic)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    pd.DataFrame({"item_id": ["a"], "title": ["A"]}).to_parquet(root / "items.parquet")
    frame = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "a"], "timestamp": ["1", "soon"]})
    frame.to_parquet(root / "interactions.parquet")
    with pytest.raises(DataFormatError, match=r"interactions\.parquet: row 2, column 'timestamp' has 'soon'"):
        load_dataset(root)


def test_repeated_item_id_in_items_file_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    _write(root / "ratings.dat", "1::10::4::1\n")
    _write(root / "movies.dat", "10::A (1990)::Drama\n10::B (1991)::Drama\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat: line 2 repeats item id 10 \(first on line 1\)"):
        load_dataset(root)


def test_duplicates_repeats_and_unknown_items_are_dropped_and_counted(tmp_path: Path, caplog) -> None:
    ratings = (
        "userId,movieId,rating,timestamp\n"
        "1,1,4,10\n1,1,4,10\n1,1,4,10\n"  # two exact duplicates of the first row
        "1,2,2,20\n1,2,5,40\n1,2,3,30\n"  # the same (user, item) three times: keep t=40
        "2,999,4,10\n2,998,4,11\n"  # unknown item ids
        "2,3,1,12\n2,3,2,12\n"  # same time, different rating: not a duplicate; the later line wins
    )
    root = _ml_latest(tmp_path / "d", ratings)
    with caplog.at_level(logging.WARNING, logger="mmrec_gen.data.loaders"):
        ds = load_dataset(root)
    assert ds.filter_counts == {
        "duplicate_rows": 2, "unknown_item_ids": 2, "repeat_interactions": 3, "items_without_image": 0,
    }  # fmt: skip
    assert ds.interactions.values.tolist() == [["1", "1", 10, 4.0], ["1", "2", 40, 5.0], ["2", "3", 12, 2.0]]
    warnings = " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 exact duplicate rows" in warnings
    assert "2 interactions whose item id is not in movies.csv" in warnings and "998, 999" in warnings
    assert "3 earlier repeats" in warnings
