"""Loaders behind the registry names, and the dtype policy (bf16 where the hardware runs it fast)."""

from __future__ import annotations

import functools
import logging

from mmrec_gen.models.types import LoadedModel

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float32")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX): there bf16 runs ~4x fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _finish(name: str, model, tokenizer, dtype, path: str | None, cast: bool = True) -> LoadedModel:
    import torch

    if cast:  # a quantized (QLoRA) model is already placed and typed by bitsandbytes
        model = model.to(dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched prompts are left-padded so that every prompt ends at the last position.
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        raise ValueError(f"model {name!r}: its tokenizer has no chat template; mmrec-gen renders chat prompts")
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s (%.1fM parameters, %s)", name, num_parameters / 1e6, str(dtype).replace("torch.", ""))
    return LoadedModel(name, model, tokenizer, str(dtype).replace("torch.", ""), num_parameters, path)


def load_hf_causal_lm(
    name_or_path: str, *, dtype: str = "auto", display_name: str | None = None, **from_pretrained_kwargs
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_vision_language(name_or_path):
        return load_hf_vlm(name_or_path, dtype=dtype, display_name=display_name, **from_pretrained_kwargs)
    torch_dtype = resolve_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, **from_pretrained_kwargs)
    quantized = "quantization_config" in from_pretrained_kwargs
    return _finish(display_name or name_or_path, model, tokenizer, torch_dtype, str(name_or_path), cast=not quantized)


def is_vision_language(name_or_path: str) -> bool:
    """True when the model's config has a vision tower (LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics/SmolVLM, ...): it is
    loaded with AutoModelForImageTextToText and its AutoProcessor instead of a causal LM and a tokenizer."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError):  # not loadable here: the loader that follows raises the clear error
        return False
    return getattr(config, "vision_config", None) is not None


def load_hf_vlm(
    name_or_path: str, *, dtype: str = "auto", display_name: str | None = None, **from_pretrained_kwargs
) -> LoadedModel:
    """A vision-language model: `LoadedModel.tokenizer` is its processor (the prompt layer renders chats with it and
    reads its text tokenizer; the backends build image inputs with it)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = resolve_dtype(dtype)
    processor = AutoProcessor.from_pretrained(name_or_path)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"model {name_or_path!r} has a vision config but its AutoProcessor ({type(processor).__name__}) has no "
            "tokenizer and image processor; save the processor next to the model (processor.save_pretrained)"
        )
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=torch_dtype, **from_pretrained_kwargs)
    if "quantization_config" not in from_pretrained_kwargs:
        model = model.to(torch_dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"model {name_or_path!r}: its processor has no chat template; mmrec-gen renders chat prompts")
    num_parameters = sum(p.numel() for p in model.parameters())
    name = display_name or name_or_path
    logger.info("loaded %s (vision-language, %.1fM parameters, %s)", name, num_parameters / 1e6, torch_dtype)
    return LoadedModel(
        name, model, processor, str(torch_dtype).replace("torch.", ""), num_parameters, str(name_or_path)
    )


def load_smollm2(*, dtype: str = "auto", **from_pretrained_kwargs) -> LoadedModel:
    from mmrec_gen.models.smollm2 import SMOLLM2_NAME, ensure_smollm2

    return load_hf_causal_lm(str(ensure_smollm2()), dtype=dtype, display_name=SMOLLM2_NAME, **from_pretrained_kwargs)


def _no_kwargs(name: str, kwargs: dict) -> None:
    if kwargs:
        raise ValueError(f"model {name!r} is built in-process and takes no loading options ({', '.join(kwargs)})")


def load_tiny_llama(*, dtype: str = "auto", **kwargs) -> LoadedModel:
    import torch

    from mmrec_gen.models.tiny import build_tiny_llama, build_tiny_tokenizer

    _no_kwargs("tiny-llama", kwargs)
    # Tiny models stay fp32 under "auto": they exist for exact numerical tests, not speed.
    torch_dtype = torch.float32 if dtype == "auto" else resolve_dtype(dtype)
    tokenizer = build_tiny_tokenizer()
    return _finish("tiny-llama", build_tiny_llama(tokenizer), tokenizer, torch_dtype, None)


def load_tiny_llama_smollm2_tokenizer(*, dtype: str = "auto", **kwargs) -> LoadedModel:
    import torch
    from transformers import AutoTokenizer

    from mmrec_gen.models.smollm2 import ensure_smollm2
    from mmrec_gen.models.tiny import build_tiny_llama

    _no_kwargs("tiny-llama-smollm2-tokenizer", kwargs)
    torch_dtype = torch.float32 if dtype == "auto" else resolve_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    return _finish("tiny-llama-smollm2-tokenizer", build_tiny_llama(tokenizer), tokenizer, torch_dtype, None)
