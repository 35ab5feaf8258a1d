"""Turn schema records into the template context (the schema is documented in prompts/manifest.yaml).

Every text value (title and each field) goes through `sanitize.neutralize` here, once per record, so templates only
ever see neutralized strings. Image markers are handed out by an `ImageMarkers` object owned by one render.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.errors import PromptFieldError
from mmrec_gen.prompting.item_slots import ItemMarkers
from mmrec_gen.prompting.sanitize import neutralize

# Top-level variables a template may use (see prompts/manifest.yaml).
SCHEMA_FIELDS = frozenset({"history", "candidates", "demos", "item", "num_candidates", "evidence"})


@dataclass(frozen=True)
class HistoryEntry:
    """One past interaction shown in a prompt; `rating` is None (or NaN) when the dataset has no rating."""

    item: Item
    rating: float | None = None


@dataclass(frozen=True)
class Demo:
    """A few-shot demonstration: another user's history, candidates, and the item that user chose next."""

    history: tuple[HistoryEntry, ...]
    candidates: tuple[Item, ...]
    answer_item_id: str


class ImageMarkers:
    """Hands out image markers for one render and remembers which image each stands for.

    A marker is `\\x00img:<nonce>:<n>\\x00`: neutralize() strips NUL from all data and the nonce is fresh per
    render, so no title can forge one, and a literal `<image>` in data stays text.
    """

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.paths: list[str] = []
        self.pattern = re.compile("\x00img:" + self.nonce + ":([0-9]+)\x00")

    def marker(self, path: str) -> str:
        self.paths.append(path)
        return f"\x00img:{self.nonce}:{len(self.paths) - 1}\x00"

    def split(self, text: str, where: str) -> tuple[list[dict[str, str]], list[str]]:
        """Split rendered text at markers into chat content blocks; return (blocks, image paths in order)."""
        blocks: list[dict[str, str]] = []
        images: list[str] = []
        seen: set[int] = set()
        pos = 0
        for m in self.pattern.finditer(text):
            idx = int(m.group(1))
            if idx in seen:
                raise ValueError(f"{where}: the template prints the same image marker twice; print `x.image` once")
            seen.add(idx)
            if m.start() > pos:
                blocks.append({"type": "text", "text": text[pos : m.start()]})
            blocks.append({"type": "image", "image": self.paths[idx]})
            images.append(self.paths[idx])
            pos = m.end()
        if pos < len(text):
            blocks.append({"type": "text", "text": text[pos:]})
        if any("\x00" in b.get("text", "") for b in blocks):
            raise ValueError(f"{where}: an image marker was altered by a template filter; print `x.image` as is")
        return blocks, images


class ContextBuilder:
    """Builds neutralized context dicts for one template and one tokenizer."""

    def __init__(self, template_id: str, special_tokens: Sequence[str], max_text_chars: int | None) -> None:
        self.template_id = template_id
        self.special_tokens = tuple(special_tokens)
        self.max_text_chars = max_text_chars
        # One ItemMarkers per render (set by the renderer); None: templates get no `item_token`.
        self.item_markers: ItemMarkers | None = None

    def _clean(self, text: Any, *, field: str, item_id: str, user_id: str) -> str:
        if text is None or (isinstance(text, float) and math.isnan(text)):
            raise PromptFieldError(self.template_id, field, user_id, item_id, "value is None/NaN")
        if not isinstance(text, str):
            text = str(text)
        cleaned = neutralize(text, self.special_tokens, self.max_text_chars)
        return cleaned

    def item(self, item: Item, user_id: str, markers: ImageMarkers | None = None) -> dict[str, Any]:
        title = self._clean(item.title, field="title", item_id=item.item_id, user_id=user_id)
        if not title.strip():
            # An empty title would print as an empty line in the prompt (R6: never an empty string).
            raise PromptFieldError(self.template_id, "title", user_id, item.item_id, "title is empty")
        fields = {
            str(k): self._clean(v, field=f"fields.{k}", item_id=item.item_id, user_id=user_id)
            for k, v in item.fields.items()
        }
        ctx: dict[str, Any] = {"title": title, "fields": fields}
        if markers is not None and item.image:
            ctx["image"] = markers.marker(item.image)
        if self.item_markers is not None:
            ctx["item_token"] = self.item_markers.marker(item.item_id)
        return ctx

    def history(
        self, entries: Sequence[HistoryEntry], user_id: str, markers: ImageMarkers | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for e in entries:
            ctx = self.item(e.item, user_id, markers)
            rating = e.rating
            if rating is not None and math.isnan(float(rating)):
                rating = None
            ctx["rating"] = None if rating is None else float(rating)
            out.append(ctx)
        return out

    def evidence(self, entries: Sequence[Any], user_id: str, markers: ImageMarkers | None = None) -> list[dict]:
        """Evidence items (prompting.evidence.Evidence): the item's context plus `shared` (neutralized values)."""
        out = []
        for e in entries:
            ctx = self.item(e.item, user_id, markers)
            ctx["shared"] = [self._clean(v, field="shared", item_id=e.item.item_id, user_id=user_id) for v in e.shared]
            out.append(ctx)
        return out

    def candidates(
        self, items: Sequence[Item], labels: Sequence[str], user_id: str, markers: ImageMarkers | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for label, it in zip(labels, items, strict=True):
            ctx = self.item(it, user_id, markers)
            ctx["label"] = label
            out.append(ctx)
        return out

    def demo(self, demo: Demo, labels: Sequence[str], user_id: str, demo_history: int) -> dict[str, Any]:
        ids = [c.item_id for c in demo.candidates]
        if demo.answer_item_id not in ids:
            raise ValueError(
                f"few-shot demo for user {user_id!r}: answer item {demo.answer_item_id!r} is not among the demo's "
                f"candidates {ids}"
            )
        hist = demo.history[-demo_history:] if demo_history > 0 else ()
        return {
            "history": self.history(hist, user_id),
            "candidates": self.candidates(demo.candidates, labels, user_id),
            "answer": labels[ids.index(demo.answer_item_id)],
        }
