"""Prompt-building options shared by rank, explain and train, so training budgets prompts exactly as inference."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmrec_gen.data.data_args import Arguments

MAX_LABELS = 26  # candidate labels are the letters A-Z


@dataclass(kw_only=True)
class PromptArguments(Arguments):
    max_model_len: int = field(default=2048, metadata={"help": "Context length: prompt + answer tokens."})
    max_history: int = field(
        default=20, metadata={"help": "Most recent history items to show (oldest dropped first)."}
    )
    max_text_chars: int = field(
        default=300, metadata={"help": "Each item text field is cut to this many characters (with an ellipsis)."}
    )
    # Vision-language models (--model naming one, with --images DIR): which items show their image in a prompt.
    image_items: str = field(
        default="candidates",
        metadata={"help": "Vision-language models with --images: items shown with their image: candidates, history "
                  "(the last --image-history items) or both (candidates first)."},
    )  # fmt: skip
    image_history: int = field(default=5, metadata={"help": "History items (most recent) that may show an image."})
    max_images: int = field(
        default=20, metadata={"help": "At most this many images per prompt (each costs the processor's image tokens)."}
    )

    def __post_init__(self):
        # Every prompt that shows its candidates labels them with one letter each (`all`, 0: the item head's
        # whole-catalogue ranking, which shows none; data_args checks where it is allowed).
        num_candidates = getattr(self, "num_candidates", None)
        if num_candidates not in (None, 0) and not 2 <= num_candidates <= MAX_LABELS:
            raise ValueError(f"--num-candidates must be between 2 and 26 (labels A-Z), got {num_candidates}")
        from mmrec_gen.prompting.image_blocks import ImageSelection

        ImageSelection(self.image_items, self.image_history, self.max_images)  # checks the three options
        super().__post_init__()
