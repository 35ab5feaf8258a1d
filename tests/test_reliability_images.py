"""Images are untrusted input (issue 11 cases 11 and 14, issue 13 part 3; docs/RELIABILITY.md R7).

Every bad-image kind is made here with Pillow (or by hand, for the decompression bomb) and read under each
--on-bad-image policy: bad files are skipped (None), replaced by the grey placeholder, or stop the run with an
error naming the file; odd files (CMYK, P, RGBA, 16-bit, EXIF-rotated, wrong extension) load as upright RGB under
every policy. `mmrec data check-images` lists them; the feature table's report holds the full list.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrec_gen.data.images import (
    BAD_IMAGE_POLICIES,
    PLACEHOLDER_COLOR,
    BadImageError,
    ImageReader,
    check_images,
    open_image,
)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A valid 1-bit grey PNG of width x height, one colour: ~20 KB on disk, 144 MP decoded. Written row by row
    through zlib, so making it never holds the image in memory."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte 0 + packed 1-bit pixels
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    )
    return path


def _two_tone(size=(40, 20)) -> Image.Image:
    """Left half red, right half blue (to see where a rotation puts them)."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return img


def make_bad(root: Path) -> dict[str, Path]:
    """One file per bad kind (the key is the kind open_image must report)."""
    root.mkdir(parents=True, exist_ok=True)
    good_png, good_jpg = root / "ok.png", root / "ok.jpg"
    _two_tone().save(good_png)
    _two_tone().save(good_jpg, quality=95)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    png = good_png.read_bytes()
    (root / "trunc.png").write_bytes(png[: len(png) // 2])
    Image.effect_noise((256, 256), 64).convert("RGB").save(root / "big.jpg", quality=95)
    jpg = (root / "big.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    write_bomb_png(root / "bomb.png")
    return {
        "missing": root / "nosuch.jpg",
        "empty": root / "empty.jpg",
        "not-an-image": root / "text.png",
        "truncated": root / "trunc.png",
        "truncated-jpeg": root / "trunc.jpg",
        "oversized": root / "bomb.png",
    }


def make_odd(root: Path) -> dict[str, Path]:
    """One file per odd kind: usable after a fix."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # pure red in CMYK
    Image.new("RGB", (16, 16), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "p.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black: white once composited
    rgba.save(root / "rgba.png")
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(root / "i16.png")  # 32896 / 257 = 128 grey
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge becomes the top
    _two_tone().save(root / "rotated.jpg", exif=exif, quality=95)
    _two_tone().save(root / "png_as.jpg", format="PNG")
    return {
        "odd-mode:CMYK": root / "cmyk.jpg",
        "odd-mode:P": root / "p.png",
        "odd-mode:RGBA": root / "rgba.png",
        "odd-mode:I;16": root / "i16.png",
        "exif-rotated": root / "rotated.jpg",
        "wrong-extension": root / "png_as.jpg",
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return make_bad(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return make_odd(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize("policy", BAD_IMAGE_POLICIES)
@pytest.mark.parametrize("kind", ["missing", "empty", "not-an-image", "truncated", "truncated-jpeg", "oversized"])
def test_each_bad_image_under_each_policy(bad_files, kind, policy):
    path = bad_files[kind]
    reader = ImageReader(policy, placeholder_size=32)
    if policy == "fail":
        with pytest.raises(BadImageError) as err:
            reader.read(str(path), "i7")
        assert str(path) in str(err.value) and "Fix:" in str(err.value)
    else:
        img = reader.read(str(path), "i7")
        if policy == "skip":
            assert img is None
        else:
            assert img.mode == "RGB" and img.size == (32, 32)
            assert set(img.getdata()) == {PLACEHOLDER_COLOR}
    expected = "truncated" if kind == "truncated-jpeg" else kind
    assert reader.report.bad == [
        {"path": str(path), "item_id": "i7", "problem": expected, "detail": reader.report.bad[0]["detail"]}
    ]
    assert reader.report.counts() == {expected: 1}


def test_good_images_are_not_bad(bad_files):
    reader = ImageReader("fail")
    for name in ("ok.png", "ok.jpg", "big.jpg"):
        assert reader.read(str(bad_files["empty"].parent / name)).mode == "RGB"
    assert reader.report.bad == [] and reader.report.fixed == [] and reader.report.read == 3
    assert reader.read(None) is None and reader.report.without_image == 1  # no image at all is not a bad image


def test_decompression_bomb_is_refused_before_decoding(bad_files):
    """The 12000x12000 PNG (144 MP, ~20 KB on disk) is refused from its header: a child process that reads it
    peaks far below the 144 MB one decoded copy would take."""
    bomb = bad_files["oversized"]
    assert bomb.stat().st_size < 1_000_000
    code = (
        "import resource, sys\n"
        "from mmrec_gen.data.images import open_image, BadImageError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    open_image({str(bomb)!r})\nexcept BadImageError as e:\n    print(e.kind)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "oversized"
    assert int(out[1]) < 40, f"reading the bomb grew the peak RSS by {out[1]} MB"


def test_max_image_pixels_is_configurable(bad_files):
    ok = str(bad_files["empty"].parent / "ok.png")  # 40 x 20 = 800 pixels
    assert open_image(ok, max_pixels=800).image.size == (40, 20)
    with pytest.raises(BadImageError, match="800 pixels, above --max-image-pixels 799"):
        open_image(ok, max_pixels=799)


@pytest.mark.parametrize("policy", BAD_IMAGE_POLICIES)
def test_odd_images_load_as_upright_rgb_under_every_policy(odd_files, policy):
    reader = ImageReader(policy)
    imgs = {kind: reader.read(str(path), kind) for kind, path in odd_files.items()}
    assert all(img.mode == "RGB" for img in imgs.values())
    assert imgs["odd-mode:CMYK"].getpixel((8, 8))[0] > 200 and imgs["odd-mode:CMYK"].getpixel((8, 8))[2] < 60
    assert imgs["odd-mode:P"].getpixel((8, 8)) == (0, 200, 0)
    assert imgs["odd-mode:RGBA"].getpixel((8, 8)) == (255, 255, 255)  # transparent -> white, not black
    assert imgs["odd-mode:I;16"].getpixel((8, 8)) == (128, 128, 128)  # scaled from 16 bits, not clipped to white
    rotated = imgs["exif-rotated"]
    assert rotated.size == (20, 40)  # 40x20 stored, orientation 6: upright it is 20 wide, 40 high
    top, bottom = rotated.getpixel((10, 5)), rotated.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # the red left half is on top
    assert imgs["wrong-extension"].size == (40, 20)
    assert reader.report.bad == []
    fixes = {entry["item_id"]: [f["kind"] for f in entry["fixes"]] for entry in reader.report.fixed}
    assert fixes == {
        "odd-mode:CMYK": ["odd-mode"], "odd-mode:P": ["odd-mode"], "odd-mode:RGBA": ["odd-mode"],
        "odd-mode:I;16": ["odd-mode"], "exif-rotated": ["exif-rotated"], "wrong-extension": ["wrong-extension"],
    }  # fmt: skip


def test_report_lists_every_bad_file_and_the_log_line_names_three(bad_files, odd_files):
    entries = [(k, str(p)) for k, p in {**bad_files, **odd_files}.items()] + [("none", None)]
    report = check_images(entries)
    assert [b["item_id"] for b in report.bad] == list(bad_files)
    assert report.to_dict()["bad_by_problem"] == {
        "empty": 1, "missing": 1, "not-an-image": 1, "oversized": 1, "truncated": 2,
    }  # fmt: skip
    assert report.read == len(entries) - 1 and report.without_image == 1
    line = report.summary_line("run.json")
    assert line.startswith(f"6 bad images of {len(entries) - 1} read (--on-bad-image skip")
    named = [str(p) for p in bad_files.values() if str(p) in line]
    assert named == [str(p) for p in list(bad_files.values())[:3]] and "and 3 more" in line
    assert line.endswith("the full list is in run.json")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmrec_gen", "data", "check-images", *args], capture_output=True, text=True
    )


def test_check_images_command_lists_bad_and_odd_files(tmp_path):
    folder = tmp_path / "images"
    bad = make_bad(folder)
    odd = make_odd(folder)
    res = _run_cli("--images", str(folder), "--json")
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    problems = {Path(b["path"]).name: b["problem"] for b in out["bad"]}
    assert problems == {
        "empty.jpg": "empty", "text.png": "not-an-image", "trunc.png": "truncated", "trunc.jpg": "truncated",
        "bomb.png": "oversized",
    }  # fmt: skip
    fixed = {Path(f["path"]).name: [x["kind"] for x in f["fixes"]] for f in out["fixed"]}
    assert fixed == {
        "cmyk.jpg": ["odd-mode"], "p.png": ["odd-mode"], "rgba.png": ["odd-mode"], "i16.png": ["odd-mode"],
        "rotated.jpg": ["exif-rotated"], "png_as.jpg": ["wrong-extension"],
    }  # fmt: skip
    table = _run_cli("--images", str(folder))
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert any(line.split()[:1] == ["oversized"] and str(bad["oversized"]) in line for line in lines)
    assert any("exif-rotated" in line and str(odd["exif-rotated"]) in line for line in lines)
    # A folder of good (or merely odd) images passes.
    clean = tmp_path / "clean"
    make_odd(clean)
    assert _run_cli("--images", str(clean)).returncode == 0


def test_check_images_with_data_finds_missing_files(tmp_path):
    from mmrec_gen.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "d", num_users=6, num_items=12, seed=2, with_images=True)
    images = data / "images"
    files = sorted(images.iterdir())
    files[0].write_bytes(b"")  # empty
    files[1].unlink()  # the item has no image any more: counted, not bad
    res = _run_cli("--images", str(images), "--data", str(data), "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 1 and [Path(b["path"]).name for b in out["bad"]] == [files[0].name]
    assert out["items_without_image"] == 1 and out["images_read"] == 11


# ------------------------------------------------------------------------------ the image features of a catalogue


@pytest.fixture(scope="module")
def damaged_catalogue(tmp_path_factory):
    """A synthetic dataset whose first four item images are bad (empty, not an image, truncated, oversized)."""
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path_factory.mktemp("cat"), num_users=6, num_items=12, seed=4, with_images=True)
    images = data / "images"
    files = sorted(images.iterdir())
    files[0].write_bytes(b"")
    files[1].write_text("not an image")
    files[2].write_bytes(files[2].read_bytes()[:60])
    write_bomb_png(files[3], 6000, 6000)
    ds = load_dataset(data, images_dir=images)
    return ds, sorted(ds.items), [str(f) for f in files[:4]]


def test_image_features_follow_the_policy_and_keep_the_full_list(damaged_catalogue, tmp_path, caplog):
    from mmrec_gen.features.image_features import image_feature_table, image_features, load_efficientnet_lite0

    ds, ids, bad_paths = damaged_catalogue
    bad_rows = [ids.index(Path(p).stem) for p in bad_paths]
    good_rows = [k for k in range(len(ids)) if k not in bad_rows]
    common = dict(size=64, cache_dir=str(tmp_path), max_image_pixels=1_000_000)

    with caplog.at_level("WARNING"):
        skip = image_feature_table("efficientnet-lite0", ds, ids, on_bad_image="skip", **common)
    assert not skip.table[bad_rows].any() and skip.table[good_rows].any(axis=1).all()
    assert [b["path"] for b in skip.report.bad] == bad_paths
    assert skip.report.counts() == {"empty": 1, "not-an-image": 1, "oversized": 1, "truncated": 1}
    saved = json.loads(skip.report_path.read_text())
    assert [b["path"] for b in saved["bad"]] == bad_paths and saved["bad_images"] == 4
    line = next(r.getMessage() for r in caplog.records if "bad images" in r.getMessage())
    assert "4 bad images of 12 read" in line and all(p in line for p in bad_paths[:3]) and bad_paths[3] not in line
    assert str(skip.report_path) in line

    # A cache hit gives the same table and the same report, logged again.
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = image_feature_table("efficientnet-lite0", ds, ids, on_bad_image="skip", **common)
    assert np.array_equal(again.table, skip.table) and again.report.bad == skip.report.bad
    assert any("4 bad images" in r.getMessage() for r in caplog.records)

    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), PLACEHOLDER_COLOR).save(grey)
    grey_features = image_features(load_efficientnet_lite0(), [str(grey)], size=64, progress=False)[0]
    placeholder = image_feature_table("efficientnet-lite0", ds, ids, on_bad_image="placeholder", **common)
    assert np.allclose(placeholder.table[bad_rows], grey_features, atol=1e-5) and grey_features.any()
    assert np.array_equal(placeholder.table[good_rows], skip.table[good_rows])
    assert len(placeholder.report.bad) == 4

    with pytest.raises(BadImageError, match=f"^{bad_paths[0]}: bad image \\(empty"):
        image_feature_table("efficientnet-lite0", ds, ids, on_bad_image="fail", **common)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # skip and placeholder; nothing cached for the failed run


def test_mse_baseline_applies_the_policy_and_writes_every_bad_image(tmp_path, caplog):
    """`mmrec baseline mse --images`: under skip, rows count the bad images and <out>.images.json lists them all;
    under fail, the run stops before any training, naming the first bad file, and writes no results."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.features.text_encoders import minilm_dir
    from mmrec_gen.recsys.baselines import MSEConfig, run_baseline

    bert = tmp_path / "bert"
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(bert)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(bert)
    data = generate_synthetic(tmp_path / "d", num_users=20, num_items=40, seed=2, min_len=8, max_len=12)
    files = sorted((data / "images").iterdir())
    bad = [files[5], files[9]]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(bad[1].read_bytes()[:50])

    def config(policy: str, out: str) -> MSEConfig:
        return MSEConfig(data=str(data), images=str(data / "images"), out=str(tmp_path / out), encoder=str(bert),
                         epochs=1, image_size=64, cache_dir=str(tmp_path / "c"), embeddings_dir=str(tmp_path / "emb"),
                         on_bad_image=policy)  # fmt: skip

    run = run_baseline("mse", config("skip", "skip.jsonl"))
    assert run.rows[0]["meta"]["bad_images"] == {
        "policy": "skip", "bad_images": 2, "bad_by_problem": {"empty": 1, "truncated": 1},
    }  # fmt: skip
    sidecar = json.loads((tmp_path / "skip.jsonl.images.json").read_text())
    assert [(b["path"], b["problem"]) for b in sidecar["bad"]] == [(str(bad[0]), "empty"), (str(bad[1]), "truncated")]
    with pytest.raises(BadImageError, match=f"^{bad[0]}: bad image \\(empty"):
        run_baseline("mse", config("fail", "fail.jsonl"))
    assert not (tmp_path / "fail.jsonl").exists()
    with pytest.raises(ValueError, match="--on-bad-image must be one of skip, placeholder, fail"):
        config("ignore", "x.jsonl")


def test_image_item_tokens_treat_a_skipped_file_as_no_image(damaged_catalogue, tmp_path):
    """Item-token features: under skip a bad file's item gets the no-image flag (the projector's learned no-image
    vector), under placeholder it keeps its image (the grey one); the report rides along for the run summary."""
    from mmrec_gen.data.split import split_dataset
    from mmrec_gen.recsys.item_features import build_item_features

    ds, ids, bad_paths = damaged_catalogue
    bad_ids = {Path(p).stem for p in bad_paths}
    common = dict(split="test", seed=0, cache_dir=str(tmp_path), max_image_pixels=1_000_000)
    split = split_dataset(ds)
    skip = build_item_features(ds, split, ["image"], on_bad_image="skip", **common)
    assert {i for i, h in zip(skip.item_ids, skip.has_image, strict=True) if not h} == bad_ids
    assert skip.image_report["bad_images"] == 4
    placeholder = build_item_features(ds, split, ["image"], on_bad_image="placeholder", **common)
    assert placeholder.has_image.all() and placeholder.image_report["policy"] == "placeholder"
