"""A small synthetic multimodal dataset with a learnable signal, in the generic format.

The generator (everything derives from `rng_for(seed, ...)`, so a seed gives byte-identical files):

- **Items**: each has a primary genre out of `GENRES` (8) and, 30% of the time, a second one; an English title made
  from genre-specific words ("The Silent Forest", "Quantum Frontier"); a one-sentence description; a year; a
  popularity weight (Zipf-like). About 15% of titles start a series of 2-3 items "X", "X II", "X III".
- **Images** (`images/<item_id>.png`, 64x64): the background is the primary genre's colour and the centre shape is
  the genre's shape (each genre has its own colour and shape); a second genre adds a small corner mark in its colour.
- **Users**: a taste vector drawn from Dirichlet(0.3) over the genres.
- **Sequences** (12-40 items): after part k of a series the user watches part k+1 with probability 0.75, and a later
  part is never watched before the earlier one; otherwise the next genre repeats the previous item's genre with
  probability 0.4, else it is drawn from the user's taste (10% uniform exploration); the item is then drawn from
  that genre by popularity. Timestamps strictly increase (1 hour to 5 days apart).
- **Ratings** 1-5: 1.8 + 2.8 x (taste for the item's genres / the user's top taste), plus Gaussian noise (sd 0.7).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmrec_gen.data.seeding import rng_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Genre:
    name: str
    colour: tuple[int, int, int]
    shape: str
    kind: str  # noun phrase for descriptions
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    subjects: tuple[str, ...]
    plots: tuple[str, ...]


GENRES = (
    Genre("Sci-Fi", (40, 90, 200), "triangle", "science-fiction adventure",
          ("Quantum", "Stellar", "Robot", "Cyber", "Orbital", "Neon", "Galactic", "Silent"),
          ("Uprising", "Frontier", "Signal", "Colony", "Horizon", "Protocol", "Odyssey", "Machine"),
          ("a stranded astronaut", "a rogue android", "a starship crew", "a young engineer"),
          ("races to stop a dying star", "decodes a signal from deep space", "leads a machine rebellion",
           "searches for a new home world")),
    Genre("Fantasy", (130, 60, 170), "star", "fantasy epic",
          ("Enchanted", "Silver", "Dragon", "Forgotten", "Crystal", "Hidden", "Ancient", "Winter"),
          ("Crown", "Kingdom", "Forest", "Sword", "Oracle", "Tower", "Throne", "Realm"),
          ("an apprentice wizard", "an exiled princess", "a reluctant knight", "a talking fox"),
          ("must recover a stolen crown", "breaks an ancient curse", "tames the last dragon",
           "crosses the edge of the known world")),
    Genre("Horror", (120, 15, 25), "cross", "horror story",
          ("Haunted", "Hollow", "Crimson", "Midnight", "Cursed", "Silent", "Rotten", "Black"),
          ("House", "Manor", "Woods", "Asylum", "Ritual", "Whisper", "Cellar", "Harvest"),
          ("a family of five", "a night-shift nurse", "four old friends", "a lonely caretaker"),
          ("hears something living in the walls", "wakes an old evil", "cannot leave a fog-bound town",
           "finds the door that should stay shut")),
    Genre("Romance", (225, 110, 160), "circle", "romance",
          ("Summer", "Paper", "Second", "Golden", "Lost", "Sweet", "Autumn", "Distant"),
          ("Hearts", "Letters", "Promise", "Wedding", "Chance", "Kiss", "Season", "Harbor"),
          ("a shy florist", "two rival chefs", "a widowed architect", "a touring violinist"),
          ("falls for a stranger on a night train", "rediscovers a first love", "plans the wrong wedding",
           "trades letters with an unknown admirer")),
    Genre("Comedy", (240, 200, 40), "ring", "comedy",
          ("Crazy", "Accidental", "Big", "Lucky", "Awkward", "Totally", "Wild", "Fake"),
          ("Vacation", "Roommates", "Heist", "Weekend", "Reunion", "Boss", "Party", "Neighbors"),
          ("a clumsy substitute teacher", "two hopeless brothers", "a retired magician", "an overconfident intern"),
          ("accidentally runs a small country", "must survive a family reunion", "fakes a road trip",
           "swaps lives with a celebrity")),
    Genre("Thriller", (70, 75, 85), "diamond", "thriller",
          ("Deadly", "Final", "Silent", "Broken", "Hidden", "Cold", "Double", "Last"),
          ("Witness", "Code", "Conspiracy", "Target", "Alibi", "Deal", "Pursuit", "Verdict"),
          ("a disgraced detective", "an undercover agent", "a forensic accountant", "a hunted journalist"),
          ("uncovers a conspiracy at the top", "has one night to clear her name", "tracks a vanishing witness",
           "races a bomb across the city")),
    Genre("Documentary", (60, 150, 70), "square", "documentary",
          ("Wild", "Deep", "Frozen", "Hidden", "Living", "Vanishing", "Great", "Secret"),
          ("Oceans", "Planet", "Rivers", "Islands", "Migration", "Reef", "Desert", "Jungle"),
          ("a team of biologists", "a remote village", "a young climber", "a family of wolves"),
          ("follows the seasons of a changing land", "documents a year on a melting glacier",
           "tracks the longest migration on Earth", "explores life at the bottom of the sea")),
    Genre("Animation", (245, 140, 30), "hexagon", "animated film",
          ("Little", "Brave", "Magic", "Tiny", "Happy", "Flying", "Funny", "Bright"),
          ("Friends", "Robot", "Island", "Kitten", "Balloon", "Dragon", "Garden", "Toys"),
          ("a curious penguin", "a lost toy robot", "a brave little mouse", "a cloud who wants to rain"),
          ("sets off to find its way home", "saves the village festival", "learns to fly",
           "makes an unlikely friend")),
)  # fmt: skip
TONES = ("gripping", "quiet", "sweeping", "playful", "moving", "bold", "strange", "warm")
ROMAN = ("", " II", " III")
IMAGE_SIZE = 64
_START_TIME = 1_500_000_000


@dataclass
class _Item:
    item_id: str
    title: str
    genres: tuple[int, ...]  # indices into GENRES, primary first
    description: str
    year: int
    popularity: float
    series: int  # series number, -1 when not in a series
    part: int  # 0-based part within the series


def _description(rng: np.random.Generator, genre: Genre, base_title: str, part: int) -> str:
    subject, plot = rng.choice(genre.subjects), rng.choice(genre.plots)
    if part:
        return f"The {('second', 'third')[part - 1]} chapter of {base_title}, in which {subject} {plot}."
    tone = rng.choice(TONES)
    article = "An" if tone[0] in "aeiou" else "A"
    return f"{article} {tone} {genre.kind} about {subject} who {plot}."


def _make_items(seed: int, num_items: int) -> list[_Item]:
    rng = rng_for(seed, "synthetic", "catalogue")
    titles_per_genre = []
    for g in GENRES:
        combos = [f"The {a} {n}" for a in g.adjectives for n in g.nouns] + [
            f"{a} {n}" for a in g.adjectives for n in g.nouns
        ]
        titles_per_genre.append([combos[i] for i in rng.permutation(len(combos))])
    next_title = [0] * len(GENRES)
    used: set[str] = set()
    drafts: list[tuple[str, tuple[int, ...], str, int, int, int]] = []
    series_count = 0
    while len(drafts) < num_items:
        primary = int(rng.integers(len(GENRES)))
        genres = (primary,)
        if rng.random() < 0.3:
            genres = (primary, int(rng.choice([i for i in range(len(GENRES)) if i != primary])))
        pool = titles_per_genre[primary]
        base, round_ = pool[next_title[primary] % len(pool)], 0
        next_title[primary] += 1
        while base in used:  # all word pairs taken: reuse them with a "Redux" marker rather than duplicate
            round_ += 1
            base = f"{pool[int(rng.integers(len(pool)))]} Redux" + (f" {round_}" if round_ > 1 else "")
        used.add(base)
        length = int(rng.integers(2, 4)) if rng.random() < 0.15 else 1
        length = min(length, num_items - len(drafts))
        series = series_count if length > 1 else -1
        series_count += length > 1
        year = int(rng.integers(1970, 2016))
        for part in range(length):
            title = base + ROMAN[part]
            used.add(title)
            drafts.append((title, genres, _description(rng, GENRES[primary], base, part), year, series, part))
            year += int(rng.integers(2, 5))
    order = rng.permutation(num_items)  # ids in shuffled order, so a series is not a run of consecutive ids
    popularity = 1.0 / (rng.permutation(num_items) + 5.0) ** 0.8
    width = max(4, len(str(num_items)))
    items = []
    for new_index, old in enumerate(order):
        title, genres, description, year, series, part = drafts[old]
        items.append(_Item(f"i{new_index + 1:0{width}d}", title, genres, description, year, float(popularity[old]),
                           series, part))  # fmt: skip
    return items


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], fill=fill)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=fill)
    elif shape == "star":
        points = [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
        draw.polygon(points, fill=fill)
    else:  # pragma: no cover - GENRES only uses the shapes above
        raise ValueError(f"unknown shape {shape!r}")


def _draw_image(seed: int, item: _Item, path: Path) -> None:
    rng = rng_for(seed, "synthetic", "image", item.item_id)
    primary = GENRES[item.genres[0]]
    jitter = rng.integers(-18, 19, size=3)
    background = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(primary.colour, jitter, strict=True))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    # A light shape on a dark background and a dark one on a light background, so the shape is always visible.
    light = sum(background) > 420
    fill = (35, 35, 40) if light else (240, 240, 235)
    cx, cy = IMAGE_SIZE / 2 + rng.integers(-5, 6), IMAGE_SIZE / 2 + rng.integers(-5, 6)
    _draw_shape(draw, primary.shape, cx, cy, float(rng.integers(15, 21)), fill)
    if len(item.genres) > 1:
        second = GENRES[item.genres[1]]
        draw.rectangle((2, 2, 13, 13), fill=(255, 255, 255))
        _draw_shape(draw, second.shape, 7.5, 7.5, 5.0, second.colour)
    image.save(path, format="PNG")


def _user_sequence(seed: int, user_id: str, items: list[_Item], min_len: int, max_len: int) -> list[dict]:
    rng = rng_for(seed, "synthetic", "user", user_id)
    num_genres = len(GENRES)
    taste = rng.dirichlet(np.full(num_genres, 0.3))
    length = min(int(rng.integers(min_len, max_len + 1)), len(items))
    popularity = np.array([it.popularity for it in items])
    primary = np.array([it.genres[0] for it in items])
    by_series_part = {(it.series, it.part): i for i, it in enumerate(items) if it.series >= 0}
    seen = np.zeros(len(items), dtype=bool)
    # An item is available when unseen and, for part k > 0 of a series, part k-1 has been seen.
    available = np.array([it.series < 0 or it.part == 0 for it in items])
    timestamp = _START_TIME + int(rng.integers(0, 2 * 365 * 86400))
    events: list[dict] = []
    prev: int | None = None
    for _ in range(length):
        choice = None
        if prev is not None and items[prev].series >= 0:
            sequel = by_series_part.get((items[prev].series, items[prev].part + 1))
            if sequel is not None and not seen[sequel] and rng.random() < 0.75:
                choice = sequel
        if choice is None:
            if prev is not None and rng.random() < 0.4:
                genre = items[prev].genres[0]
            else:
                genre = int(rng.choice(num_genres, p=0.9 * taste + 0.1 / num_genres))
            mask = available & ~seen & (primary == genre)
            if not mask.any():
                mask = available & ~seen
            weights = np.where(mask, popularity, 0.0)
            choice = int(rng.choice(len(items), p=weights / weights.sum()))
        item = items[choice]
        seen[choice] = True
        sequel = by_series_part.get((item.series, item.part + 1)) if item.series >= 0 else None
        if sequel is not None:
            available[sequel] = True
        affinity = (taste[item.genres[0]] + 0.5 * sum(taste[g] for g in item.genres[1:])) / taste.max()
        rating = int(np.clip(round(1.8 + 2.8 * min(affinity, 1.0) + rng.normal(0.0, 0.7)), 1, 5))
        events.append({"user_id": user_id, "item_id": item.item_id, "timestamp": timestamp, "rating": rating})
        timestamp += int(rng.integers(3600, 5 * 86400))
        prev = choice
    return events


_README = """# Synthetic multimodal recommendation data

Generated by `mmrec_gen.data.synthetic.generate_synthetic` (num_users={num_users}, num_items={num_items},
seed={seed}, with_images={with_images}, min_len={min_len}, max_len={max_len}); the same arguments give
byte-identical files.

- `items.jsonl`: item_id, title, genres (primary first), description (one sentence), year{image_note}.
- `interactions.jsonl`: user_id, item_id, timestamp (Unix seconds, increasing per user), rating (1-5).
{images_line}
Genres: {genres}. Each user has a Dirichlet(0.3) taste over the genres; the next item tends to share the previous
item's genre, series ("X", "X II", "X III") are watched in order, and ratings rise with how well the item's genres
match the user's taste. Load it with `mmrec_gen.data.loaders.load_dataset(<this folder>)`.
"""


def generate_synthetic(
    out_dir: str | Path,
    *,
    num_users: int = 200,
    num_items: int = 300,
    seed: int = 0,
    with_images: bool = True,
    min_len: int = 12,
    max_len: int = 40,
) -> Path:
    """Write a synthetic dataset in the generic format to `out_dir` and return the folder (see module docstring)."""
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users} and {num_items}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = _make_items(seed, num_items)
    if with_images:
        (out / "images").mkdir(exist_ok=True)
        for item in items:
            _draw_image(seed, item, out / "images" / f"{item.item_id}.png")
    with (out / "items.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for item in items:
            record = {
                "item_id": item.item_id,
                "title": item.title,
                "genres": ", ".join(GENRES[g].name for g in item.genres),
                "description": item.description,
                "year": item.year,
            }
            if with_images:
                record["image"] = f"images/{item.item_id}.png"
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    width = max(4, len(str(num_users)))
    with (out / "interactions.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for u in range(num_users):
            for event in _user_sequence(seed, f"u{u + 1:0{width}d}", items, min_len, max_len):
                handle.write(json.dumps(event, allow_nan=False) + "\n")
    readme = _README.format(
        num_users=num_users, num_items=num_items, seed=seed, with_images=with_images, min_len=min_len,
        max_len=max_len, genres=", ".join(f"{g.name} ({g.shape})" for g in GENRES),
        image_note=", image (path relative to this folder)" if with_images else "",
        images_line="- `images/<item_id>.png`: 64x64, background colour and centre shape given by the primary genre.\n"
        if with_images else "",
    )  # fmt: skip
    (out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    logger.info("wrote synthetic dataset to %s (%d users, %d items)", out, num_users, num_items)
    return out
