"""Training rows from examples, rendered with the inference templates and labels (R11).

The prompt of every row is `PromptBuilder.rank(...)`, the very prompt `mmrec rank` builds (for `--target
explanation`, `PromptBuilder.explain(...)` with the evidence `mmrec explain` lists), so the training prompt is a
prefix of the inference prompt + answer. Three row shapes:

- TRL SFT, conversational prompt/completion (the loss is on the completion only):
  `{"prompt": [messages], "completion": [{"role": "assistant", "content": "C"}]}`;
- TRL DPO: `{"prompt": ..., "chosen": [...], "rejected": [...]}`, one row per rejected answer;
- the fast path: `{"input_ids": [...], "target_id": id}` (SFT) or `{"input_ids", "chosen_id", "rejected_ids"}`
  (S-DPO), with the label token ids score mode reads.

A prompt that does not fit the context even with no history is dropped and counted, never silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmrec_gen.data.schema import Dataset
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.prompting.evidence import NUM_EVIDENCE, answer_bridge, answer_lead, answer_reason, select_evidence
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder, PromptTooLongError, RenderedPrompt
from mmrec_gen.prompting.titles import display_title
from mmrec_gen.train.examples import TrainExample, negative_indices

logger = logging.getLogger(__name__)


@dataclass
class RenderedExample:
    example: TrainExample
    prompt: RenderedPrompt


@dataclass
class RowStats:
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    truncated_history: int = 0  # prompts that kept fewer history items than max_history allows

    def as_dict(self) -> dict:
        return {"examples": self.examples, "dropped": dict(self.dropped), "truncated_history": self.truncated_history}


def render_examples(
    builder: PromptBuilder, ds: Dataset, examples: Sequence[TrainExample], stats: RowStats
) -> list[RenderedExample]:
    out = []
    for ex in examples:
        history = [HistoryEntry(ds.items[i.item_id], i.rating) for i in ex.history]
        try:
            if builder.spec.task == "explain":  # --target explanation: the explain prompt of the answer
                answer = ds.items[ex.target]
                evidence = select_evidence([h.item for h in history], answer, NUM_EVIDENCE)
                prompt = builder.explain(ex.user_id, history, answer, evidence)
            else:
                prompt = builder.rank(ex.user_id, history, [ds.items[c] for c in ex.candidates])
        except PromptTooLongError as exc:
            stats.dropped["prompt_too_long"] += 1
            logger.warning("training example dropped: %s", exc)
            continue
        stats.truncated_history += prompt.truncated
        out.append(RenderedExample(ex, prompt))
    stats.examples = len(out)
    return out


def ranking_answer(ex: TrainExample, labels: Sequence[str], seed: int) -> str:
    """All labels, the answer's first, the negatives after it in a seeded order (their true order is unknown)."""
    rest = [i for i in range(len(ex.candidates)) if i != ex.target_index]
    order = rng_for(seed, "train-ranking", ex.user_id, ex.position).permutation(len(rest))
    return ", ".join([labels[ex.target_index], *(labels[rest[i]] for i in order)])


def explanation(ds: Dataset, ex: TrainExample) -> str:
    """A grounded explanation of the answer, in the shape `mmrec explain` decodes (prompts/_explain_answer.jinja):
    the lead, the title of the history item most related to the answer (the first of
    prompting.evidence.select_evidence, the evidence the explain prompt lists), the bridge, and what the two share.
    Built from the example's train-split history only, so it never names an item the user did not see. Empty
    without history."""
    answer = ds.items[ex.target]
    evidence = select_evidence([ds.items[h.item_id] for h in ex.history], answer, NUM_EVIDENCE)
    if not evidence:
        return ""
    best = evidence[0]
    cited = display_title(best.item.title)  # the form `mmrec explain` cites: "The Matrix (1999)"
    return f"{answer_lead()} {cited}{answer_bridge()}{answer_reason(display_title(answer.title), best.shared)}"


def answer_text(ds: Dataset, item: RenderedExample, *, target: str, explanations: bool, seed: int) -> str:
    """The completion of a TRL row: the answer's label (score), all labels (ranking), optionally followed by an
    explanation, or the grounded explanation alone (explanation: the prompt is then the explain prompt)."""
    if target == "explanation":
        return explanation(ds, item.example)
    labels = item.prompt.labels
    text = labels[item.example.target_index] if target == "score" else ranking_answer(item.example, labels, seed)
    if explanations:
        why = explanation(ds, item.example)
        text = f"{text}\n{why}" if why else text
    return text


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def trl_sft_rows(
    ds: Dataset, items: Sequence[RenderedExample], *, target: str, explanations: bool, seed: int
) -> list[dict]:
    return [
        {
            "prompt": it.prompt.messages,
            "completion": _assistant(answer_text(ds, it, target=target, explanations=explanations, seed=seed)),
        }
        for it in items
    ]


def trl_dpo_rows(items: Sequence[RenderedExample], *, num_negatives: int, seed: int) -> list[dict]:
    """One row per rejected label: chosen = the held-out item's label, rejected = a negative's label."""
    rows = []
    for it in items:
        labels = it.prompt.labels
        for neg in negative_indices(it.example, num_negatives, seed):
            rows.append(
                {
                    "prompt": it.prompt.messages,
                    "chosen": _assistant(labels[it.example.target_index]),
                    "rejected": _assistant(labels[neg]),
                }
            )
    return rows


def fast_sft_rows(tokenizer, items: Sequence[RenderedExample]) -> list[dict]:
    rows = []
    for it in items:
        ids = label_token_ids(tokenizer, it.prompt.labels)
        rows.append({"input_ids": list(it.prompt.input_ids), "target_id": ids[it.example.target_index]})
    return rows


def fast_dpo_rows(tokenizer, items: Sequence[RenderedExample], *, num_negatives: int, seed: int) -> list[dict]:
    rows = []
    for it in items:
        ids = label_token_ids(tokenizer, it.prompt.labels)
        rows.append(
            {
                "input_ids": list(it.prompt.input_ids),
                "chosen_id": ids[it.example.target_index],
                "rejected_ids": [ids[i] for i in negative_indices(it.example, num_negatives, seed)],
            }
        )
    return rows
