"""Full fine-tuning variant of the MSE head: `AutoModelForSequenceClassification(num_labels=1)` on text pairs.

The encoder itself (all-MiniLM-L6-v2, or any HF encoder id / folder) reads the pair (user history text, candidate
item text) and regresses the rating scaled to [0, 1] with mean squared error (transformers' `problem_type=
"regression"` head on the pooled output); AdamW, seeded shuffling, early stopping on the monitor ratings' RMSE after
each epoch (best weights restored). Predictions are clipped to [0, 1].

The user text is `Title (rating); Title (rating); ...`, oldest first, of the most recent history items.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmrec_gen.data.seeding import derive_seed

logger = logging.getLogger(__name__)


def user_text(history: Sequence[tuple[str, float | None]], max_chars: int = 300) -> str:
    """`Title (4.0); Title (3.5)` for the history, oldest first (`no history` when empty)."""
    parts = [
        f"{title[:max_chars]} ({rating:g})" if rating is not None else title[:max_chars] for title, rating in history
    ]
    return "; ".join(parts) if parts else "no history"


@dataclass
class FinetuneParams:
    epochs: int = 1
    lr: float = 3e-5
    batch_size: int = 16
    max_length: int = 128
    weight_decay: float = 0.01
    seed: int = 0


def finetune_source(encoder: str) -> str:
    """The folder or HF id AutoModelForSequenceClassification loads for `--encoder` (minilm -> the wheel's folder)."""
    from pathlib import Path

    if encoder == "minilm":
        from mmrec_gen.features.text_encoders import minilm_dir

        return str(minilm_dir())
    if encoder == "llm":
        raise ValueError(
            "--finetune-encoder with --encoder llm: pass the LLM's HF folder as --encoder instead (for SmolLM2: "
            "$MMREC_HOME/models/smollm2-135m-instruct)"
        )
    if not Path(encoder).exists() and "/" not in encoder:
        raise ValueError(f"unknown encoder {encoder!r}: use minilm, an HF id (owner/name) or a local folder")
    return encoder


class EncoderFinetuner:
    def __init__(self, encoder: str, params: FinetuneParams | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.params = params or FinetuneParams()
        source = finetune_source(encoder)
        self.name = encoder if encoder == "minilm" else source
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch.manual_seed(derive_seed(self.params.seed, "mse-finetune", "init"))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, problem_type="regression"
        )
        if self.model.config.pad_token_id is None:  # decoder-only models pool the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.history: list[dict[str, float]] = []

    def _batch(self, pairs: Sequence[tuple[str, str]]):
        return self.tokenizer(
            [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="only_first",
            max_length=self.params.max_length, return_tensors="pt",
        )  # fmt: skip

    @torch.inference_mode()
    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        self.model.eval()
        out = [
            self.model(**self._batch(pairs[b : b + batch_size])).logits.squeeze(-1)
            for b in range(0, len(pairs), batch_size)
        ]
        return torch.cat(out).clamp(0.0, 1.0).numpy() if out else np.zeros(0, dtype=np.float32)

    def fit(self, pairs, targets, monitor_pairs=(), monitor_targets=()) -> float:
        """Fine-tune on (pairs, unit targets); returns training seconds."""
        p = self.params
        if not pairs:
            raise ValueError("encoder fine-tuning: no training ratings")
        gen = torch.Generator().manual_seed(derive_seed(p.seed, "mse-finetune", "shuffle"))
        optim = torch.optim.AdamW(self.model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        y = torch.tensor(targets, dtype=torch.float32)
        best, best_state, start = math.inf, None, time.perf_counter()
        for epoch in range(1, p.epochs + 1):
            self.model.train()
            order = torch.randperm(len(pairs), generator=gen).tolist()
            total = 0.0
            for b in range(0, len(order), p.batch_size):
                sel = order[b : b + p.batch_size]
                out = self.model(**self._batch([pairs[i] for i in sel]), labels=y[sel])
                optim.zero_grad()
                out.loss.backward()
                optim.step()
                total += out.loss.item() * len(sel)
            record = {"epoch": epoch, "train_rmse_unit": math.sqrt(total / len(pairs))}
            if monitor_pairs:
                pred = self.predict(list(monitor_pairs))
                record["monitor_rmse_unit"] = float(np.sqrt(np.mean((pred - np.asarray(monitor_targets)) ** 2)))
                if record["monitor_rmse_unit"] < best:
                    best, best_state = record["monitor_rmse_unit"], copy.deepcopy(self.model.state_dict())
            self.history.append(record)
            logger.info("encoder fine-tuning epoch %d: %s", epoch, record)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return time.perf_counter() - start
