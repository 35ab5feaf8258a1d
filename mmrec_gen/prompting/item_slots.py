"""Item-token slots: where a template places an item's soft tokens (LLaVA's image placeholder, applied to items).

A template prints `x.item_token` (the `item_token` macro) after an item; at render time that is an unforgeable
marker (`\\x00item:<nonce>:<n>\\x00`, like image markers: neutralize() strips NUL from all data) that the renderer
swaps for the one reserved placeholder token ITEM_TOKEN, remembering which item each slot stands for. The model
layer overwrites the placeholder's input embedding with the item's projected features. ITEM_TOKEN is added to the
tokenizer as a special token, so a title that contains the placeholder string is neutralized like any other
control token and never creates a slot.
"""

from __future__ import annotations

import re
import secrets

ITEM_TOKEN = "<|mmrec_item|>"


def add_item_token(tokenizer) -> int:
    """Register ITEM_TOKEN as a special token of `tokenizer` (idempotent); return its id.

    The model's embedding matrix is not resized: the placeholder's embedding is always overwritten before the
    model sees it, so its id may lie past the vocabulary.
    """
    if ITEM_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(ITEM_TOKEN)


class ItemMarkers:
    """Hands out item-slot markers for one render and maps them back to item ids, in the order they appear."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.item_ids: list[str] = []
        self.pattern = re.compile("\x00item:" + self.nonce + ":([0-9]+)\x00")

    def marker(self, item_id: str) -> str:
        self.item_ids.append(item_id)
        return f"\x00item:{self.nonce}:{len(self.item_ids) - 1}\x00"

    def replace(self, text: str, where: str) -> tuple[str, list[str]]:
        """Swap each marker for ITEM_TOKEN; return the text and the item id of each slot in text order."""
        slots: list[str] = []

        def swap(m: re.Match) -> str:
            slots.append(self.item_ids[int(m.group(1))])
            return ITEM_TOKEN

        out = self.pattern.sub(swap, text)
        if "\x00item:" in out:
            raise ValueError(f"{where}: an item-token marker was altered by a template filter; print it as is")
        return out, slots
