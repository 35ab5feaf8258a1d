"""The vLLM logits processor behind the vLLM backend's constrained mode (rank/vllm_backend.py).

A module of its own because it imports vLLM at import time: vLLM's engine core (a subprocess unless
VLLM_ENABLE_V1_MULTIPROCESSING=0) receives the class by reference and imports it from here, so it must be a
module-level class; vllm_backend.py itself stays importable without vLLM.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

# The per-request key in SamplingParams.extra_args that switches the processor on for a request.
PERMUTATION_KEY = "mmrec_label_permutation"


class LabelPermutationProcessor(AdapterLogitsProcessor):
    """Per request with `extra_args[PERMUTATION_KEY] = (first_ids, cont_ids, [sep_id])`: even steps may emit only a
    label not emitted yet (the first label from `first_ids`, later ones from `cont_ids`), odd steps only the
    separator; every other token is -inf, so greedy decoding yields a full permutation (R3), by the same rule as
    HFBackend.constrained_rank's prefix_allowed_tokens_fn."""

    @classmethod
    def validate_params(cls, params) -> None:
        spec = (params.extra_args or {}).get(PERMUTATION_KEY)
        if spec is not None and (len(spec) != 3 or len(spec[2]) != 1 or len(spec[0]) != len(spec[1])):
            raise ValueError(f"{PERMUTATION_KEY}: expected (first_ids, cont_ids, [sep_id]), got {spec!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the greedy pick: it must run before argmax

    def new_req_logits_processor(self, params):
        spec = (params.extra_args or {}).get(PERMUTATION_KEY)
        if spec is None:
            return None
        first_ids, cont_ids, sep_ids = (list(map(int, s)) for s in spec)
        first_index = {t: i for i, t in enumerate(first_ids)}
        cont_index = {t: i for i, t in enumerate(cont_ids)}

        def allow(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            step = len(output_ids)
            if step % 2 == 1:
                allowed = sep_ids
            elif step == 0:
                allowed = first_ids
            else:
                used = {first_index.get(output_ids[0])} | {cont_index.get(t) for t in output_ids[2::2]}
                allowed = [t for i, t in enumerate(cont_ids) if i not in used]
            keep = torch.full_like(logits, float("-inf"))
            keep[allowed] = 0.0
            return logits + keep

        return allow
