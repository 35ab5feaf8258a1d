"""The aligned image projector on disk (`mmrec train align` writes it, `mmrec train sft --projector` reads it).

`image_projector.safetensors` holds the `image` projector's weights (keys `projectors.image.*` of ItemTokens) and
`mmrec_align.json` what they were aligned on: the base model (name and weight fingerprint) and the image feature
table's fingerprint (catalogue, images, encoder). A projector is only loaded where both match.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmrec_gen.models.adapters import base_fingerprint
from mmrec_gen.models.item_tokens import ItemTokens

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "image_projector.safetensors"
ALIGN_FILE = "mmrec_align.json"
PREFIX = "projectors.image."


def load_aligned_projector(item_tokens: ItemTokens, folder: str | Path, model) -> None:
    """Start `item_tokens`' image projector from the one aligned in `folder` (mmrec train align --output-dir).

    Refused, naming what differs, when the projector was aligned on another image table (catalogue, images or
    encoder) or for another base model (its embedding space).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / ALIGN_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no {ALIGN_FILE}; pass the --output-dir of `mmrec train align`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "image" not in item_tokens.sources:
        raise ValueError("--projector starts the image projector: add image to --item-tokens (e.g. text,image)")
    now = item_tokens.fingerprints()["image"]
    if meta["image_fingerprint"] != now:
        raise ValueError(
            f"{folder}: its projector was aligned on another image feature table ({meta['image_fingerprint']}, "
            f"now {now}: another catalogue, image folder or encoder); align on this data's --images first"
        )
    if meta["base_fingerprint"] != base_fingerprint(model):
        raise ValueError(
            f"{folder}: its projector was aligned for base model {meta['base_model']!r}, not this one; pass "
            f"--model {meta['base_model']} or align again with this model"
        )
    state = {k[len(PREFIX) :]: v for k, v in load_file(str(folder / PROJECTOR_FILE)).items()}
    item_tokens.projectors["image"].load_state_dict(state, strict=True)
    logger.info("image projector initialised from the aligned one in %s", folder)
