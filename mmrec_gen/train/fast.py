"""The fast path for score-mode training: the answer is one label token, so only one position needs logits.

TRL's SFTTrainer computes logits over the whole 49k vocabulary at every position of a ~1,200-token prompt, then
masks all but the answer out of the loss. Here the model runs with `logits_to_keep=1` on left-padded prompts, so
the LM head runs once per example, on the position whose next token is the label (the same position score-mode
inference reads, R11). Both trainers subclass `transformers.Trainer`, so checkpoints, resume, schedules and logging
are the library's.

- `LabelTokenSFTTrainer`: cross-entropy of the target label token.
- `LabelTokenDPOTrainer`: S-DPO (Chen et al. 2024) over one chosen and k rejected labels. All answers share the
  prompt and are one token long, so one forward pass scores the chosen and every rejected answer; the reference
  log-probabilities are computed once before training (`reference_logps`), with the starting model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer


class LabelTokenCollator:
    """Left-pads `input_ids` (prompts end at the last position) and stacks the label columns present."""

    LABEL_KEYS = ("target_id", "chosen_id", "rejected_ids", "ref_chosen_logp", "ref_rejected_logps")

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, width - n :] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, width - n :] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        for key in self.LABEL_KEYS:
            if key in features[0]:
                dtype = torch.float32 if key.startswith("ref_") else torch.long
                batch[key] = torch.as_tensor([f[key] for f in features], dtype=dtype)
        return batch


def answer_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-softmax over the vocabulary of the next token after each prompt: (batch, vocab), in fp32."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=1,
        use_cache=False,
    )
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


class LabelTokenSFTTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logprobs = answer_logprobs(model, inputs)
        loss = F.nll_loss(logprobs, inputs["target_id"].to(logprobs.device))
        return (loss, logprobs) if return_outputs else loss


def sdpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """S-DPO: -log sigmoid(-log sum_r exp(beta * (margin_r - margin_c))); with one rejected answer this is DPO.

    `*_chosen` are (batch,), `*_rejected` (batch, k) log-probabilities of the answers.
    """
    chosen_margin = beta * (policy_chosen - ref_chosen)
    rejected_margin = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(-torch.logsumexp(rejected_margin - chosen_margin.unsqueeze(-1), dim=-1)).mean()


class LabelTokenDPOTrainer(Trainer):
    def __init__(self, *args, beta: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logprobs = answer_logprobs(model, inputs)
        chosen = logprobs.gather(-1, inputs["chosen_id"].unsqueeze(-1).to(logprobs.device)).squeeze(-1)
        rejected = logprobs.gather(-1, inputs["rejected_ids"].to(logprobs.device))
        loss = sdpo_loss(
            chosen,
            rejected,
            inputs["ref_chosen_logp"].to(logprobs.device),
            inputs["ref_rejected_logps"].to(logprobs.device),
            self.beta,
        )
        return (loss, logprobs) if return_outputs else loss


@torch.no_grad()
def reference_logps(model, rows: list[dict], pad_id: int, batch_size: int = 1) -> list[dict]:
    """Rows with `ref_chosen_logp` and `ref_rejected_logps` from `model` as it is now (the DPO reference)."""
    collate = LabelTokenCollator(pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        logprobs = answer_logprobs(model, batch)
        chosen = logprobs.gather(-1, batch["chosen_id"].unsqueeze(-1)).squeeze(-1)
        rejected = logprobs.gather(-1, batch["rejected_ids"])
        for row, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            out.append({**row, "ref_chosen_logp": c, "ref_rejected_logps": r})
    model.train(was_training)
    return out
