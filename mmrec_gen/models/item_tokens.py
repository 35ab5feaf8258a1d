"""Item tokens and the item-scoring head: the LLaVA architecture applied to item modalities.

Each item-token source (`cf`, `text`, `image`) is a frozen feature table (one row per catalogue item) that an
`mlp2x_gelu` projector (LLaVA's: Linear, GELU, Linear) maps into the LLM's hidden size; an item's soft token is the
sum of its sources' projections. At every ITEM_TOKEN placeholder of a prompt, the input embedding is replaced by the
soft token of the item that slot stands for (`input_embeds`), so the LLM reads items the way LLaVA reads images.

The item head scores item i at a position with hidden state h as `head(h) . rep(i)`, where rep(i) is the same soft
token: a score depends on the item only, never on a letter or the position a candidate was shown at (E4SRec).

Models only consume arrays: the tables are built (and cached) by whoever builds a run (recsys.item_features).
`fingerprints()` identify the tables a module was trained on, so an adapter is never used with other features.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

SOURCES = ("cf", "text", "image")
HEADS = ("labels", "items")
STATE_FILE = "item_tokens.safetensors"


def table_fingerprint(table: np.ndarray) -> str:
    """Shape + content hash of a feature table (rounded to float16, so a recomputed table on another CPU agrees)."""
    data = np.ascontiguousarray(np.asarray(table, dtype=np.float32).astype(np.float16))
    return f"{table.shape[0]}x{table.shape[1]}:" + hashlib.sha256(data.tobytes()).hexdigest()[:16]


def mlp2x_gelu(in_dim: int, hidden: int) -> nn.Sequential:
    """LLaVA's projector (`mm_projector_type: mlp2x_gelu`)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class ItemTokens(nn.Module):
    """Projectors for the chosen sources, the "no image" vector, and the item head.

    `tables[source]` is a (num_items, dim) array aligned with `item_ids`; `has_image` (num_items,) marks items whose
    image features are real (the others get the learned no-image vector instead of their projection).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        tables: Mapping[str, np.ndarray],
        hidden_size: int,
        *,
        has_image: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(tables) - set(SOURCES))
        if unknown or not tables:
            raise ValueError(f"item-token sources must be a non-empty subset of {SOURCES}, got {sorted(tables)}")
        self.item_ids = list(item_ids)
        self.index = {item: k for k, item in enumerate(self.item_ids)}
        self.sources = [s for s in SOURCES if s in tables]
        for source in self.sources:
            if tables[source].shape[0] != len(self.item_ids):
                raise ValueError(
                    f"item-token source {source!r}: {tables[source].shape[0]} rows for {len(self.item_ids)} items"
                )
            self.register_buffer(f"table_{source}", torch.as_tensor(np.asarray(tables[source], np.float32)), False)
        self._fingerprints = {s: table_fingerprint(tables[s]) for s in self.sources}
        self.projectors = nn.ModuleDict({s: mlp2x_gelu(tables[s].shape[1], hidden_size) for s in self.sources})
        if "image" in self.sources:
            mask = np.ones(len(self.item_ids), bool) if has_image is None else np.asarray(has_image, bool)
            self.register_buffer("has_image", torch.as_tensor(mask), False)
            self.no_image = nn.Parameter(torch.zeros(hidden_size))
        # Starts as the identity, so an untrained head scores by the raw hidden state . item token.
        self.head = nn.Linear(hidden_size, hidden_size)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(hidden_size))
            self.head.bias.zero_()

    def fingerprints(self) -> dict[str, str]:
        return dict(self._fingerprints)

    def indices(self, item_ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in item_ids if i not in self.index]
        if missing:
            raise KeyError(f"item {missing[0]!r} has no item-token features (not in the catalogue they were built on)")
        return torch.tensor([self.index[i] for i in item_ids], dtype=torch.long, device=self.head.weight.device)

    def item_reps(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """(n, hidden) soft tokens of the items at `index` (all items when None)."""
        out = None
        for source in self.sources:
            table = getattr(self, f"table_{source}")
            rep = self.projectors[source](table if index is None else table[index])
            if source == "image":
                has = self.has_image if index is None else self.has_image[index]
                rep = torch.where(has.unsqueeze(-1), rep, self.no_image.to(rep.dtype))
            out = rep if out is None else out + rep
        return out

    def embed(
        self,
        embedding: nn.Module,
        input_ids: torch.Tensor,
        slots: Sequence[Sequence[str]],
        placeholder: int,
        soft: Sequence[bool] | None = None,
    ):
        """Input embeddings of `input_ids` (B, T) with each placeholder replaced by its item's soft token.

        `slots[b]` lists the item ids of row b's placeholders in order (RenderedPrompt.item_slots). Rows with
        `soft[b]` False get a zero vector at their slots instead: a text-only prompt whose positions (and so its
        training targets) are those of the hybrid one (LLaRA's curriculum).
        """
        is_slot = input_ids == placeholder
        # The placeholder may lie past the vocabulary (it is never embedded): look up a harmless id instead.
        embeds = embedding(input_ids.masked_fill(is_slot, 0))
        counts = is_slot.sum(-1).tolist()
        for row, (count, items) in enumerate(zip(counts, slots, strict=True)):
            if count != len(items):
                raise ValueError(f"prompt row {row}: {count} item placeholders for {len(items)} item slots")
        flat = [i for items in slots for i in items]
        if not flat:
            return embeds
        reps = self.item_reps(self.indices(flat)).to(embeds.dtype)
        if soft is not None and not all(soft):
            keep = [bool(on) for on, items in zip(soft, slots, strict=True) for _ in items]
            reps = reps * torch.tensor(keep, dtype=reps.dtype, device=reps.device).unsqueeze(-1)
        rows, cols = is_slot.nonzero(as_tuple=True)  # row-major: the slots of each row in order
        return embeds.index_put((rows, cols), reps)

    def score(self, hidden: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """(..., hidden) states -> (..., n) scores of the items at `index` (all items when None)."""
        reps = self.item_reps(index)
        return self.head(hidden.to(reps.dtype)) @ reps.T

    # -- persistence -------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file(self.trainable_state(), str(folder / STATE_FILE))

    def load(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / STATE_FILE))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{folder}/{STATE_FILE}: missing keys {missing}, unexpected keys {unexpected}; the item-token "
                "weights do not match the sources they are loaded for"
            )


CONFIG_FILE = "mmrec_item_tokens.json"


def write_item_token_config(folder: str | Path, **config) -> None:
    """What an adapter was trained with (head, sources, template, layers, prompt budgets, feature fingerprints):
    `mmrec rank --adapter` reads it, so no other flag is needed."""
    Path(folder, CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_item_token_config(folder: str | Path) -> dict | None:
    path = Path(folder, CONFIG_FILE)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the adapter folder is damaged, retrain it") from exc


def check_fingerprints(folder: str | Path, trained: Mapping[str, str], module: ItemTokens) -> None:
    """Refuse features that differ from those the adapter was trained on (another dataset, split or shape)."""
    now = module.fingerprints()
    if dict(trained) != now:
        changed = sorted(s for s in set(trained) | set(now) if trained.get(s) != now.get(s))
        raise ValueError(
            f"{folder}: its item tokens were trained on other feature tables ({', '.join(changed)}: trained "
            f"{[trained.get(s) for s in changed]}, now {[now.get(s) for s in changed]}); rank the dataset and split "
            "the adapter was trained on, or retrain it on this data"
        )


def keep_first_layers(model, num_layers: int | None) -> None:
    """Run only the first `num_layers` transformer layers (in place). The config keeps its layer count, so the
    base model's fingerprint (adapters.base_fingerprint) is unchanged; the cut is recorded with the item tokens."""
    if num_layers is None:
        return
    decoder, _ = decoder_and_head(model)
    total = len(decoder.layers)
    if not 1 <= num_layers <= total:
        raise ValueError(f"--num-layers must be between 1 and {total} (the model's layers), got {num_layers}")
    decoder.layers = decoder.layers[:num_layers]


def decoder_and_head(model):
    """(the decoder stack returning last_hidden_state, the LM head) of a causal LM, with or without PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()
