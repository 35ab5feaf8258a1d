"""Early stopping on a monitor value, shared by SASRec (NDCG@10, higher is better) and the MSE head (RMSE, lower)."""

from __future__ import annotations

import copy
import math


class EarlyStopping:
    """Keeps a copy of the model's best state; `step` says when `patience` checks in a row brought no improvement.

    An improvement must beat the best value by more than `min_delta`; `restore` loads the best state back.
    """

    def __init__(self, model, *, patience: int, higher_is_better: bool, min_delta: float = 0.0) -> None:
        self.model, self.patience, self.higher, self.min_delta = model, patience, higher_is_better, min_delta
        self.best = -math.inf if higher_is_better else math.inf
        self.best_state = None
        self.bad_checks = 0

    def step(self, value: float) -> bool:
        """Record one monitor value; True when training should stop."""
        improved = value > self.best + self.min_delta if self.higher else value < self.best - self.min_delta
        if improved:
            self.best, self.best_state, self.bad_checks = value, copy.deepcopy(self.model.state_dict()), 0
        else:
            self.bad_checks += 1
        return self.bad_checks >= self.patience

    def restore(self) -> None:
        """Load the best state seen (if any check ran) and put the model in eval mode."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
