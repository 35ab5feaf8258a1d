"""One explicit name registry for every pluggable thing (models, text encoders, ranking backends).

Names map to lazy "module:attr" targets, so listing names never imports torch; registering a name twice raises
(lm-evaluation-harness `lm_eval/api/registry.py`). It sits in the lowest layer so that every layer can use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attr", imported on first use
    description: str


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind  # what error messages call an entry: "model name", "encoder name", "backend"
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str, description: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._entries[name].target})")
        self._entries[name] = Entry(name, target, description)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> dict[str, Entry]:
        return dict(self._entries)

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def resolve(self, name: str) -> Any:
        """The object behind `name` (imported now); KeyError-free: an unknown name raises ValueError listing names."""
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        module_name, _, attr = entry.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)
