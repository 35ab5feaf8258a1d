"""Which items of a prompt show their image, and what a processor makes of one image (R4 budgets).

A vision-language model's prompt carries image content blocks for chosen items only: the candidates, the last k
history items, or both, within an image budget per prompt (`--image-items`, `--image-history`, `--max-images`).
Candidates are chosen first, in display order, then history items from the most recent; an item without an image
never counts. The renderer strips the image of every item not chosen, so a template's `x.image is defined` holds
exactly for the chosen ones.

A processor (LLaVA, Qwen2-VL, Idefics, ...) is recognised by its image processor next to a text tokenizer; the
renderer then always sends content blocks (multimodal chat templates iterate over them), with or without images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from mmrec_gen.data.schema import Item

IMAGE_ITEMS = ("candidates", "history", "both")


def is_multimodal(chat) -> bool:
    """True for a processor that takes images (an image processor next to a text tokenizer)."""
    return getattr(chat, "image_processor", None) is not None and getattr(chat, "tokenizer", None) is not None


# (height, width) probes: square, wide and tall, as large as common processors' base resolution.
PROBE_SIZES = ((336, 336), (336, 672), (672, 336))


def image_token_count(processor, sizes: tuple[tuple[int, int], ...] = PROBE_SIZES) -> int:
    """Tokens one image becomes after the processor expands its placeholder (image tokens and the markers around
    them): the most over blank images of `sizes` (height, width), so the budget is an upper bound for a processor
    whose count depends on the image.

    Fixed-grid processors (LLaVA-1.5: (336 / 14)^2 = 576) give one number for every size; "anyres" ones
    (LLaVA-NeXT) depend on the aspect ratio, and dynamic-resolution ones (Qwen2-VL) on the size. Measured by running
    the processor, so no per-model formula is hard-coded here.
    """
    from PIL import Image

    token = getattr(processor, "image_token", None)
    if token is None:
        raise ValueError(f"{type(processor).__name__} has no image_token: not a processor mmrec-gen can feed images")
    counts = []
    for height, width in sizes:
        ids = processor(text=[token], images=[[Image.new("RGB", (width, height))]], add_special_tokens=False)
        # The whole expansion of the one placeholder: image tokens and any markers around them (Idefics3 wraps
        # them in <fake_token_around_image><global-img>...<fake_token_around_image>).
        counts.append(len(ids["input_ids"][0]))
    return max(counts)


@dataclass(frozen=True)
class ImageSelection:
    """Which items show their image: `items` (candidates | history | both), `history` = the last k history
    items, at most `max_images` per prompt."""

    items: str = "candidates"
    history: int = 5
    max_images: int = 20

    def __post_init__(self):
        if self.items not in IMAGE_ITEMS:
            raise ValueError(f"--image-items must be one of {', '.join(IMAGE_ITEMS)}, got {self.items!r}")
        if self.history < 0 or self.max_images < 0:
            raise ValueError("--image-history and --max-images must be >= 0")

    def choose(self, history: Sequence[Item], candidates: Sequence[Item]) -> tuple[set[int], set[int]]:
        """(indices into `history`, indices into `candidates`) of the items whose image is shown."""
        left = self.max_images
        chosen_c: set[int] = set()
        if self.items in ("candidates", "both"):
            for k, item in enumerate(candidates):
                if left and item.image:
                    chosen_c.add(k)
                    left -= 1
        chosen_h: set[int] = set()
        if self.items in ("history", "both") and self.history:
            for k in range(len(history) - 1, max(len(history) - self.history, 0) - 1, -1):
                if left and history[k].image:
                    chosen_h.add(k)
                    left -= 1
        return chosen_h, chosen_c


def without_image(item: Item) -> Item:
    return item if item.image is None else dataclasses.replace(item, image=None)
