"""Seeds derived from (global seed, keys), never from the order in which work is done (docs/RELIABILITY.md R10).

`derive_seed(seed, "candidates", user_id)` is the same number in every process, on every platform and in every batch
or worker layout, because it hashes a canonical string form of the keys instead of relying on `hash()` (salted per
process) or on a shared, stateful generator.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _canonical(keys: tuple[object, ...]) -> str:
    # Each part is length-prefixed so that ("ab", "c") and ("a", "bc") never collide. `str` (not `repr`) keeps
    # 7 and "7" equal on purpose: ids are strings everywhere, but a caller may still pass a MovieLens int.
    return "".join(f"{len(s)}:{s};" for s in (str(k) for k in keys))


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from sha256 of the global `seed` and `keys` (stable across processes and platforms)."""
    digest = hashlib.sha256(_canonical((int(seed), *keys)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded with `derive_seed(seed, *keys)`."""
    return np.random.default_rng(derive_seed(seed, *keys))
