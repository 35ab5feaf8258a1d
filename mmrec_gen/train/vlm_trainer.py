"""`mmrec train sft --model <vision-language model> --images DIR`: LoRA on the language model of a LLaVA-style model,
trained on the same prompts (with image content blocks) that `mmrec rank` renders for it.

The prompts come from the shared training examples and templates (train/trainers.py `_train`: resume, output-dir
checks, adapter metadata and the summary are the text path's). Each batch goes through the model's processor, which
expands every image placeholder into the image's tokens and computes the pixel values; the answer (the label, or
the full ranking with `--target ranking`) and the end-of-turn token follow the prompt. Labels are -100 everywhere
but on the answer: padding, the prompt text and every image token are masked (LLaVA's stage-2 recipe). LoRA
targets the language model only: the vision tower and the multi-modal projector are excluded by a name pattern
(trainers.peft_model), so they stay frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from mmrec_gen.models.types import LoadedModel
from mmrec_gen.train.config import TrainConfig
from mmrec_gen.train.rows import answer_text

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class VLMCollator:
    """Rows {"prompt_text", "images" (paths), "answer"} -> processor inputs + `labels` on the answer tokens only.

    Prompts are left-padded by the processor (so every prompt ends at the same column), the answers appended after
    them and right-padded; explicit position ids make each row compute what it would alone.
    """

    def __init__(self, processor, end_of_turn: str) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.end_of_turn = end_of_turn
        self.image_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        from mmrec_gen.data.images import read_rendered_images

        images = [read_rendered_images(row["images"]) for row in rows]
        enc = self.processor(
            text=[row["prompt_text"] for row in rows], images=images if any(images) else None, padding=True,
            padding_side="left", return_tensors="pt", add_special_tokens=False,
        )  # fmt: skip
        answers = [
            self.tokenizer(row["answer"] + self.end_of_turn, add_special_tokens=False)["input_ids"] for row in rows
        ]
        width = max(map(len, answers))
        pad = self.tokenizer.pad_token_id
        answer_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        answer_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(answers):
            answer_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            answer_mask[row, : len(ids)] = 1
        input_ids = torch.cat([enc["input_ids"], answer_ids], dim=1)
        mask = torch.cat([enc["attention_mask"], answer_mask], dim=1)
        labels = torch.cat([torch.full_like(enc["input_ids"], IGNORE_INDEX), answer_ids], dim=1)
        labels[mask == 0] = IGNORE_INDEX
        labels[input_ids == self.image_id] = IGNORE_INDEX  # never a target, wherever an image token stands
        batch = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        batch.update(input_ids=input_ids, attention_mask=mask, labels=labels)
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return batch


def end_of_turn(chat, content_blocks: bool = True) -> str:
    """The text the chat template of `chat` (a processor or a tokenizer) puts after an assistant answer: its
    end-of-turn marker, e.g. `<|im_end|>`; the tokenizer's eos token when the template does not say."""
    from mmrec_gen.prompting.sanitize import text_tokenizer

    def content(text: str):
        return [{"type": "text", "text": text}] if content_blocks else text

    messages = [{"role": "user", "content": content("q")}]
    prompt = chat.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = chat.apply_chat_template([*messages, {"role": "assistant", "content": content("ANSWER")}], tokenize=False)
    eos = text_tokenizer(chat).eos_token or ""
    if not full.startswith(prompt) or "ANSWER" not in full:
        return eos
    return full[len(prompt) :].split("ANSWER", 1)[1].rstrip("\n") or eos


def vlm_rows(cfg: TrainConfig, ds, rendered) -> list[dict]:
    """One row per rendered example: the prompt text (with its image placeholders), the image paths, the answer."""
    return [
        {
            "user_id": it.prompt.user_id,
            "prompt_text": it.prompt.prompt_text,
            "images": list(it.prompt.images),
            "input_ids": list(it.prompt.input_ids),  # prompt tokens (images unexpanded), for the summary's tokens/s
            "answer": answer_text(ds, it, target=cfg.target, explanations=cfg.explanations, seed=cfg.seed),
        }
        for it in rendered
    ]


def _vlm_trainer(cfg, loaded, model, ds, rendered, stats, callbacks):
    from datasets import Dataset as HFDataset
    from transformers import Trainer

    from mmrec_gen.train.trainers import training_arguments

    rows = vlm_rows(cfg, ds, rendered)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, loaded, remove_unused_columns=False),
        train_dataset=HFDataset.from_list(rows),
        data_collator=VLMCollator(loaded.tokenizer, end_of_turn(loaded.tokenizer)),
        callbacks=callbacks,
    )
    return trainer, rows, "vlm"


def run_vlm_sft(cfg: TrainConfig, loaded: LoadedModel | None = None, callbacks=()) -> dict:
    """SFT of a LoRA adapter on a vision-language model's language model (see the module docstring)."""
    from mmrec_gen.train.trainers import _train

    if cfg.uses_item_tokens:
        raise ValueError("--item-tokens are for text LLMs; a vision-language model reads the images themselves")
    return _train("sft", cfg, loaded, callbacks, _vlm_trainer)
