"""The synthetic dataset: byte-identical per seed, loadable, structured as documented, and learnable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrec_gen.data.candidates import build_candidate_rows
from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.split import split_dataset
from mmrec_gen.data.synthetic import GENRES, generate_synthetic


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "synthetic")


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", num_users=15, num_items=40, seed=7)
    b = generate_synthetic(tmp_path / "b", num_users=15, num_items=40, seed=7)
    c = generate_synthetic(tmp_path / "c", num_users=15, num_items=40, seed=8)
    files = _files(a)
    assert files == _files(b)
    assert len([f for f in files if f.startswith("images/")]) == 40
    assert {"README.md", "items.jsonl", "interactions.jsonl"} <= set(files)
    assert _files(c)["interactions.jsonl"] != files["interactions.jsonl"]
    no_images = generate_synthetic(tmp_path / "d", num_users=15, num_items=40, seed=7, with_images=False)
    assert not (no_images / "images").exists()
    assert "image" not in json.loads((no_images / "items.jsonl").read_text().splitlines()[0])


def test_default_dataset_schema_and_structure(default_dir: Path) -> None:
    ds = load_dataset(default_dir)
    assert ds.source_format == "generic" and ds.name == "synthetic"
    assert len(ds.items) == 300 and ds.interactions["user_id"].nunique() == 200
    assert ds.filter_counts == {
        "duplicate_rows": 0, "unknown_item_ids": 0, "repeat_interactions": 0, "items_without_image": 0,
    }  # fmt: skip
    genre_names = {g.name for g in GENRES}
    titles = [item.title for item in ds.items.values()]
    assert len(set(titles)) == 300
    for item in ds.items.values():
        assert set(item.fields) == {"genres", "description", "year"}
        assert set(item.fields["genres"].split(", ")) <= genre_names
        assert item.fields["description"].endswith(".") and item.fields["description"].count(".") == 1
        assert 1970 <= int(item.fields["year"]) <= 2030
        assert item.image is not None and Path(item.image).is_file()
    lengths = ds.interactions.groupby("user_id").size()
    assert lengths.min() >= 12 and lengths.max() <= 40
    assert set(ds.interactions["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for _, group in ds.interactions.groupby("user_id"):
        assert np.all(np.diff(group["timestamp"].to_numpy()) > 0)


def test_series_are_watched_in_order(default_dir: Path) -> None:
    ds = load_dataset(default_dir)
    by_title = {item.title: item_id for item_id, item in ds.items.items()}
    sequels = {item_id: item.title for item_id, item in ds.items.items() if item.title.endswith((" II", " III"))}
    assert len(sequels) >= 10
    followed = watched = 0
    for _, group in ds.interactions.groupby("user_id"):
        position = {item_id: k for k, item_id in enumerate(group["item_id"])}
        for sequel, title in sequels.items():
            if sequel in position:
                watched += 1
                # "X II" follows "X", "X III" follows "X II".
                prequel = by_title[title[:-3] if title.endswith(" II") else title[:-1]]
                assert position[prequel] < position[sequel]
                followed += position[prequel] + 1 == position[sequel]
    assert watched >= 100 and followed / watched > 0.6  # sequels mostly come straight after their prequel


def test_image_colour_follows_the_primary_genre(default_dir: Path) -> None:
    ds = load_dataset(default_dir)
    colours = np.array([g.colour for g in GENRES], dtype=float)
    names = [g.name for g in GENRES]
    for item in ds.items.values():
        with Image.open(item.image) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
            corner = np.array(image.getpixel((62, 62)), dtype=float)  # background, away from every shape
        nearest = names[int(np.argmin(np.abs(colours - corner).sum(axis=1)))]
        assert nearest == item.fields["genres"].split(", ")[0]


def test_ratings_follow_taste_and_genre_heuristic_beats_random(default_dir: Path) -> None:
    ds = load_dataset(default_dir)
    primary = {item_id: item.fields["genres"].split(", ")[0] for item_id, item in ds.items.items()}
    # Users rate their most-watched genre higher than the rest.
    favourite, other = [], []
    for _, group in ds.interactions.groupby("user_id"):
        genres = [primary[i] for i in group["item_id"]]
        top = Counter(genres).most_common(1)[0][0]
        for g, r in zip(genres, group["rating"], strict=True):
            (favourite if g == top else other).append(r)
    assert np.mean(favourite) > np.mean(other) + 0.5

    result = split_dataset(ds)
    rows = build_candidate_rows(ds, result, "test", seed=0, num_candidates=20)
    hits = 0
    for row in rows:
        history, _ = result.users[row.user_id].history_and_target("test")
        share = Counter(primary[h.item_id] for h in history)
        # Rank by the fraction of the history sharing the candidate's genre; ties keep the (shuffled) list order.
        best = max(row.candidates, key=lambda c: share[primary[c]] / len(history))
        hits += best == row.target
    hr_at_1 = hits / len(rows)
    assert len(rows) == 200
    assert hr_at_1 > 0.15  # random is 1/20 = 0.05
