"""SASRec (Kang & McAuley, 2018): a causal self-attention next-item model, compact PyTorch.

Follows the reference implementation (github.com/pmixer/SASRec.pytorch): item + learned position embeddings,
pre-LayerNorm blocks of causal single-head self-attention and a pointwise feed-forward layer, left-padded
sequences whose padding positions are zeroed (no key-padding mask: a fully masked row would give NaN), and a
binary cross-entropy loss on the next item against one uniformly sampled negative per position (an item the user
never interacted with). The score of a candidate is the dot product of the last position's state with the
candidate's item embedding; items never seen in training keep their initial embedding (they are only negatives).

Training is seeded (torch and numpy generators from `rng_for(seed, "sasrec")`), and stops early on the monitor
items' NDCG@10 over the full catalogue (history items excluded), checked every `eval_every` epochs; the best
weights are restored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmrec_gen.data.seeding import derive_seed, rng_for
from mmrec_gen.recsys.early_stopping import EarlyStopping

logger = logging.getLogger(__name__)


@dataclass
class SASRecParams:
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    eval_every: int = 5
    patience: int = 5
    seed: int = 0


class SASRec(nn.Module):
    def __init__(self, num_items: int, p: SASRecParams) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, p.hidden, padding_idx=0)  # index 0 = padding
        self.pos_emb = nn.Embedding(p.max_len, p.hidden)
        self.dropout = nn.Dropout(p.dropout)
        layer = nn.TransformerEncoderLayer(
            p.hidden, p.num_heads, dim_feedforward=p.hidden, dropout=p.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, p.num_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.hidden)
        self.scale = math.sqrt(p.hidden)
        # As the reference implementation: Xavier-normal embeddings. nn.Embedding's N(0, 1), times sqrt(hidden),
        # starts with huge logits and never learns on MovieLens.
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, H) states; position t sees positions <= t only."""
        length = seqs.shape[1]
        x = self.item_emb(seqs) * self.scale + self.pos_emb(torch.arange(length, device=seqs.device))
        keep = (seqs > 0).unsqueeze(-1).to(x.dtype)
        x = self.dropout(x) * keep
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=seqs.device)
        x = self.blocks(x, mask=causal, is_causal=True) * keep
        return self.norm(x)


def _pad_left(seq: Sequence[int], length: int) -> list[int]:
    seq = list(seq)[-length:]
    return [0] * (length - len(seq)) + seq


class SASRecRecommender:
    """Index items, train SASRec on per-user sequences, score candidate lists."""

    def __init__(self, item_ids: Sequence[str], params: SASRecParams | None = None) -> None:
        self.params = params or SASRecParams()
        self.item_ids = list(item_ids)  # row k of item_embeddings() is item_ids[k]
        self.index = {item: i + 1 for i, item in enumerate(item_ids)}  # item id -> row of model.item_emb (0: padding)
        torch.manual_seed(derive_seed(self.params.seed, "sasrec", "init"))
        self.model = SASRec(len(self.index), self.params)
        self.history: list[dict[str, float]] = []

    def item_embeddings(self) -> np.ndarray:
        """The trained item embedding table, (len(item_ids), hidden) float32: row k belongs to `item_ids[k]` (the
        order given to the constructor); the padding row of `model.item_emb` is left out. A copy, for item tokens or
        the feature cache (`features.cache.aligned` reorders it to any item order)."""
        return self.model.item_emb.weight[1:].detach().float().cpu().numpy().copy()

    def _encode(self, items: Sequence[str]) -> list[int]:
        return [self.index[i] for i in items]

    def fit(self, sequences: Mapping[str, Sequence[str]], monitor: Mapping[str, str] | None = None) -> float:
        """Train on the users' item sequences (oldest first); early-stop on NDCG@10 of `monitor` (user -> item).

        Returns the training time in seconds.
        """
        p = self.params
        rng = rng_for(p.seed, "sasrec", "negatives")
        gen = torch.Generator().manual_seed(derive_seed(p.seed, "sasrec", "shuffle"))
        users = [u for u, s in sequences.items() if len(s) >= 2]
        if not users:
            raise ValueError("SASRec: no user has 2 or more training interactions; nothing to learn from")
        enc = {u: np.asarray(self._encode(sequences[u]), dtype=np.int64) for u in users}
        inputs = torch.tensor([_pad_left(enc[u][:-1], p.max_len) for u in users])
        positives = torch.tensor([_pad_left(enc[u][1:], p.max_len) for u in users])
        seen = [np.unique(enc[u]) for u in users]
        optim = torch.optim.Adam(self.model.parameters(), lr=p.lr, betas=(0.9, 0.98))
        stopper, start = EarlyStopping(self.model, patience=p.patience, higher_is_better=True), time.perf_counter()
        n_items = len(self.index)
        for epoch in range(1, p.epochs + 1):
            self.model.train()
            order = torch.randperm(len(users), generator=gen)
            total = 0.0
            for b in range(0, len(users), p.batch_size):
                rows = order[b : b + p.batch_size]
                negatives = torch.from_numpy(self._negatives(rng, [seen[r] for r in rows.tolist()], n_items))
                seq, pos = inputs[rows], positives[rows]
                h = self.model(seq)
                pos_logit = (h * self.model.item_emb(pos)).sum(-1)
                neg_logit = (h * self.model.item_emb(negatives)).sum(-1)
                mask = (pos > 0).float()
                loss = nn.functional.binary_cross_entropy_with_logits(
                    pos_logit, torch.ones_like(pos_logit), weight=mask, reduction="sum"
                ) + nn.functional.binary_cross_entropy_with_logits(
                    neg_logit, torch.zeros_like(neg_logit), weight=mask, reduction="sum"
                )
                loss = loss / mask.sum().clamp(min=1.0)
                optim.zero_grad()
                loss.backward()
                optim.step()
                total += loss.item() * len(rows)
            if monitor and (epoch % p.eval_every == 0 or epoch == p.epochs):
                ndcg = self.monitor_ndcg(sequences, monitor)
                self.history.append({"epoch": epoch, "loss": total / len(users), "monitor_ndcg@10": ndcg})
                logger.info("sasrec epoch %d: loss %.4f, monitor NDCG@10 %.4f", epoch, total / len(users), ndcg)
                if stopper.step(ndcg):
                    break
        stopper.restore()
        return time.perf_counter() - start

    def _negatives(self, rng: np.random.Generator, seen: list[np.ndarray], n_items: int) -> np.ndarray:
        """One item per position that the user never interacted with (resampled until it holds)."""
        out = rng.integers(1, n_items + 1, size=(len(seen), self.params.max_len))
        for row, items in enumerate(seen):
            if len(items) >= n_items:
                continue  # the user saw every item: no true negative exists, keep the uniform draw
            bad = np.isin(out[row], items)
            while bad.any():
                out[row, bad] = rng.integers(1, n_items + 1, size=int(bad.sum()))
                bad = np.isin(out[row], items)
        return out

    @torch.inference_mode()
    def _last_states(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        self.model.eval()
        seqs = torch.tensor([_pad_left(self._encode(h), self.params.max_len) for h in histories])
        return self.model(seqs)[:, -1, :]

    @torch.inference_mode()
    def monitor_ndcg(self, sequences: Mapping[str, Sequence[str]], monitor: Mapping[str, str]) -> float:
        users = [u for u in monitor if sequences.get(u)]
        if not users:
            return 0.0
        total = 0.0
        for b in range(0, len(users), 256):
            chunk = users[b : b + 256]
            logits = self._last_states([sequences[u] for u in chunk]) @ self.model.item_emb.weight.T
            for row, u in enumerate(chunk):
                scores = logits[row].clone()
                target = float(scores[self.index[monitor[u]]])
                scores[0] = -math.inf
                scores[[self.index[i] for i in sequences[u] if i != monitor[u]]] = -math.inf
                rank = int((scores > target).sum())
                total += 1.0 / math.log2(rank + 2) if rank < 10 else 0.0
        return total / len(users)

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per user, the score of each candidate (in the given order) after that user's history."""
        states = self._last_states(histories)
        out = []
        for row, cands in enumerate(candidates):
            emb = self.model.item_emb(torch.tensor(self._encode(cands)))
            out.append((emb @ states[row]).tolist())
        return out
