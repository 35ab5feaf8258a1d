"""The item-token recommender served by vLLM: its text model in vLLM's pooling runner, its splice and heads in ours.

vLLM cannot run the item tokens (a projector over feature tables at placeholder positions), but it takes a prompt as
`prompt_embeds` (`enable_prompt_embeds=True`) and, with `runner="pooling"` and LAST pooling without normalisation,
returns the final hidden state of a prompt's last position. So:

1. the text model alone (layer cut, LoRA merged: `ItemRecForRanking.language_model_state`) is written once as a plain
   causal-LM folder (cached under $MMREC_HOME/vllm-item-models/, keyed by a hash of its weights) and served;
2. each prompt's input embeddings are built by the model's own splice (`embed_prompts`, the HF backend's code);
3. vLLM returns the answer position's hidden state (`LLM.encode(..., pooling_task="embed")`);
4. the scores come from `ItemRecForRanking.score_states`, the code the HF backend's forward uses (item head, or the
   LM logits of the letters for the labels head).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import torch

from mmrec_gen.prompting.render import RenderedPrompt
from mmrec_gen.rank.backend import BackendError

logger = logging.getLogger(__name__)


def served_language_model(model, tokenizer) -> str:
    """A plain causal-LM folder of the item-token model's text model (cut, merged), written once per weights."""
    from safetensors.torch import save_file

    from mmrec_gen.data.paths import mmrec_home

    text_config, state = model.language_model_state()
    digest = hashlib.sha256(text_config.to_json_string().encode())
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().float().cpu().numpy().tobytes())
    folder = mmrec_home() / "vllm-item-models" / digest.hexdigest()[:16]
    if not (folder / "model.safetensors").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        config = text_config.to_dict()
        config["architectures"] = config.get("architectures") or _causal_lm_class(text_config)
        text_config.__class__.from_dict(config).save_pretrained(str(tmp))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})  # fmt: skip
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(folder)
        logger.info("item-token model: its text model written for vLLM to %s", folder)
    return str(folder)


def _causal_lm_class(text_config) -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text_config.model_type]]


class VLLMItemScorer:
    """`item_scores` / `label_logits` of an item-token model through vLLM's pooling runner (module docstring)."""

    def __init__(self, loaded_model, *, max_model_len: int, kv_cache_memory_bytes: int | None, progress: bool = True):
        from mmrec_gen.rank.vllm_import import import_vllm

        vllm = import_vllm()
        from vllm.config import PoolerConfig

        self.model = loaded_model.model.eval()
        self.device = next(self.model.parameters()).device
        self.max_model_len = max_model_len
        self.progress = progress
        path = served_language_model(self.model, loaded_model.tokenizer)
        dtype = str(next(self.model.model.parameters()).dtype).replace("torch.", "")
        logger.info("starting vLLM's pooling runner on %s (%s, max_model_len %s)", path, dtype, max_model_len)
        self.llm = vllm.LLM(
            model=path,
            runner="pooling",
            # The answer position's final hidden state, as it is: no activation, no normalisation.
            pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False),
            enable_prompt_embeds=True,
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enforce_eager=True,
        )

    @torch.inference_mode()
    def _states(self, prompts: Sequence[RenderedPrompt]) -> list:
        """Per prompt: the answer position's hidden state (H,) from vLLM, or a BackendError (too long)."""
        results: list = [None] * len(prompts)
        todo, requests = [], []
        for i, p in enumerate(prompts):
            if len(p.input_ids) + 1 > self.max_model_len:
                results[i] = BackendError(
                    f"prompt of {len(p.input_ids)} tokens + 1 answer token exceeds the vLLM engine's max_model_len "
                    f"{self.max_model_len}"
                )
                continue
            ids = torch.tensor([p.input_ids], device=self.device)
            rows = self.model.item_rows(p.item_slots).unsqueeze(0) if p.item_slots else None
            embeds = self.model.embed_prompts(ids, rows)[0]
            requests.append({"prompt_embeds": embeds.detach().cpu()})
            todo.append(i)
        if requests:
            outputs = self.llm.encode(requests, pooling_task="embed", use_tqdm=self.progress)
            for i, out in zip(todo, outputs, strict=True):
                results[i] = torch.as_tensor(out.outputs.data).to(self.device)
        return results

    def _scores(self, prompts: Sequence[RenderedPrompt], score) -> list:
        states = self._states(prompts)
        out: list = []
        with torch.inference_mode():
            for p, state in zip(prompts, states, strict=True):
                out.append(
                    state
                    if isinstance(state, BackendError)
                    else score(p, state.unsqueeze(0))[0].float().cpu().tolist()
                )
        return out

    def item_scores(self, prompts: Sequence[RenderedPrompt]) -> list:
        return self._scores(
            prompts,
            lambda p, state: self.model.score_states(state, self.model.item_rows(p.candidate_ids).unsqueeze(0)),
        )

    def label_logits(self, prompts: Sequence[RenderedPrompt], token_ids: Sequence[int]) -> list:
        index = torch.tensor([int(t) for t in token_ids], device=self.device)
        return self._scores(prompts, lambda p, state: self.model.score_states(state, label_token_ids=index))
