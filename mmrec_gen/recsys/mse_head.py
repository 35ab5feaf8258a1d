"""The MSE regression head: frozen item embeddings -> user and item vectors -> a small MLP -> a rating in [0, 1].

Inputs of one (user, item) pair:

- **item**: the cached embedding of the item's text (title + text fields), and optionally of its image;
- **user**: built from the cached embeddings of the items in the user's history and their ratings (the history's
  titles and ratings, without encoding one long text per user or per rating): the mean history embedding, the
  rating-weighted preference vector sum_j (r_j - mean_r) e_j / n, the user's mean rating and log(1 + n).

A training pair's own item and rating are left out of its user's vectors (leave-one-out, O(1) per pair from the
per-user sums), so a target rating never leaks into its input.

Fusion (`fusion`): `concat` projects the concatenated user blocks and the concatenated item blocks (text, image)
with one linear layer each; `weighted` projects every block separately and sums the projections with learned
softmax weights (one set for the user blocks, one for the item blocks; `fusion_weights()` reports them). The head
is an MLP over [u, v, u * v, user scalars] with a sigmoid output, trained with MSE on ratings scaled to [0, 1] by
the dataset's rating range, early-stopped on the monitor ratings' RMSE (best weights restored).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmrec_gen.data.seeding import derive_seed
from mmrec_gen.recsys.early_stopping import EarlyStopping

logger = logging.getLogger(__name__)

FUSIONS = ("concat", "weighted")


@dataclass(frozen=True)
class RatingScale:
    low: float
    high: float

    def __post_init__(self):
        if not self.high > self.low:
            raise ValueError(f"rating range must have high > low, got [{self.low}, {self.high}]")

    def to_unit(self, r):
        return (r - self.low) / (self.high - self.low)

    def from_unit(self, x):
        return x * (self.high - self.low) + self.low


class UserProfiles:
    """Per-user sums over a history of (item index, unit rating): n, sum e, sum r, sum r e."""

    def __init__(self, item_emb: torch.Tensor, histories: Sequence[Sequence[tuple[int, float]]]) -> None:
        dim = item_emb.shape[1]
        self.n = torch.zeros(len(histories))
        self.r = torch.zeros(len(histories))
        self.s = torch.zeros(len(histories), dim)
        self.w = torch.zeros(len(histories), dim)
        for u, hist in enumerate(histories):
            if not hist:
                continue
            idx = torch.tensor([i for i, _ in hist])
            rat = torch.tensor([r for _, r in hist], dtype=torch.float32)
            emb = item_emb[idx]
            self.n[u], self.r[u] = len(hist), rat.sum()
            self.s[u], self.w[u] = emb.sum(0), (rat.unsqueeze(1) * emb).sum(0)

    def features(
        self, item_emb: torch.Tensor, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, exclude
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """User blocks [mean e, preference] and scalars [mean r, log(1+n)/5]; `exclude` rows drop (item, rating)."""
        ex = exclude.float()
        e = item_emb[items] * ex.unsqueeze(1)
        r = ratings * ex
        n = self.n[users] - ex
        s, w, rs = self.s[users] - e, self.w[users] - r.unsqueeze(1) * e, self.r[users] - r
        safe_n = n.clamp(min=1.0).unsqueeze(1)
        mean_r = torch.where(n > 0, rs / n.clamp(min=1.0), torch.full_like(n, 0.5))
        mean_e = s / safe_n
        pref = (w - mean_r.unsqueeze(1) * s) / safe_n
        scalars = torch.stack([mean_r, torch.log1p(n) / 5.0], dim=1)
        return [mean_e, pref], scalars


class RatingMLP(nn.Module):
    def __init__(self, user_dim: int, item_dims: Sequence[int], hidden: int, fusion: str, dropout: float) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        if fusion == "concat":
            self.user_proj = nn.Linear(2 * user_dim, hidden)
            self.item_proj = nn.Linear(sum(item_dims), hidden)
        else:
            self.user_projs = nn.ModuleList([nn.Linear(user_dim, hidden) for _ in range(2)])
            self.item_projs = nn.ModuleList([nn.Linear(d, hidden) for d in item_dims])
            self.user_logits = nn.Parameter(torch.zeros(2))
            self.item_logits = nn.Parameter(torch.zeros(len(item_dims)))
        self.head = nn.Sequential(
            nn.Linear(3 * hidden + 2, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    @staticmethod
    def _weighted(projs: nn.ModuleList, logits: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(logits, dim=0)
        return sum(w * proj(x) for w, proj, x in zip(weights, projs, blocks, strict=True))

    def forward(self, user_blocks: list[torch.Tensor], item_blocks: list[torch.Tensor], scalars: torch.Tensor):
        if self.fusion == "concat":
            u = self.user_proj(torch.cat(user_blocks, dim=1))
            v = self.item_proj(torch.cat(item_blocks, dim=1))
        else:
            u = self._weighted(self.user_projs, self.user_logits, user_blocks)
            v = self._weighted(self.item_projs, self.item_logits, item_blocks)
        return torch.sigmoid(self.head(torch.cat([u, v, u * v, scalars], dim=1)).squeeze(1))

    def fusion_weights(self) -> dict[str, list[float]] | None:
        if self.fusion != "weighted":
            return None
        return {
            "user": torch.softmax(self.user_logits, 0).tolist(),
            "item": torch.softmax(self.item_logits, 0).tolist(),
        }


@dataclass
class MSEHeadParams:
    fusion: str = "concat"
    hidden: int = 128
    dropout: float = 0.1
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 5
    seed: int = 0


@dataclass
class RatingRows:
    """Pairs to fit or predict: indices into a profile table and an item table, unit ratings, leave-one-out flags."""

    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor
    exclude: torch.Tensor

    @classmethod
    def build(cls, users, items, ratings, exclude: bool) -> RatingRows:
        n = len(users)
        return cls(
            torch.as_tensor(np.asarray(users, dtype=np.int64)),
            torch.as_tensor(np.asarray(items, dtype=np.int64)),
            torch.as_tensor(np.asarray(ratings, dtype=np.float32)),
            torch.full((n,), bool(exclude)),
        )

    def __len__(self) -> int:
        return len(self.users)


class MSEHead:
    """Fit the MLP on frozen item blocks (text, optionally image) and user profiles; predict unit ratings."""

    def __init__(self, item_blocks: Sequence[np.ndarray], params: MSEHeadParams | None = None) -> None:
        self.params = params or MSEHeadParams()
        self.blocks = [torch.as_tensor(np.asarray(b, dtype=np.float32)) for b in item_blocks]
        self.text = self.blocks[0]  # user profiles are built from the text embeddings
        torch.manual_seed(derive_seed(self.params.seed, "mse-head", "init"))
        p = self.params
        self.model = RatingMLP(self.text.shape[1], [b.shape[1] for b in self.blocks], p.hidden, p.fusion, p.dropout)
        self.history: list[dict[str, float]] = []

    def profiles(self, histories: Sequence[Sequence[tuple[int, float]]]) -> UserProfiles:
        return UserProfiles(self.text, histories)

    def _forward(self, profiles: UserProfiles, rows: RatingRows, sel) -> torch.Tensor:
        users, items = rows.users[sel], rows.items[sel]
        user_blocks, scalars = profiles.features(self.text, users, items, rows.ratings[sel], rows.exclude[sel])
        return self.model(user_blocks, [b[items] for b in self.blocks], scalars)

    @torch.inference_mode()
    def predict(self, profiles: UserProfiles, rows: RatingRows) -> np.ndarray:
        self.model.eval()
        out = [
            self._forward(profiles, rows, slice(b, b + 4096)) for b in range(0, len(rows), 4096)
        ]  # fmt: skip
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def fit(self, profiles: UserProfiles, train: RatingRows, monitor: RatingRows | None) -> float:
        """Adam on MSE of unit ratings; early stop on monitor RMSE (unit scale). Returns training seconds."""
        p = self.params
        if len(train) == 0:
            raise ValueError("MSE head: no training ratings (does the dataset have a rating column?)")
        gen = torch.Generator().manual_seed(derive_seed(p.seed, "mse-head", "shuffle"))
        optim = torch.optim.Adam(self.model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        stopper = EarlyStopping(self.model, patience=p.patience, higher_is_better=False, min_delta=1e-6)
        start, stop = time.perf_counter(), False
        for epoch in range(1, p.epochs + 1):
            self.model.train()
            order = torch.randperm(len(train), generator=gen)
            total = 0.0
            for b in range(0, len(train), p.batch_size):
                sel = order[b : b + p.batch_size]
                loss = nn.functional.mse_loss(self._forward(profiles, train, sel), train.ratings[sel])
                optim.zero_grad()
                loss.backward()
                optim.step()
                total += loss.item() * len(sel)
            record = {"epoch": epoch, "train_rmse_unit": math.sqrt(total / len(train))}
            if monitor is not None and len(monitor):
                pred = self.predict(profiles, monitor)
                rmse = float(np.sqrt(np.mean((pred - monitor.ratings.numpy()) ** 2)))
                record["monitor_rmse_unit"] = rmse
                stop = stopper.step(rmse)
            self.history.append(record)
            logger.info("mse head epoch %d: %s", epoch, record)
            if stop:
                break
        stopper.restore()
        return time.perf_counter() - start
