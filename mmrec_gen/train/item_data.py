"""Training and evaluation rows of the item-token recommender, and the collator that batches them.

- `--head items`: each example is a window of a user's train sequence shown as item tokens (the compact `rec_items`
  template, candidates not in the prompt). One forward pass trains every prefix, as SASRec does: the hidden state at
  each history item's slot predicts the next item, and the answer position predicts the window's last item.
- `--head labels`: the verbalizer over candidate letters (`rec_labels`: history and candidates as item tokens); the
  target is the answer's letter among the candidates' letters.
- Evaluation rows (the valid split during training): each user of the valid split's candidate file, history = the
  train items, scored over the file's candidates; the right candidate's column is the row's `candidate_label`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.train.examples import build_examples

logger = logging.getLogger(__name__)


@dataclass
class ItemExample:
    prompt: RenderedPrompt
    targets: list[int]  # items head: catalogue row per slot, then the answer position's; labels head: [answer index]
    user: str = ""


def _windows(sequence: list, length: int, limit: int) -> list[list]:
    """Spans of `length` items from the sequence's end backwards (most recent first), at most `limit`; neighbours
    share their boundary item, so every item after the first is some window's answer or a slot's target once."""
    out, end = [], len(sequence)
    while end >= 2 and len(out) < limit:
        out.append(sequence[max(0, end - length) : end])
        end -= length - 1
    return out


def item_head_examples(cfg, ds, split_result, builder: PromptBuilder, index: dict) -> tuple[list[ItemExample], int]:
    examples, dropped = [], 0
    users = list(split_result.users)[: cfg.max_users] if cfg.max_users else list(split_result.users)
    for user in users:
        train = list(split_result.users[user].train)
        for window in _windows(train, cfg.max_history + 1, cfg.windows_per_user):
            history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in window[:-1]]
            try:
                prompt = builder.rank(user, history, [])
            except PromptTooLongError as exc:
                dropped += 1
                logger.warning("training window of user %s dropped: %s", user, exc)
                continue
            shown = [i.item_id for i in window[-1 - prompt.n_history_used : -1]] if prompt.n_history_used else []
            nexts = [i.item_id for i in window[len(window) - prompt.n_history_used :]]
            assert prompt.item_slots == shown, "slots must be the shown history"
            examples.append(ItemExample(prompt, [index[i] for i in nexts] + [index[window[-1].item_id]], user))
    return examples, dropped


def label_head_examples(cfg, ds, split_result, builder: PromptBuilder) -> tuple[list[ItemExample], int]:
    examples, dropped = [], 0
    for ex in build_examples(
        ds, split_result, seed=cfg.seed, num_candidates=cfg.num_candidates, windows_per_user=cfg.windows_per_user,
        min_history=cfg.min_history, max_examples=cfg.max_examples, max_users=cfg.max_users,
    ):  # fmt: skip
        history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in ex.history]
        try:
            prompt = builder.rank(ex.user_id, history, [ds.items[c] for c in ex.candidates])
        except PromptTooLongError as exc:
            dropped += 1
            logger.warning("training example of user %s dropped: %s", ex.user_id, exc)
            continue
        examples.append(ItemExample(prompt, [ex.target_index], ex.user_id))
    return examples, dropped


def training_rows(examples: Sequence[ItemExample], head: str, index: dict) -> list[dict]:
    """Trainer rows: token ids, the catalogue row of each slot, and the head's targets."""
    rows = []
    for ex in examples:
        row = {"input_ids": ex.prompt.input_ids, "item_indices": [index[i] for i in ex.prompt.item_slots]}
        if head == "items":
            row["targets"] = ex.targets
        else:
            row["candidate_label"] = ex.targets[0]
        rows.append(row)
    return rows


def evaluation_rows(ds, split_result, candidate_file, builder: PromptBuilder, index: dict, head: str,
                    max_users: int | None = None) -> list[dict]:  # fmt: skip
    """One row per user of `candidate_file` (the valid split's): history before its target, scored over its
    candidates. The items head needs no candidates in the prompt: the target goes first (`candidate_label` 0); the
    labels head shows them in file order and its label is the target's position."""
    rows, dropped = [], 0
    split = candidate_file.split
    for crow in candidate_file.rows[:max_users] if max_users else candidate_file.rows:
        history_items, _ = split_result.users[crow.user_id].history_and_target(split)
        history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in history_items]
        candidates = list(crow.candidates)
        if head == "items":
            candidates = [crow.target] + [c for c in candidates if c != crow.target]
        try:
            prompt = builder.rank(crow.user_id, history, [ds.items[c] for c in candidates])
        except PromptTooLongError as exc:
            dropped += 1
            logger.warning("evaluation row of user %s dropped: %s", crow.user_id, exc)
            continue
        rows.append({
            "input_ids": prompt.input_ids, "item_indices": [index[i] for i in prompt.item_slots],
            "candidates": [index[c] for c in candidates], "candidate_label": candidates.index(crow.target),
        })  # fmt: skip
    if dropped:
        logger.warning("%d evaluation rows dropped (prompt too long)", dropped)
    return rows


class ItemRecCollator:
    """Right-padded token ids and mask; slot rows padded with -1; per-position next-item labels at each slot and the
    answer position (`targets`); `candidate_labels`, `candidate_indices`, and the label tokens of the labels head."""

    def __init__(self, pad_id: int, placeholder: int, label_token_ids: Sequence[int] | None = None):
        self.pad_id = pad_id
        self.placeholder = placeholder
        self.label_token_ids = list(label_token_ids) if label_token_ids else None

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        slots = max(len(f["item_indices"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        items = torch.full((len(features), slots), -1, dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, : len(f["input_ids"])] = 1
            items[row, : len(f["item_indices"])] = torch.as_tensor(f["item_indices"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "item_indices": items}
        if "targets" in features[0]:
            labels = torch.full((len(features), width), -100, dtype=torch.long)
            for row, f in enumerate(features):
                positions = (ids[row, : len(f["input_ids"])] == self.placeholder).nonzero().flatten().tolist()
                positions.append(len(f["input_ids"]) - 1)
                if len(positions) != len(f["targets"]):
                    raise ValueError(
                        f"row {row}: {len(positions)} prediction positions for {len(f['targets'])} targets"
                    )
                labels[row, positions] = torch.as_tensor(f["targets"], dtype=torch.long)
            batch["item_labels"] = labels
        if "labels" in features[0]:  # token labels (projector alignment), aligned with input_ids
            labels = torch.full((len(features), width), -100, dtype=torch.long)
            for row, f in enumerate(features):
                labels[row, : len(f["labels"])] = torch.as_tensor(f["labels"], dtype=torch.long)
            batch["labels"] = labels
        if "candidate_label" in features[0]:
            batch["candidate_labels"] = torch.as_tensor([f["candidate_label"] for f in features], dtype=torch.long)
        if self.label_token_ids is not None:
            n = len(features[0]["candidates"]) if "candidates" in features[0] else len(self.label_token_ids)
            batch["label_token_ids"] = torch.as_tensor(self.label_token_ids[:n], dtype=torch.long)
        elif "candidates" in features[0]:
            batch["candidate_indices"] = torch.as_tensor([f["candidates"] for f in features], dtype=torch.long)
        return batch
