"""Resolve an HF model id before loading it, so an offline machine gets one clear error at once (issue 11 case 6).

Without this, `from_pretrained("owner/name")` on a machine without the hub retries every file request five times
with backoff (about a minute) and then raises a traceback. `resolve_hub_model` decides in at most one short request:

- a complete cached copy (config + weights) and the hub offline (`HF_HUB_OFFLINE=1`) or unreachable: the cached
  snapshot folder is loaded, so no request is made at all;
- no cached copy and `HF_HUB_OFFLINE=1`: `ModelNotAvailableError` at once, without a request;
- otherwise one metadata request (`HfApi.model_info`, `timeout` seconds, no retries): unreachable, no such
  repository, gated or an invalid id is a `ModelNotAvailableError` naming the model and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


class ModelNotAvailableError(ValueError):
    """An HF model id that cannot be loaded here; the message names the model and what to do."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags)


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` when it holds a config and weights (a copy that can load)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    files = [p.name for p in folder.rglob("*")]
    if "config.json" in files and any(name.endswith(_WEIGHT_SUFFIXES) for name in files):
        return folder
    return None


def _fix(name: str, offline_names: Sequence[str]) -> str:
    return (
        f"Fix: use a model that needs no download (a registered name: {', '.join(offline_names)}; see "
        f"`mmrec models`), pass a local model folder, or go online (unset HF_HUB_OFFLINE) to download {name} once"
    )


def resolve_hub_model(name: str, offline_names: Sequence[str] = (), *, timeout: float = PROBE_TIMEOUT_S) -> str:
    """What to pass to `from_pretrained` for `name`: `name` itself (a local folder, or an id the hub serves) or
    its cached snapshot folder; raises ModelNotAvailableError (see the module docstring), whose fix lists
    `offline_names` (the registry's names)."""
    if Path(name).exists():
        return name
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    cached = cached_snapshot(name)
    if hub_offline():
        if cached is not None:
            return str(cached)
        raise ModelNotAvailableError(
            f"model {name!r}: the hub is offline (HF_HUB_OFFLINE is set) and no complete copy is cached. "
            + _fix(name, offline_names)
        )
    try:
        HfApi().model_info(name, timeout=timeout)
    except GatedRepoError:
        raise ModelNotAvailableError(
            f"model {name!r} is gated on the hub: accept its license on its page and log in (`hf auth login`), "
            "or pass a local model folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotAvailableError(
            f"model {name!r}: no such model on the hub (or it is private: log in with `hf auth login`). "
            "Check the id, or pass a registered name (`mmrec models`) or a local model folder"
        ) from None
    except HFValidationError as exc:
        raise ModelNotAvailableError(
            f"model {name!r}: not a valid HF model id ({exc}); pass owner/name, a registered name or a folder"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any transport failure (DNS, refused, timeout, proxy, 5xx) means the same
        if cached is not None:
            logger.warning("model %s: the hub is unreachable (%s); loading the cached copy %s", name, exc, cached)
            return str(cached)
        raise ModelNotAvailableError(
            f"model {name!r}: the hub cannot be reached ({type(exc).__name__}: {exc}) and no copy is cached. "
            f"{_fix(name, offline_names)}"
        ) from None
    return name
