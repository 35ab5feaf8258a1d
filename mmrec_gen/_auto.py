"""Register the item-token model with transformers' Auto classes as soon as transformers is imported.

transformers and torch take seconds to import; the package must not pay that on `import mmrec_gen` (the CLI's
`--help`). So the registration runs right after `transformers` finishes importing, whenever that happens: at once
if it already has, else from a one-shot import hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    import mmrec_gen.models.item_rec  # noqa: F401 - registers AutoConfig / AutoModel on import


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of `transformers` so that `_register` runs after it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_transformers_loads() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
