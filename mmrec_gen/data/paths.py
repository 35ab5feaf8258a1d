"""Where mmrec-gen keeps converted models and candidate files (override with MMREC_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def mmrec_home() -> Path:
    """Root of mmrec-gen's cache: $MMREC_HOME, else ~/.cache/mmrec-gen."""
    return Path(os.environ.get("MMREC_HOME", Path.home() / ".cache" / "mmrec-gen")).expanduser()


def models_dir() -> Path:
    return mmrec_home() / "models"


def candidates_dir() -> Path:
    return mmrec_home() / "candidates"
