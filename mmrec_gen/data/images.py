"""Item images are untrusted input: the one place the toolkit opens an image file (docs/RELIABILITY.md R7).

`open_image(path, max_pixels=...)` returns an RGB `PIL.Image` or raises `BadImageError` naming the file and what is
wrong with it. A *bad* image cannot be used:

- ``missing``: the path does not exist (a generic ``image`` column pointing nowhere); an item with no image at all
  (``Item.image is None``) is not a bad image, it simply has none;
- ``empty``: a 0-byte file;
- ``not-an-image``: Pillow does not recognise the bytes (or the format is not one we read);
- ``truncated``: the header reads but the pixel data does not decode (cut-off or corrupt file);
- ``oversized``: more than `max_pixels` pixels (a decompression bomb: a 12000x12000 one-colour PNG is 300 KB on
  disk and 432 MB decoded). It is refused from the header, before any pixel is decoded.

An *odd* image is usable after a fix, and the fix is recorded as a note: ``odd-mode`` (CMYK, P, RGBA/LA, 16-bit
and other modes become RGB: transparency is composited on white and 16-bit values are scaled to 8 bits, not
clipped), ``exif-rotated`` (the EXIF orientation is applied with `ImageOps.exif_transpose`, so the image is upright)
and ``wrong-extension`` (e.g. PNG bytes in a .jpg file; Pillow reads the content, so nothing else changes).

`ImageReader` applies the ``--on-bad-image`` policy to bad images and counts them in an `ImageReport`:
``skip`` (the item gets no image, i.e. no-image features), ``placeholder`` (a fixed grey image) or ``fail`` (stop at
once, naming the file). The report holds every bad and every fixed file, so a run can write the full list to its
summary while the log names the first three and the count.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec_gen.data.errors import DataFormatError

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "placeholder", "fail")
# 25 megapixels: a 6000x4000 camera photo passes, a 10000x10000 image (100 MP, 300 MB as RGB) does not.
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
BAD_KINDS = ("missing", "empty", "not-an-image", "truncated", "oversized")
FIX_KINDS = ("odd-mode", "exif-rotated", "wrong-extension")
PLACEHOLDER_COLOR = (128, 128, 128)
PLACEHOLDER_SIZE = 224
# What item images may be; everything else is refused as not-an-image (fewer decoders, smaller attack surface).
READ_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (camera) files
_SUFFIX_FORMATS = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".webp": {"WEBP"}, ".gif": {"GIF"},
    ".bmp": {"BMP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"},
}  # fmt: skip
_PLAIN_MODES = ("RGB", "L")  # converted to RGB without a note
_EXIF_ORIENTATION = 0x0112


class BadImageError(DataFormatError):
    """An image file that cannot be used; `kind` is one of BAD_KINDS."""

    def __init__(self, path: str | os.PathLike[str] | None, kind: str, detail: str) -> None:
        self.path = None if path is None else str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: bad image ({kind}: {detail}). Fix: {_FIXES[kind]}")


_FIXES = {
    "missing": "add the file, correct the item's image path, or pass --on-bad-image skip|placeholder",
    "empty": "replace the 0-byte file, or pass --on-bad-image skip|placeholder",
    "not-an-image": "replace it with a JPEG/PNG/WebP file, or pass --on-bad-image skip|placeholder",
    "truncated": "replace the damaged file, or pass --on-bad-image skip|placeholder",
    "oversized": "downscale the image, raise --max-image-pixels if you trust it, or pass --on-bad-image "
    "skip|placeholder",
}


def check_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {policy!r}")


@dataclass(frozen=True)
class ImageNote:
    """One fix applied to a usable image (kind in FIX_KINDS)."""

    kind: str
    detail: str


@dataclass(frozen=True)
class LoadedImage:
    image: Any  # PIL.Image.Image, RGB, upright
    notes: tuple[ImageNote, ...] = ()
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the file, before EXIF rotation
    source_mode: str = "RGB"


def placeholder_image(size: int = PLACEHOLDER_SIZE):
    """The fixed grey RGB image that stands in for a bad one under --on-bad-image placeholder."""
    from PIL import Image

    return Image.new("RGB", (size, size), PLACEHOLDER_COLOR)


def _to_rgb(img):
    """Any Pillow mode -> RGB: alpha composited on white, 16/32-bit integer and float data scaled to 8 bits."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255 (a plain convert() would clip everything above 255 to white)
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _exif_orientation(img) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make a good image bad; it is ignored
        return 1


def open_image(path: str | os.PathLike[str] | None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedImage:
    """The image at `path` as an upright RGB image, or BadImageError (see the module docstring for the kinds).

    Its size is checked against `max_pixels` from the header, before the pixel data is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if max_pixels < 1:
        raise ValueError(f"--max-image-pixels must be >= 1, got {max_pixels}")
    if path is None or not os.path.exists(path):
        raise BadImageError(path, "missing", "no such file")
    if os.path.isdir(path):
        raise BadImageError(path, "not-an-image", "a folder, not a file")
    if os.path.getsize(path) == 0:
        raise BadImageError(path, "empty", "0 bytes")
    notes: list[ImageNote] = []
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's DecompressionBombWarning (its limit is ~89 MP).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path, formats=READ_FORMATS)
        except Image.DecompressionBombError as exc:
            raise BadImageError(path, "oversized", str(exc)) from None
        except (UnidentifiedImageError, SyntaxError, ValueError, EOFError) as exc:
            raise BadImageError(path, "not-an-image", f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise BadImageError(path, "not-an-image", f"cannot read it ({exc})") from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise BadImageError(
                    path, "oversized", f"{width}x{height} = {width * height} pixels, above --max-image-pixels "
                    f"{max_pixels}; refused before decoding"
                )  # fmt: skip
            expected = _SUFFIX_FORMATS.get(Path(path).suffix.lower())
            if expected is not None and img.format not in expected:
                notes.append(ImageNote("wrong-extension", f"{img.format} data in a {Path(path).suffix} file"))
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise BadImageError(path, "truncated", f"pixel data does not decode ({exc})") from None
            mode = img.mode
            orientation = _exif_orientation(img)
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                notes.append(ImageNote("exif-rotated", f"EXIF orientation {orientation} applied"))
            if mode not in _PLAIN_MODES:
                notes.append(ImageNote("odd-mode", f"mode {mode} converted to RGB"))
            rgb = _to_rgb(img)
            if rgb is img:
                rgb = img.copy()  # detach from the file handle closed by `with`
    return LoadedImage(rgb, tuple(notes), (width, height), mode)


@dataclass
class ImageReport:
    """Every bad file (and every fixed one) seen by one reader, for the log and the run summary."""

    policy: str = "skip"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    read: int = 0
    without_image: int = 0  # items with no image at all (not bad)
    bad: list[dict] = field(default_factory=list)  # {"path", "item_id", "problem", "detail"}
    fixed: list[dict] = field(default_factory=list)  # {"path", "item_id", "fixes": [{"kind", "detail"}]}

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(b["problem"] for b in self.bad).items()))

    def fix_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f["kind"] for entry in self.fixed for f in entry["fixes"]).items()))

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "max_image_pixels": self.max_image_pixels,
            "images_read": self.read,
            "items_without_image": self.without_image,
            "bad_images": len(self.bad),
            "bad_by_problem": self.counts(),
            "fixed_by_kind": self.fix_counts(),
            "bad": self.bad,
            "fixed": self.fixed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ImageReport:
        return cls(
            policy=data["policy"], max_image_pixels=data["max_image_pixels"], read=data["images_read"],
            without_image=data["items_without_image"], bad=list(data["bad"]), fixed=list(data["fixed"]),
        )  # fmt: skip

    def summary_line(self, where: str = "") -> str:
        """`N bad images (policy ...): kind n, ...; first: a (kind), b (kind), c (kind)`, or '' when none."""
        if not self.bad:
            return ""
        action = {"skip": "no image for those items", "placeholder": "a grey placeholder instead", "fail": "stopped"}
        kinds = ", ".join(f"{k} {n}" for k, n in self.counts().items())
        first = ", ".join(f"{b['path']} ({b['problem']})" for b in self.bad[:3])
        more = f" and {len(self.bad) - 3} more" if len(self.bad) > 3 else ""
        tail = f"; the full list is in {where}" if where else ""
        return (
            f"{len(self.bad)} bad images of {self.read} read (--on-bad-image {self.policy}: "
            f"{action[self.policy]}): {kinds}; first: {first}{more}{tail}"
        )

    def log(self, log: logging.Logger, what: str, where: str = "") -> None:
        line = self.summary_line(where)
        if line:
            log.warning("%s: %s", what, line)
        if self.fixed:
            fixes = ", ".join(f"{k} {n}" for k, n in self.fix_counts().items())
            log.info("%s: %d images were usable after a fix (%s)", what, len(self.fixed), fixes)


class ImageReader:
    """Reads item images under one --on-bad-image policy and counts what it saw in `report`."""

    def __init__(
        self,
        policy: str = "skip",
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        placeholder_size: int = PLACEHOLDER_SIZE,
    ) -> None:
        check_policy(policy)
        if max_pixels < 1:
            raise ValueError(f"--max-image-pixels must be >= 1, got {max_pixels}")
        self.policy = policy
        self.max_pixels = max_pixels
        self.placeholder_size = placeholder_size
        self.report = ImageReport(policy=policy, max_image_pixels=max_pixels)

    def read(self, path: str | os.PathLike[str] | None, item_id: str | None = None):
        """An RGB image; None for an item without an image, or a bad image under `skip`; the grey placeholder
        for a bad image under `placeholder`; BadImageError under `fail`."""
        if path is None:
            self.report.without_image += 1
            return None
        self.report.read += 1
        try:
            loaded = open_image(path, max_pixels=self.max_pixels)
        except BadImageError as err:
            self.report.bad.append({"path": str(path), "item_id": item_id, "problem": err.kind, "detail": err.detail})
            if self.policy == "fail":
                raise
            return placeholder_image(self.placeholder_size) if self.policy == "placeholder" else None
        if loaded.notes:
            self.report.fixed.append(
                {
                    "path": str(path),
                    "item_id": item_id,
                    "fixes": [{"kind": n.kind, "detail": n.detail} for n in loaded.notes],
                }
            )
        return loaded.image


def read_rendered_images(paths) -> list:
    """The images of a rendered prompt, for the model (the backends and the VLM trainer). The prompt was rendered
    with the images that read under --on-bad-image; a file that went bad since then becomes the grey placeholder,
    so an image block is never left without its image."""
    reader = ImageReader("placeholder")
    return [reader.read(path) for path in paths]


def check_images(
    entries: list[tuple[str | None, str | None]], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> ImageReport:
    """Open every (item_id, path) entry fully (the pre-flight of `mmrec data check-images`); never raises for a
    bad file. An entry with path None counts as an item without an image."""
    reader = ImageReader("skip", max_pixels)
    for item_id, path in entries:
        reader.read(path, item_id)
    return reader.report


def image_entries(images_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None):
    """(item_id, path) pairs to check: every item of `data_dir` with its image in `images_dir` (None when it has
    none), or, without `data_dir`, every image file in `images_dir` (stem = item id)."""
    from mmrec_gen.data.loaders import IMAGE_SUFFIXES, load_dataset

    root = Path(images_dir)
    if not root.is_dir():
        raise DataFormatError(f"{root}: images folder not found. Fix: pass an existing folder.")
    if data_dir is not None:
        ds = load_dataset(data_dir, images_dir=root)
        return [(item_id, item.image) for item_id, item in sorted(ds.items.items())]
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    return [(p.stem, str(p)) for p in files]


def report_table(report: ImageReport) -> str:
    """`mmrec data check-images` as text: one line per bad or fixed file (problem, path, detail), then totals."""
    lines = [f"{b['problem']:<16} {b['path']}  ({b['detail']})" for b in report.bad]
    lines += [
        f"{f['kind']:<16} {entry['path']}  ({f['detail']}; usable)" for entry in report.fixed for f in entry["fixes"]
    ]
    bad = ", ".join(f"{k} {n}" for k, n in report.counts().items()) or "none"
    fixed = ", ".join(f"{k} {n}" for k, n in report.fix_counts().items()) or "none"
    lines.append(
        f"checked {report.read} images: {len(report.bad)} bad ({bad}); {len(report.fixed)} usable after a fix "
        f"({fixed}); {report.without_image} items without an image"
    )
    return "\n".join(lines)
