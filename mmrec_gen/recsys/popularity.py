"""Most-popular baseline: an item's score is its number of training interactions.

Ties (including items never seen in training, which score 0) are broken by item id with the project's one id order
(`mmrec_gen.data.split.id_sort_key`: integer ids numerically first), so a ranking never depends on input order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from mmrec_gen.data.split import id_sort_key


class PopularityModel:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def fit(self, sequences: Iterable[Sequence[str]]) -> PopularityModel:
        """Count every item occurrence in the training sequences (one sequence of item ids per user)."""
        for seq in sequences:
            self.counts.update(seq)
        return self

    def scores(self, items: Sequence[str]) -> list[float]:
        return [float(self.counts.get(item, 0)) for item in items]

    def rank(self, items: Sequence[str]) -> list[str]:
        """Items by training count (high first); equal counts by item id (id_sort_key order)."""
        return sorted(items, key=lambda item: (-self.counts.get(item, 0), id_sort_key(item)))
