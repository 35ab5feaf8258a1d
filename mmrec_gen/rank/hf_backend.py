"""transformers backend: length-sorted left-padded batches on CPU (bf16 where fast) or one GPU.

Out-of-memory in a batch halves it and retries (R8); a prompt that still fails alone becomes a BackendError for
that prompt only, so the job goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from mmrec_gen.prompting.render import RenderedPrompt
from mmrec_gen.rank.backend import BackendError, ForcedChoice, LabelVocab, pick_options

logger = logging.getLogger(__name__)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


@dataclass
class _Tokens:
    """Token ids to run for one user (what _pad and _map read), plus the option continuations to score."""

    user_id: str
    input_ids: list[int]
    options: tuple[tuple[int, ...], ...] = ()
    images: tuple[str, ...] = ()  # image paths of a vision-language prompt, one per image token in input_ids


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _multimodal_rope(model) -> bool:
    """Qwen2-VL-style 3-D rotary positions, which the model computes from the image grid itself: explicit 1-D
    position ids would break them."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    return isinstance(rope, dict) and "mrope_section" in rope


class HFBackend:
    name = "hf"

    def __init__(self, loaded_model, *, batch_size: int = 8, progress: bool = True):
        """`loaded_model.model` may be an item-token recommender (models/item_rec.py): its prompts' ITEM_TOKEN
        placeholders then get the items' soft tokens inside the model's forward, and `item_scores` reads its head."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from mmrec_gen.models.item_rec import ItemRecForRanking
        from mmrec_gen.prompting.image_blocks import is_multimodal
        from mmrec_gen.prompting.sanitize import text_tokenizer

        self.model = loaded_model.model
        # A vision-language model's LoadedModel.tokenizer is its processor: it builds inputs for prompts with images.
        self.processor = loaded_model.tokenizer if is_multimodal(loaded_model.tokenizer) else None
        self.tokenizer = text_tokenizer(loaded_model.tokenizer)
        self.batch_size = batch_size
        self.progress = progress
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id
        self.item_model = self.model if isinstance(self.model, ItemRecForRanking) else None

    # -- batching ---------------------------------------------------------------------------------------
    def _pad(self, prompts: Sequence[RenderedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p.input_ids) :] = torch.tensor(p.input_ids, dtype=torch.long)
            mask[row, width - len(p.input_ids) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _map(self, prompts: Sequence[RenderedPrompt], fn: Callable[[list[RenderedPrompt]], list], desc: str) -> list:
        """Run fn over length-sorted batches; results come back in the input order."""
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i].input_ids), i))
        results: list = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not self.progress, leave=False)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, out in zip(chunk, self._run_halving([prompts[i] for i in chunk], fn), strict=True):
                results[i] = out
            bar.update(len(chunk))
        bar.close()
        return results

    def _run_halving(self, batch: list[RenderedPrompt], fn) -> list:
        try:
            with torch.inference_mode():
                return fn(batch)
        except Exception as exc:  # noqa: BLE001 - only OOM is retried, anything else is re-raised below
            if not _is_oom(exc):
                raise
            if len(batch) == 1:
                logger.warning("user %s: out of memory even alone: %s", batch[0].user_id, exc)
                return [BackendError(f"out of memory for a single prompt of {len(batch[0].input_ids)} tokens")]
            half = len(batch) // 2
            logger.warning("out of memory on a batch of %d; retrying as %d + %d", len(batch), half, len(batch) - half)
            return self._run_halving(batch[:half], fn) + self._run_halving(batch[half:], fn)

    def _image_inputs(self, batch: list, positions: bool = True) -> dict:
        """A vision-language model's inputs for prompts with images (RenderedPrompt, or token ids extended past the
        prompt): each image placeholder token of a row is replaced by the tokens the processor expands that image
        into, in order, and the processor's image tensors (pixel values, sizes, grids) come alongside."""
        from mmrec_gen.data.images import read_rendered_images

        if self.item_model is not None:
            raise ValueError("item tokens and image content blocks in one prompt are not supported")
        flat = read_rendered_images([path for p in batch for path in p.images])
        token = self.processor.image_token
        enc = self.processor(
            text=[token] * len(flat), images=[[im] for im in flat], padding=True, return_tensors="pt",
            add_special_tokens=False,
        )  # fmt: skip
        runs = iter([row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)])
        image_id = self.tokenizer.convert_tokens_to_ids(token)
        rows = []
        for p in batch:
            if sum(1 for t in p.input_ids if t == image_id) != len(p.images):
                raise ValueError(
                    f"user {p.user_id}: {sum(1 for t in p.input_ids if t == image_id)} image tokens in the prompt "
                    f"for {len(p.images)} images; an image token can only come from an image block"
                )
            rows.append([t for i in p.input_ids for t in (next(runs) if i == image_id else (i,))])
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        inputs = {k: v.to(self.device) for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        inputs.update(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        if positions and not _multimodal_rope(self.model):
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return inputs

    def _generate_inputs(self, batch: list) -> dict:
        """Inputs of model.generate (which derives positions from the attention mask itself)."""
        if any(getattr(p, "images", None) for p in batch):
            return self._image_inputs(batch, positions=False)
        ids, mask = self._pad(batch)
        return {"input_ids": ids, "attention_mask": mask}

    def _inputs(self, batch: list[RenderedPrompt]) -> dict:
        """Model inputs of a left-padded batch: token ids (with the catalogue rows of their item slots)."""
        if any(getattr(p, "images", None) for p in batch):
            return self._image_inputs(batch)
        ids, mask = self._pad(batch)
        # Explicit positions make a left-padded row compute exactly what it would alone (R10).
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        if self.item_model is not None:
            inputs["item_indices"] = self._rows([p.item_slots for p in batch])
        return inputs

    def _rows(self, id_lists: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, max length) catalogue rows of each list of item ids, padded with -1."""
        width = max((len(ids) for ids in id_lists), default=0)
        out = torch.full((len(id_lists), width), -1, dtype=torch.long)
        for row, ids in enumerate(id_lists):
            if ids:
                out[row, : len(ids)] = self.item_model.item_rows(ids).cpu()
        return out.to(self.device)

    def _no_item_tokens(self, what: str) -> None:
        if self.item_model is not None:
            raise ValueError(f"{what} is not supported with item tokens: use --mode score (or the items head)")

    # -- the primitives ---------------------------------------------------------------------------------
    def label_logits(self, prompts: Sequence[RenderedPrompt], token_ids: Sequence[int]) -> list:
        index = torch.tensor(list(token_ids), device=self.device)

        def run(batch: list[RenderedPrompt]) -> list:
            if self.item_model is not None:  # the labels head: the letters' logits at the answer position
                return self.item_model(**self._inputs(batch), label_token_ids=index).item_scores.cpu().tolist()
            # logits_to_keep=1: only the last position goes through the LM head (not the whole vocabulary x length).
            out = self.model(**self._inputs(batch), logits_to_keep=1)
            return out.logits[:, -1, :].index_select(-1, index).float().cpu().tolist()

        return self._map(prompts, run, "score")

    def item_scores(self, prompts: Sequence[RenderedPrompt]) -> list:
        """Per prompt: the item head's score of each of its candidate_ids, from the answer position's state."""
        if self.item_model is None:
            raise ValueError("item scores need an item-token model (an adapter trained with --head items)")
        n_items = len(self.item_model.config.item_ids)

        def run(batch: list[RenderedPrompt]) -> list:
            inputs = self._inputs(batch)
            sizes = [len(p.candidate_ids) for p in batch]
            if sum(sizes) > n_items // 4:  # e.g. --num-candidates all: score the whole catalogue once per batch
                every = self.item_model(**inputs).item_scores
                return [every[row, self.item_model.item_rows(p.candidate_ids)].float().cpu().tolist()
                        for row, p in enumerate(batch)]  # fmt: skip
            candidates = self._rows([p.candidate_ids for p in batch]).clamp(min=0)  # padding columns are cut below
            scores = self.item_model(**inputs, candidate_indices=candidates).item_scores.float().cpu()
            return [scores[row, :size].tolist() for row, size in enumerate(sizes)]

        return self._map(prompts, run, "score")

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )

    def generate(self, prompts: Sequence[RenderedPrompt], max_new_tokens: int) -> list:
        self._no_item_tokens("generate mode")

        def run(batch: list[RenderedPrompt]) -> list:
            inputs = self._generate_inputs(batch)
            out = self.model.generate(**inputs, generation_config=self._generation_config(max_new_tokens))
            return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        return self._map(prompts, run, "generate")

    def constrained_rank(self, prompts: Sequence[RenderedPrompt], vocab: LabelVocab) -> list:
        self._no_item_tokens("constrained mode")
        n = len(vocab.first_ids)
        if len(vocab.sep_ids) != 1:
            raise ValueError(f"constrained decoding needs a one-token separator, got token ids {vocab.sep_ids}")
        first_index = {t: i for i, t in enumerate(vocab.first_ids)}
        cont_index = {t: i for i, t in enumerate(vocab.cont_ids)}

        def run(batch: list[RenderedPrompt]) -> list:
            inputs = self._generate_inputs(batch)
            prompt_len = inputs["input_ids"].shape[1]

            def allowed(_: int, seq: torch.Tensor) -> list[int]:
                # Output shape: label (sep label)*: even steps emit an unused label, odd steps the separator.
                generated = seq[prompt_len:].tolist()
                step = len(generated)
                if step % 2 == 1:
                    return list(vocab.sep_ids)
                if step == 0:
                    return list(vocab.first_ids)
                used = {first_index.get(generated[0])} | {cont_index.get(t) for t in generated[2::2]}
                return [t for i, t in enumerate(vocab.cont_ids) if i not in used]

            out = self.model.generate(
                **inputs,
                generation_config=self._generation_config(2 * n - 1),
                prefix_allowed_tokens_fn=allowed,
            )
            orders = []
            for row in out[:, prompt_len:].tolist():
                if row[0] not in first_index or any(t not in cont_index for t in row[2::2]):
                    # Every allowed token had a NaN logit, so greedy search fell back to token 0.
                    orders.append(BackendError(
                        "non-finite logits: the model computed NaN or infinite logits (weights or an adapter "
                        "holding NaN, or an fp16 overflow: try --dtype float32)"
                    ))  # fmt: skip
                    continue
                orders.append([first_index[row[0]]] + [cont_index[t] for t in row[2::2]])
            return orders

        return self._map(prompts, run, "constrained")

    def option_scores(self, prompts: Sequence[RenderedPrompt], choices: Sequence[ForcedChoice]) -> list:
        """Per prompt: the mean log-probability of each option's tokens after prompt + lead (the tokens all options
        share are the lead's), or a BackendError. The prompt (+ lead) runs once; its KV cache is repeated once per
        option, and all options of a batch are scored in one more forward pass."""
        self._no_item_tokens("explanations")
        if len(prompts) != len(choices):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} choices; pass one choice per prompt")
        scored = []
        for p, c in zip(prompts, choices, strict=True):
            if not c.options:
                raise ValueError(f"user {p.user_id}: a forced choice needs at least one option")
            seqs = [self._encode(c.lead + option) for option in c.options]
            # Tokens every option shares (the lead's, up to where a title's first token may merge with it).
            shared = _common_prefix([self._encode(c.lead), *seqs])
            rest = tuple(tuple(s[shared:]) for s in seqs)
            if not all(rest):
                raise ValueError(f"user {p.user_id}: an option is empty or a prefix of the lead: {c.options}")
            scored.append(_Tokens(p.user_id, [*p.input_ids, *seqs[0][:shared]], rest, tuple(p.images)))

        def score(batch: list[_Tokens]) -> list:
            inputs = self._generate_inputs(batch)  # token ids (and a vision-language model's image tensors)
            mask = inputs["attention_mask"]
            out = self.model(
                **inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1
            )  # fmt: skip
            k = max(len(t.options) for t in batch)
            width = max(len(o) for t in batch for o in t.options)
            opt = torch.full((len(batch) * k, width), self.pad_id, dtype=torch.long, device=self.device)
            opt_mask = torch.zeros_like(opt)
            for row, t in enumerate(batch):
                for j, o in enumerate(t.options):
                    opt[row * k + j, : len(o)] = torch.tensor(o, dtype=torch.long)
                    opt_mask[row * k + j, : len(o)] = 1
            cache = out.past_key_values
            cache.batch_repeat_interleave(k)
            attention = torch.cat([mask.repeat_interleave(k, 0), opt_mask], dim=-1)
            start = mask.sum(-1).repeat_interleave(k)[:, None]
            tail = self.model(
                input_ids=opt, attention_mask=attention, position_ids=start + torch.arange(width, device=self.device),
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
            # Log-probability of option token t: from the prompt's last logits for t = 0, else from position t - 1.
            logits = torch.cat([out.logits[:, -1:, :].repeat_interleave(k, 0), tail.logits[:, :-1, :]], dim=1)
            token_logp = logits.float().log_softmax(-1).gather(-1, opt[..., None]).squeeze(-1) * opt_mask
            mean = (token_logp.sum(-1) / opt_mask.sum(-1).clamp(min=1)).view(len(batch), k).cpu().tolist()
            return [row[: len(t.options)] for row, t in zip(mean, batch, strict=True)]

        return self._map(scored, score, "choose")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def choose_then_generate(
        self, prompts: Sequence[RenderedPrompt], choices: Sequence[ForcedChoice], max_new_tokens: int
    ) -> list:
        """The option with the best `option_scores` (the first of tied ones; a single option is not scored), then
        greedy decoding after prompt + lead + option + its bridge, up to the first of the choices' `stop` strings."""
        picks = pick_options(self.option_scores, prompts, choices)
        continued = []
        for p, c, pick in zip(prompts, choices, picks, strict=True):
            forced = [] if isinstance(pick, BackendError) else self._encode(c.forced(pick))
            continued.append(_Tokens(p.user_id, [*p.input_ids, *forced], images=tuple(p.images)))
        stops = sorted({s for c in choices for s in c.stop})

        def run(batch: list[_Tokens]) -> list:
            inputs = self._generate_inputs(batch)
            config = self._generation_config(max_new_tokens)
            config.stop_strings = stops or None  # each row stops at its own first stop string (or at EOS)
            out = self.model.generate(**inputs, generation_config=config, tokenizer=self.tokenizer if stops else None)
            return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        texts = self._map(continued, run, "explain")
        return [
            pick if isinstance(pick, BackendError) else text if isinstance(text, BackendError) else (pick, text)
            for pick, text in zip(picks, texts, strict=True)
        ]
