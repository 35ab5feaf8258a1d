"""The item-token recommender as one transformers model (LLaVA's shape, applied to items).

- `ItemRecConfig` (`model_type: mmrec_item_rec`): the text model's config (its `num_hidden_layers` is the layer cut),
  the catalogue (`item_ids`), the item-token sources and their widths, the projector type (LLaVA-builder style), the
  placeholder token id, the head (`items` or `labels`), the feature tables' fingerprints, the base model it was cut
  from and the prompt options it was trained with (`recipe`: template, history and length budgets, split, seed).
- `ItemRecForRanking`: the decoder (`model`), the LM head (`lm_head`, tied as in the text model) and the item tokens
  (`item_tokens`: feature tables as persistent buffers, projectors, item head). `forward` splices the soft item tokens
  at the placeholder positions (refusing a slot/item count mismatch) and returns `ItemRecOutput` with the loss, the
  item scores at the answer position and, when asked, the final hidden states.

Registered with the Auto classes (`AutoConfig`, `AutoModel`), so `from_pretrained(folder)` works after
`import mmrec_gen`. LoRA is PEFT's (the item tokens are `modules_to_save`); `save_pretrained` writes one folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from mmrec_gen.models.item_tokens import HEADS, PROJECTOR_TYPES, SOURCES, ItemTokens, table_fingerprint

MODEL_TYPE = "mmrec_item_rec"
IGNORE_INDEX = -100


class ItemRecConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        item_ids: Sequence[str] = (),
        source_dims: Mapping[str, int] | None = None,
        projector_type: str = "mlp2x_gelu",
        item_token_id: int | None = None,
        head: str = "items",
        fingerprints: Mapping[str, str] | None = None,
        base_model: str | None = None,
        recipe: Mapping | None = None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "llama")](**text_config)
        self.text_config = text_config if text_config is not None else CONFIG_MAPPING["llama"]()
        self.item_ids = list(item_ids)
        self.source_dims = {s: int(d) for s, d in (source_dims or {}).items()}
        self.projector_type = projector_type
        self.item_token_id = item_token_id
        self.head = head
        self.fingerprints = dict(fingerprints or {})
        self.base_model = base_model
        self.recipe = dict(recipe or {})
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        self.validate()

    @property
    def sources(self) -> list[str]:
        return [s for s in SOURCES if s in self.source_dims]

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    def validate(self) -> None:
        """Types and values of every field (a hand-edited config.json fails here, naming the field)."""
        problems = []
        if sorted(set(self.source_dims) - set(SOURCES)):
            problems.append(f"source_dims: sources must be among {', '.join(SOURCES)}, got {sorted(self.source_dims)}")
        if any(d < 1 for d in self.source_dims.values()):
            problems.append(f"source_dims: widths must be >= 1, got {self.source_dims}")
        if self.projector_type not in PROJECTOR_TYPES:
            problems.append(f"projector_type: one of {', '.join(PROJECTOR_TYPES)}, got {self.projector_type!r}")
        if self.head not in HEADS:
            problems.append(f"head: one of {', '.join(HEADS)}, got {self.head!r}")
        if self.item_token_id is not None and (isinstance(self.item_token_id, bool) or not isinstance(
                self.item_token_id, int) or self.item_token_id < 0):  # fmt: skip
            problems.append(f"item_token_id: a token id (int >= 0), got {self.item_token_id!r}")
        if not all(isinstance(i, str) for i in self.item_ids) or len(set(self.item_ids)) != len(self.item_ids):
            problems.append("item_ids: distinct item id strings")
        problems += _recipe_problems(self.recipe)
        if self.source_dims and sorted(self.fingerprints) != sorted(self.source_dims):
            problems.append(
                f"fingerprints: one per source {sorted(self.source_dims)}, got {sorted(self.fingerprints)}"
            )
        if problems:
            raise ValueError("item-token model config: " + "; ".join(problems))


# The prompt options a model records (config.recipe) and what each must be.
_RECIPE_INTS = ("max_history", "max_model_len", "max_text_chars", "num_candidates", "seed")


def _recipe_problems(recipe: Mapping) -> list[str]:
    problems = []
    for key in _RECIPE_INTS:
        value = recipe.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or (value < 1 and key != "seed")
        ):
            problems.append(f"recipe.{key}: an integer >= 1, got {value!r}")
    if "split" in recipe and recipe["split"] not in ("valid", "test"):
        problems.append(f"recipe.split: valid or test, got {recipe['split']!r}")
    for key in ("template", "text_encoder"):
        if key in recipe and not (isinstance(recipe[key], str) and recipe[key]):
            problems.append(f"recipe.{key}: a non-empty string, got {recipe[key]!r}")
    return problems


@dataclass
class ItemRecOutput(ModelOutput):
    """`loss`: the item-head loss (next items, or the right candidate) plus the token loss when `labels` are given;
    `item_scores`: (B, n) scores at each row's answer position, of `candidate_indices` (or of the whole catalogue);
    `hidden_states`: (B, T, H) final hidden states, when asked for; `logits`: LM logits, when asked for;
    `position_scores`: (N, K) item-head scores of `position_candidates` at the N positions of `score_positions`."""

    loss: torch.Tensor | None = None
    item_scores: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    position_scores: torch.Tensor | None = None


def item_rec_config(
    language_model,
    *,
    item_ids: Sequence[str],
    tables: Mapping[str, np.ndarray],
    num_layers: int | None = None,
    **fields,
) -> ItemRecConfig:
    """The config of an item-token model over `language_model` cut to `num_layers` (default all) and `tables`."""
    text = language_model.config.get_text_config()
    total = text.num_hidden_layers
    num_layers = total if num_layers is None else num_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"--num-layers must be between 1 and {total} (the model's layers), got {num_layers}")
    text = type(text).from_dict({**text.to_dict(), "num_hidden_layers": num_layers})
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:num_layers]
    return ItemRecConfig(
        text_config=text,
        item_ids=item_ids,
        source_dims={s: int(np.asarray(t).shape[1]) for s, t in tables.items()},
        fingerprints={s: table_fingerprint(t) for s, t in tables.items()},
        **fields,
    )


class ItemRecPreTrainedModel(PreTrainedModel):
    config_class = ItemRecConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        if isinstance(module, ItemTokens):
            module.reset_parameters()
        elif not getattr(module, "_mmrec_item_tokens", False):
            super()._init_weights(module)


class ItemRecForRanking(ItemRecPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ItemRecConfig):
        super().__init__(config)
        text = config.text_config
        self.model = AutoModel.from_config(text)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.item_tokens = ItemTokens(
            len(config.item_ids), config.source_dims, text.hidden_size, config.projector_type
        )
        for module in self.item_tokens.modules():  # _init_weights leaves them to ItemTokens.reset_parameters
            module._mmrec_item_tokens = True
        self.post_init()

    # -- building from a causal LM ------------------------------------------------------------------------
    @classmethod
    def from_language_model(
        cls,
        language_model,
        config: ItemRecConfig,
        *,
        tables: Mapping[str, np.ndarray] | None = None,
        has_image: np.ndarray | None = None,
        seed: int = 0,
    ) -> ItemRecForRanking:
        """An item-token model around a loaded causal LM (its decoder and LM head are taken, not copied), cut to
        `config`'s layer count, with new projectors (seeded) and the identity head; the feature tables are `tables`
        (checked against the config's fingerprints), or zeros until saved weights are loaded."""
        text = config.text_config
        total = len(language_model.get_decoder().layers)
        if not 1 <= text.num_hidden_layers <= total:
            raise ValueError(f"the model keeps {text.num_hidden_layers} layers; the base model has {total}")
        with torch.device("meta"):  # the decoder and head are replaced below: allocate nothing for them
            model = cls(config)
        decoder = language_model.get_decoder()
        decoder.layers = decoder.layers[: text.num_hidden_layers]
        decoder.config = text
        model.model = decoder
        model.lm_head = language_model.get_output_embeddings()
        item_tokens = ItemTokens(len(config.item_ids), config.source_dims, text.hidden_size, config.projector_type)
        for module in item_tokens.modules():
            module._mmrec_item_tokens = True
        with torch.random.fork_rng(devices=[]):
            from mmrec_gen.data.seeding import derive_seed

            torch.manual_seed(derive_seed(seed, "item-tokens", "init"))
            item_tokens.reset_parameters()
        model.item_tokens = item_tokens.to(decoder.embed_tokens.weight.device)
        model.to(decoder.embed_tokens.weight.dtype)
        model.item_tokens.float()  # tables, projectors and head stay fp32 (exact fingerprints, cheap)
        if tables is not None:
            model.item_tokens.set_tables(tables, has_image)
            model.check_tables("the features given")
        return model

    # -- accessors ------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self):
        return self.model

    def item_rows(self, item_ids: Sequence[str]) -> torch.Tensor:
        """Catalogue rows of `item_ids` (a KeyError names the first unknown one)."""
        index = getattr(self, "_item_index", None)
        if index is None:
            index = self._item_index = {item: k for k, item in enumerate(self.config.item_ids)}
        missing = [i for i in item_ids if i not in index]
        if missing:
            raise KeyError(f"item {missing[0]!r} is not in the catalogue this model was trained on")
        return torch.tensor([index[i] for i in item_ids], dtype=torch.long, device=self.lm_head.weight.device)

    def check_tables(self, where: str = "model") -> None:
        """Refuse feature tables other than the ones the config records (another dataset, split or a damaged file)."""
        now = self.item_tokens.fingerprints()
        if now != self.config.fingerprints:
            changed = sorted(
                s for s in set(now) | set(self.config.fingerprints) if now.get(s) != self.config.fingerprints.get(s)
            )
            raise ValueError(
                f"{where}: its item-token feature tables ({', '.join(changed)}) are not the ones it was trained on "
                f"(recorded {[self.config.fingerprints.get(s) for s in changed]}, found {[now.get(s) for s in changed]}); "
                "use the model with the data it was trained on, or retrain it"
            )

    # -- the splice ------------------------------------------------------------------------------------------
    def embed_prompts(
        self, input_ids: torch.Tensor, item_indices: torch.Tensor | None, soft_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Input embeddings with each placeholder replaced by its item's soft token.

        `item_indices` (B, S): the catalogue rows of row b's placeholders in order, padded with -1. Rows whose
        `soft_mask` is False get a zero vector at their slots instead (LLaRA's text-only prompts).
        """
        placeholder = self.config.item_token_id
        is_slot = (
            input_ids == placeholder if placeholder is not None else torch.zeros_like(input_ids, dtype=torch.bool)
        )
        # The placeholder may lie past the vocabulary (it is never embedded): look up a harmless id instead.
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_slot, 0))
        if item_indices is None:
            item_indices = input_ids.new_full((input_ids.shape[0], 0), -1)
        counts, given = is_slot.sum(-1), (item_indices >= 0).sum(-1)
        if not torch.equal(counts, given):
            row = int((counts != given).nonzero()[0, 0])
            raise ValueError(
                f"prompt row {row}: {int(counts[row])} item placeholders for {int(given[row])} item slots"
            )
        rows = item_indices[item_indices >= 0]  # row-major, like the slots
        if rows.numel() and int(rows.max()) >= self.item_tokens.num_items:
            raise ValueError(f"item index {int(rows.max())} is outside the catalogue of {self.item_tokens.num_items}")
        spliced = self.item_tokens.embed(embeds, is_slot, rows)
        if soft_mask is not None and not bool(soft_mask.all()):
            hide = is_slot & ~soft_mask.to(torch.bool).unsqueeze(-1)
            spliced = spliced.masked_fill(hide.unsqueeze(-1), 0.0)
        return spliced

    def score_states(
        self,
        states: torch.Tensor,
        candidate_indices: torch.Tensor | None = None,
        label_token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, H) answer-position states -> (B, C) scores: the item head's of `candidate_indices` (B, C) (the whole
        catalogue when None), or with `label_token_ids` (C,) the LM logits of those tokens (the labels head). The one
        scoring code of every backend (vLLM hands over the states its pooling runner returns)."""
        if label_token_ids is not None:
            return self.lm_head(states.to(self.lm_head.weight.dtype))[:, label_token_ids].float()
        head = self.item_tokens.head(states.to(self.item_tokens.head.weight.dtype))  # (B, H)
        if candidate_indices is None:
            return head @ self.item_tokens.item_reps().T
        reps = self.item_tokens.item_reps(candidate_indices.reshape(-1)).view(*candidate_indices.shape, -1)
        return torch.einsum("bh,bch->bc", head, reps)

    def language_model_state(self) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
        """The text model alone (cut, LoRA merged) as a causal LM's config and weights: what vLLM serves."""
        state = {k: v for k, v in self.state_dict().items() if k.startswith(("model.", "lm_head."))}
        if self.config.text_config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return self.config.text_config, state

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        item_indices: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        candidate_indices: torch.Tensor | None = None,
        label_token_ids: torch.Tensor | None = None,
        item_labels: torch.Tensor | None = None,
        candidate_labels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        soft_mask: torch.Tensor | None = None,
        score_positions: torch.Tensor | None = None,
        position_candidates: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_logits: bool = False,
        **kwargs,
    ) -> ItemRecOutput:
        """Inputs: token ids with placeholders and `item_indices` (or ready `inputs_embeds`), mask and positions.

        Scores at each row's last attended position: the item head's scores of `candidate_indices` (B, C) (catalogue
        rows; the whole catalogue when None), or with `label_token_ids` (C,) the LM logits of those tokens (the
        labels head). Losses, summed when several are given: `item_labels` (B, T) the catalogue row each position
        predicts (-100: none; the item head over the whole catalogue); `candidate_labels` (B,) the right column of
        the scores; `labels` (B, T) next-token targets (the LM head; projector alignment). `score_positions` (B, T)
        with `position_candidates` (N, K): the item-head scores of K catalogue rows at each of those N positions
        (row-major), e.g. a chosen and rejected items for S-DPO.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_prompts(input_ids, item_indices, soft_mask)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        out = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
            **kwargs,
        )  # fmt: skip
        hidden = out.last_hidden_state
        last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).long().argmax(-1)  # last attended position
        answer = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        item_scores = self.score_states(answer, candidate_indices, label_token_ids)
        loss = None
        if item_labels is not None:
            where = item_labels != IGNORE_INDEX
            scores = self.item_tokens(hidden[where])
            loss = F.cross_entropy(scores.float(), item_labels[where])
        if candidate_labels is not None:
            part = F.cross_entropy(item_scores.float(), candidate_labels)
            loss = part if loss is None else loss + part
        position_scores = None
        if position_candidates is not None:
            states = self.item_tokens.head(hidden[score_positions].to(self.item_tokens.head.weight.dtype))  # (N, H)
            reps = self.item_tokens.item_reps(position_candidates.reshape(-1)).view(*position_candidates.shape, -1)
            position_scores = torch.einsum("nh,nkh->nk", states, reps)
        logits = None
        if labels is not None or return_logits:
            logits = self.lm_head(hidden).float()
        if labels is not None:
            part = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
            loss = part if loss is None else loss + part
        return ItemRecOutput(
            loss=loss,
            item_scores=item_scores,
            hidden_states=hidden if output_hidden_states else None,
            logits=logits if return_logits else None,
            position_scores=position_scores,
        )


AutoConfig.register(MODEL_TYPE, ItemRecConfig)
AutoModel.register(ItemRecConfig, ItemRecForRanking)
