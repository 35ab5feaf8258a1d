"""Item tokens and the item-scoring head: the LLaVA architecture applied to item modalities.

Each item-token source (`cf`, `text`, `image`) is a frozen feature table (one row per catalogue item) that an
`mlp2x_gelu` projector (LLaVA's: Linear, GELU, Linear) maps into the LLM's hidden size; an item's soft token is the
sum of its sources' projections. At every ITEM_TOKEN placeholder of a prompt, the input embedding is replaced by the
soft token of the item that slot stands for (`embed`), so the LLM reads items the way LLaVA reads images.

The item head scores item i at a position with hidden state h as `head(h) . rep(i)`, where rep(i) is the same soft
token: a score depends on the item only, never on a letter or the position a candidate was shown at (E4SRec).

The tables are persistent buffers: they are saved with the model (models/item_rec.py), so a saved model ranks
without refitting SASRec or re-encoding text. `table_fingerprint` identifies a table (the model's config records
them), so weights are never used with other features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

SOURCES = ("cf", "text", "image")
HEADS = ("labels", "items")
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")


def table_fingerprint(table) -> str:
    """Shape + content hash of a feature table (rounded to float16, so a recomputed table on another CPU agrees)."""
    array = table.detach().float().cpu().numpy() if isinstance(table, torch.Tensor) else np.asarray(table)
    data = np.ascontiguousarray(array.astype(np.float32).astype(np.float16))
    return f"{array.shape[0]}x{array.shape[1]}:" + hashlib.sha256(data.tobytes()).hexdigest()[:16]


def build_projector(projector_type: str, in_dim: int, hidden: int) -> nn.Module:
    """LLaVA's builder: `mlp2x_gelu` (Linear, GELU, Linear) or `linear`."""
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    if projector_type == "linear":
        return nn.Linear(in_dim, hidden)
    raise ValueError(f"unknown projector type {projector_type!r}: use one of {', '.join(PROJECTOR_TYPES)}")


class ItemTokens(nn.Module):
    """Projectors for the chosen sources, the "no image" vector, and the item head, over frozen feature tables.

    `source_dims[source]` is the width of that source's table; the tables (num_items, dim) are zero until
    `set_tables` (or loading saved weights) fills them. `has_image` (num_items,) marks items whose image features are
    real (the others get the learned no-image vector instead of their projection).
    """

    def __init__(self, num_items: int, source_dims: Mapping[str, int], hidden_size: int, projector_type: str) -> None:
        super().__init__()
        unknown = sorted(set(source_dims) - set(SOURCES))
        if unknown or not source_dims:
            raise ValueError(f"item-token sources must be a non-empty subset of {SOURCES}, got {sorted(source_dims)}")
        self.sources = [s for s in SOURCES if s in source_dims]
        self.num_items = num_items
        for source in self.sources:
            self.register_buffer(f"table_{source}", torch.zeros(num_items, int(source_dims[source])))
        self.projectors = nn.ModuleDict(
            {s: build_projector(projector_type, int(source_dims[s]), hidden_size) for s in self.sources}
        )
        if "image" in self.sources:
            self.register_buffer("has_image", torch.ones(num_items, dtype=torch.bool))
            self.no_image = nn.Parameter(torch.zeros(hidden_size))
        self.head = nn.Linear(hidden_size, hidden_size)
        self.reset_head()

    def reset_parameters(self) -> None:
        """The initial state: PyTorch's default projector init (in construction order), the identity head."""
        for source in self.sources:
            for layer in self.projectors[source].modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        if "image" in self.sources:
            nn.init.zeros_(self.no_image)
        self.reset_head()

    def reset_head(self) -> None:
        # The identity, so an untrained head scores by the raw hidden state . item token.
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(self.head.weight.shape[0]))
            self.head.bias.zero_()

    def set_tables(self, tables: Mapping[str, np.ndarray], has_image: np.ndarray | None = None) -> None:
        if sorted(tables) != sorted(self.sources):
            raise ValueError(f"item-token tables for {sorted(tables)}, the model has sources {self.sources}")
        for source in self.sources:
            buffer = getattr(self, f"table_{source}")
            value = torch.as_tensor(np.asarray(tables[source], np.float32))
            if value.shape != buffer.shape:
                raise ValueError(f"item-token source {source!r}: table of shape {tuple(value.shape)}, the model "
                                 f"expects {tuple(buffer.shape)} (items x feature width)")  # fmt: skip
            buffer.copy_(value)
        if "image" in self.sources and has_image is not None:
            self.has_image.copy_(torch.as_tensor(np.asarray(has_image, bool)))

    def fingerprints(self) -> dict[str, str]:
        return {s: table_fingerprint(getattr(self, f"table_{s}")) for s in self.sources}

    def item_reps(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """(n, hidden) soft tokens of the catalogue rows `index` (all items when None)."""
        out = None
        for source in self.sources:
            table = getattr(self, f"table_{source}")
            rep = self.projectors[source](table if index is None else table[index])
            if source == "image":
                has = self.has_image if index is None else self.has_image[index]
                rep = torch.where(has.unsqueeze(-1), rep, self.no_image.to(rep.dtype))
            out = rep if out is None else out + rep
        return out

    def embed(self, embeds: torch.Tensor, is_slot: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`embeds` (B, T, H) with the positions `is_slot` (B, T) replaced, in row-major order, by the soft tokens of
        the catalogue rows `rows` (one per slot); the caller checked the counts."""
        if rows.numel() == 0:
            return embeds
        reps = self.item_reps(rows).to(embeds.dtype)
        positions = is_slot.nonzero(as_tuple=True)  # row-major: the slots of each prompt row in order
        return embeds.index_put(positions, reps)

    def forward(self, hidden: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """(..., hidden) states -> (..., n) scores of the catalogue rows `index` (all items when None)."""
        reps = self.item_reps(index)
        return self.head(hidden.to(reps.dtype)) @ reps.T
