"""Render a prompt template into chat messages, prompt text and token ids, within the token budget.

Context schema handed to templates (also documented in prompts/manifest.yaml):

    history:         list of {title: str, rating: float | None, fields: dict[str, str], image?: str}, oldest first
    candidates:      list of {label: str, title: str, fields: dict[str, str], image?: str}, in display order
    demos:           list of {history, candidates, answer: str (label)}   (rank_fewshot; text only, no images)
    item:            {title: str, fields: dict[str, str], image?: str}    (explain, pointwise)
    evidence:        list of {title, fields, shared: list[str], image?}   (explain; most related history first)
    num_candidates:  int

All text is neutralized (sanitize.neutralize with the tokenizer's special tokens and `max_text_chars`).

Images: with `use_images=True`, an entry whose item has an image gets `image`, an unforgeable marker the template
prints where the image goes; the rendered text is split there into content blocks
`[{"type": "text", "text": ...}, {"type": "image", "image": path}, ...]`, and every message's content is such a
list (the form multimodal chat templates expect). Without images, contents are plain strings.

Token budget (docs/RELIABILITY.md R4): tokens(prompt_text) + image_token_count * number of images must be at most
max_model_len - max_new_tokens. The image placeholder token itself is counted in the text as well, so the count is
an upper bound for processors that expand one placeholder into image_token_count tokens. The history starts as the
`max_history` most recent entries and the oldest are dropped until the prompt fits (a galloping + binary search over
how many recent entries to keep, so the cost depends on the budget, not on the history length); candidates, demos
and image blocks are never cut. If the prompt does not fit with no history, PromptTooLongError is raised.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.context import ContextBuilder, Demo, HistoryEntry, ImageMarkers
from mmrec_gen.prompting.errors import PromptFieldError, PromptTooLongError
from mmrec_gen.prompting.image_blocks import ImageSelection, image_token_count, is_multimodal, without_image
from mmrec_gen.prompting.item_slots import ITEM_TOKEN, ItemMarkers, add_item_token
from mmrec_gen.prompting.labels import candidate_labels
from mmrec_gen.prompting.sanitize import special_token_strings, text_tokenizer
from mmrec_gen.prompting.templates import TemplateSpec, compiled_template, get_template, render_user_text

__all__ = [
    "Demo",
    "HistoryEntry",
    "PromptBuilder",
    "PromptFieldError",
    "PromptTooLongError",
    "RenderedPrompt",
]

logger = logging.getLogger(__name__)

# When the full capped history renders to more than this many characters per budget token, tokenizing it just to
# learn that it does not fit is wasteful: the search starts from the recent end instead.
_CHARS_PER_TOKEN_PROBE = 8


@dataclass
class RenderedPrompt:
    """One rendered prompt. `prompt_text == apply_chat_template(messages, add_generation_prompt=True)`."""

    user_id: str
    template_id: str
    messages: list[dict[str, Any]]
    prompt_text: str
    input_ids: list[int]
    candidate_ids: list[str]
    labels: list[str]
    images: list[str] = field(default_factory=list)
    # Item id of each ITEM_TOKEN placeholder in input_ids, in order (empty without item tokens).
    item_slots: list[str] = field(default_factory=list)
    n_history_total: int = 0
    n_history_used: int = 0
    truncated: bool = False

    @property
    def num_tokens(self) -> int:
        """Text tokens only; add image_token_count per image for the budgeted count."""
        return len(self.input_ids)


@dataclass
class _Attempt:
    messages: list[dict[str, Any]]
    prompt_text: str
    input_ids: list[int]
    images: list[str]
    num_tokens: int
    item_slots: list[str] = field(default_factory=list)


class PromptBuilder:
    """Renders one manifest template for one tokenizer (or processor) under a token budget."""

    def __init__(
        self,
        tokenizer,
        template_id: str,
        *,
        max_model_len: int = 2048,
        max_new_tokens: int = 8,
        max_history: int = 20,
        max_text_chars: int = 300,
        use_images: bool = False,
        image_token_count: int = 0,
        demo_history: int = 5,
        item_tokens: bool = False,
        image_selection: ImageSelection | None = None,
        image_reader=None,
    ) -> None:
        if max_model_len - max_new_tokens < 1:
            raise ValueError(
                f"max_model_len ({max_model_len}) - max_new_tokens ({max_new_tokens}) leaves no room for a prompt"
            )
        if max_history < 0 or demo_history < 0 or image_token_count < 0:
            raise ValueError("max_history, demo_history and image_token_count must be >= 0")
        self.spec: TemplateSpec = get_template(template_id)
        self.template = compiled_template(self.spec)
        self.chat = tokenizer  # the object whose apply_chat_template renders the chat (tokenizer or processor)
        self.tokenizer = text_tokenizer(tokenizer)  # the text tokenizer inside a processor
        self.max_model_len = max_model_len
        self.max_new_tokens = max_new_tokens
        self.budget = max_model_len - max_new_tokens
        self.max_history = max_history
        self.use_images = use_images
        self.image_token_count = image_token_count
        # Which items show their image (with use_images; None: every item that has one); a processor always gets
        # content blocks, images or not.
        self.image_selection = image_selection
        self.content_blocks = use_images or is_multimodal(tokenizer)
        # data.images.ImageReader: an image is shown only if it reads under --on-bad-image (checked once per file).
        self.image_reader = image_reader
        self._usable: dict[str, bool] = {}
        self.demo_history = demo_history
        # Item tokens: the placeholder becomes a special token first, so neutralize() breaks it in item text.
        self.item_token_id = add_item_token(self.tokenizer) if item_tokens else None
        self.special_tokens = special_token_strings(tokenizer)
        self._special_ids = {
            i for i in (self.tokenizer.convert_tokens_to_ids(t) for t in self.special_tokens) if i is not None
        } - {self.item_token_id}
        self.context = ContextBuilder(self.spec.id, self.special_tokens, max_text_chars)
        self._skeleton_counts: dict[tuple, Counter] = {}
        self.system_in_user = self._check_chat_template()

    @classmethod
    def from_options(
        cls, tokenizer, template_id: str, options, max_new_tokens: int, item_tokens: bool = False
    ) -> PromptBuilder:
        """A builder from a run config: `options` has max_model_len, max_history and max_text_chars (the fields
        `mmrec rank`, `explain` and `train` share), so training and inference budget prompts identically.

        With a vision-language processor and `options.images` (--images DIR), chosen items show their image
        (`options.image_items`, `image_history`, `max_images`), read under `options.on_bad_image`, and each image
        is budgeted at the number of tokens the processor expands it to."""
        from mmrec_gen.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReader

        use_images = is_multimodal(tokenizer) and bool(getattr(options, "images", None))
        selection = ImageSelection(
            items=getattr(options, "image_items", "candidates"),
            history=getattr(options, "image_history", 5),
            max_images=getattr(options, "max_images", 20),
        )
        reader = ImageReader(
            getattr(options, "on_bad_image", "skip"), getattr(options, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        )
        return cls(
            tokenizer,
            template_id,
            max_model_len=options.max_model_len,
            max_new_tokens=max_new_tokens,
            max_history=options.max_history,
            max_text_chars=options.max_text_chars,
            item_tokens=item_tokens,
            use_images=use_images,
            image_token_count=image_token_count(tokenizer) if use_images else 0,
            image_selection=selection,
            image_reader=reader if use_images else None,
        )

    # ----------------------------------------------------------------------------------------------- public API
    def rank(
        self,
        user_id: str,
        history: Sequence[HistoryEntry],
        candidates: Sequence[Item],
        demos: Sequence[Demo] = (),
    ) -> RenderedPrompt:
        """Rank prompt: candidates labelled A, B, ... in the given order; demos only for rank_fewshot.

        A template that does not show candidates (rec_items: the item head scores them) takes none."""
        self._require_task("rank")
        if not candidates and "candidates" in self.spec.required_fields:
            raise ValueError(f"user {user_id!r}: rank prompt needs at least one candidate")
        ids = [c.item_id for c in candidates]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"user {user_id!r}: duplicate candidate ids {sorted({i for i in ids if ids.count(i) > 1})}"
            )
        uses_demos = "demos" in self.spec.required_fields
        if uses_demos and not demos:
            raise ValueError(
                f"template {self.spec.id!r} is few-shot and needs demos for user {user_id!r}; "
                "pass demos or use the zero-shot template rank_listwise"
            )
        if demos and not uses_demos:
            raise ValueError(f"template {self.spec.id!r} does not use demos; use rank_fewshot for few-shot prompts")
        # An item-head template (output_format items) never shows candidates: the head scores any number of them,
        # up to the whole catalogue, so they get no letters and are not rendered (only their ids are kept).
        shown = [] if self.spec.output_format == "items" else candidates
        labels = candidate_labels(len(shown))
        history, shown = self._shown_images(history, shown)

        def fixed(markers: ImageMarkers | None) -> dict[str, Any]:
            ctx: dict[str, Any] = {
                "candidates": self.context.candidates(shown, labels, user_id, markers),
                "num_candidates": len(shown),
            }
            if uses_demos:
                ctx["demos"] = [
                    self.context.demo(d, candidate_labels(len(d.candidates)), user_id, self.demo_history)
                    for d in demos
                ]
            return ctx

        return self._build(user_id, history, fixed, candidate_ids=ids, labels=labels)

    def explain(
        self, user_id: str, history: Sequence[HistoryEntry], item: Item, evidence: Sequence[Any] = ()
    ) -> RenderedPrompt:
        """Explanation prompt for one recommended item; `evidence` (prompting.evidence.Evidence, most related first)
        is listed apart from the history and never cut by the token budget."""
        self._require_task("explain")
        history, (item,) = self._shown_images(history, [item])
        evidence = [dataclasses.replace(e, item=without_image(e.item)) for e in evidence]  # text evidence only

        def fixed(markers: ImageMarkers | None) -> dict[str, Any]:
            return {
                "item": self.context.item(item, user_id, markers),
                "evidence": self.context.evidence(evidence, user_id, markers),
            }

        return self._build(user_id, history, fixed, candidate_ids=[item.item_id], labels=[])

    def pointwise(self, user_id: str, history: Sequence[HistoryEntry], item: Item) -> RenderedPrompt:
        """Yes/No prompt for one item."""
        self._require_task("pointwise")
        history, (item,) = self._shown_images(history, [item])
        return self._build(user_id, history, self._item_ctx(user_id, item), candidate_ids=[item.item_id], labels=[])

    # ----------------------------------------------------------------------------------------------- internals
    def _require_task(self, task: str) -> None:
        if self.spec.task != task:
            raise ValueError(
                f"template {self.spec.id!r} is a {self.spec.task!r} template; PromptBuilder.{task}() needs a "
                f"{task!r} template (for example {task if task != 'rank' else 'rank_listwise'!r})"
            )

    def _shown_images(
        self, history: Sequence[HistoryEntry], candidates: Sequence[Item]
    ) -> tuple[list[HistoryEntry], list[Item]]:
        """History and candidates with the image kept only on the items chosen to show it (ImageSelection): with
        content blocks every other item's image is dropped, so a template's `x.image` exists exactly for those."""
        if not self.content_blocks:
            return list(history), list(candidates)
        chosen_h: set[int] = set()
        chosen_c: set[int] = set()
        if self.use_images:
            usable = [without_image(h.item) if not self._image_usable(h.item) else h.item for h in history]
            cands = [c if self._image_usable(c) else without_image(c) for c in candidates]
            if self.image_selection is None:
                chosen_h = {k for k, item in enumerate(usable) if item.image}
                chosen_c = {k for k, item in enumerate(cands) if item.image}
            else:
                chosen_h, chosen_c = self.image_selection.choose(usable, cands)
        hist = [h if k in chosen_h else HistoryEntry(without_image(h.item), h.rating) for k, h in enumerate(history)]
        return hist, [c if k in chosen_c else without_image(c) for k, c in enumerate(candidates)]

    def _image_usable(self, item: Item) -> bool:
        """Whether the item's image reads under the reader's --on-bad-image policy (a bad one under `placeholder`
        is usable: the backend reads the grey placeholder; under `fail` BadImageError names the file)."""
        if not item.image:
            return False
        if self.image_reader is None:
            return True
        if item.image not in self._usable:
            report = self.image_reader.report
            bad = len(report.bad)
            self._usable[item.image] = self.image_reader.read(item.image, item.item_id) is not None
            if len(report.bad) > bad:  # counted in the reader's report; each bad file is named once
                entry = report.bad[-1]
                logger.warning(
                    "item %s: bad image %s (%s; --on-bad-image %s: %s); %d bad image(s) so far",
                    item.item_id, entry["path"], entry["problem"], report.policy,
                    "shown as a grey placeholder" if self._usable[item.image] else "shown without its image",
                    len(report.bad),
                )  # fmt: skip
        return self._usable[item.image]

    def _item_ctx(self, user_id: str, item: Item) -> Callable[[ImageMarkers | None], dict[str, Any]]:
        return lambda markers: {"item": self.context.item(item, user_id, markers)}

    def _build(
        self,
        user_id: str,
        history: Sequence[HistoryEntry],
        fixed: Callable[[ImageMarkers | None], dict[str, Any]],
        *,
        candidate_ids: list[str],
        labels: list[str],
    ) -> RenderedPrompt:
        markers = ImageMarkers() if self.content_blocks else None
        self.context.item_markers = ItemMarkers() if self.item_token_id is not None else None
        fixed_ctx = fixed(markers)
        capped = list(history[-self.max_history :]) if self.max_history > 0 else []
        # Neutralize each history entry once; the search below only slices this list.
        hist_ctx = self.context.history(capped, user_id, markers)
        attempts: dict[int, _Attempt] = {}

        def attempt(k: int) -> _Attempt:
            if k not in attempts:
                ctx = dict(fixed_ctx, history=hist_ctx[len(hist_ctx) - k :] if k else [])
                attempts[k] = self._render(user_id, ctx, markers)
            return attempts[k]

        # Tokenizing the whole capped history only to learn it is far too long is the slow path for 10k-entry
        # histories; skip that probe when the history text alone exceeds several characters per budget token.
        hist_chars = sum(len(h["title"]) + sum(len(v) for v in h["fields"].values()) for h in hist_ctx)
        probe_all = hist_chars <= self.budget * _CHARS_PER_TOKEN_PROBE
        k = self._fit(len(hist_ctx), attempt, user_id, probe_all)
        best = attempts[k]
        self._check_control_tokens(best, user_id)
        return RenderedPrompt(
            user_id=user_id,
            template_id=self.spec.id,
            messages=best.messages,
            prompt_text=best.prompt_text,
            input_ids=best.input_ids,
            candidate_ids=candidate_ids,
            labels=labels,
            images=best.images,
            item_slots=best.item_slots,
            n_history_total=len(history),
            n_history_used=k,
            truncated=k < len(capped),
        )

    def _fit(self, n: int, attempt: Callable[[int], _Attempt], user_id: str, probe_all: bool) -> int:
        """Largest k <= n such that the prompt with the k most recent history entries fits the budget.

        Token counts grow with k, so: probe k = n (the common case, skipped when the text is obviously far too
        long), then gallop k = 1, 3, 7, ... from the recent end and binary-search the last step. Every probed
        prompt is at most about twice the budget, so a 10k-entry history costs no more than a short one.
        """

        def fits(k: int) -> bool:
            return attempt(k).num_tokens <= self.budget

        if n > 0 and probe_all and fits(n):
            return n
        if not fits(0):
            raise PromptTooLongError(user_id, self.spec.id, attempt(0).num_tokens, self.budget)
        lo, step = 0, 1
        while lo + step < n and fits(lo + step):
            lo += step
            step *= 2
        hi = min(lo + step, n)
        if hi == n and fits(n):
            return n
        while hi - lo > 1:  # invariant: fits(lo) and not fits(hi)
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _render(self, user_id: str, ctx: dict[str, Any], markers: ImageMarkers | None) -> _Attempt:
        # Surrounding blank lines are template layout, not content: the chat template adds its own separators.
        text = render_user_text(self.spec, ctx, user_id=user_id, template=self.template).strip()
        slots: list[str] = []
        if self.context.item_markers is not None:
            text, slots = self.context.item_markers.replace(text, f"template {self.spec.id!r}, user {user_id!r}")
        system = self.spec.system
        images: list[str] = []
        if self.system_in_user and system:
            text = system + "\n\n" + text
            system = None
        if markers is None:
            messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
        else:
            blocks, images = markers.split(text, f"template {self.spec.id!r}, user {user_id!r}")
            messages = [{"role": "user", "content": blocks}]
            if system:
                messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        prompt_text = self.chat.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        input_ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        return _Attempt(
            messages, prompt_text, input_ids, images, len(input_ids) + self.image_token_count * len(images), slots
        )

    def _check_chat_template(self) -> bool:
        """Fail early when the chat template cannot render our messages; return True to fold system into user."""
        content: Any = "x"
        if self.content_blocks:
            content = [{"type": "text", "text": "x"}, {"type": "image", "image": "x.jpg"}]
        user = {"role": "user", "content": content}
        try:
            self.chat.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
        except Exception as e:
            need = (
                "accept content blocks (a multimodal chat template)" if self.content_blocks else "render a user turn"
            )
            raise ValueError(
                f"the chat template of {type(self.chat).__name__}({getattr(self.tokenizer, 'name_or_path', '')!r}) "
                f"cannot {need}: {type(e).__name__}: {e}"
            ) from e
        if not self.spec.system:
            return False
        system_content: Any = [{"type": "text", "text": "s"}] if self.content_blocks else "s"
        try:
            self.chat.apply_chat_template(
                [{"role": "system", "content": system_content}, user], add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # e.g. Gemma's template raises on a system role: put the system text in the user turn
            logger.info("chat template rejects a system message (%s); the system text goes into the user turn", e)
            return True
        return False

    def _check_control_tokens(self, best: _Attempt, user_id: str) -> None:
        """The special-token ids must be exactly those of the chat structure (none may come from item text)."""

        def skeleton(msg: dict[str, Any]) -> dict[str, Any]:
            if isinstance(msg["content"], str):
                return {"role": msg["role"], "content": "x"}
            blocks = [b if b["type"] == "image" else {"type": "text", "text": "x"} for b in msg["content"]]
            return {"role": msg["role"], "content": blocks}

        key = tuple(
            (m["role"], str([b["type"] for b in m["content"]]) if isinstance(m["content"], list) else "s")
            for m in best.messages
        )
        if key not in self._skeleton_counts:
            skel = [skeleton(m) for m in best.messages]
            text = self.chat.apply_chat_template(skel, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._skeleton_counts[key] = Counter(i for i in ids if i in self._special_ids)
        if self.item_token_id is not None:
            n_slots = sum(1 for i in best.input_ids if i == self.item_token_id)
            if n_slots != len(best.item_slots):
                raise ValueError(
                    f"template {self.spec.id!r}, user {user_id!r}: {n_slots} {ITEM_TOKEN} tokens for "
                    f"{len(best.item_slots)} item slots (the placeholder must tokenize as one token)"
                )
        got = Counter(i for i in best.input_ids if i in self._special_ids)
        if got != self._skeleton_counts[key]:
            raise ValueError(
                f"template {self.spec.id!r}, user {user_id!r}: the prompt holds control tokens "
                f"{dict(got)} but the chat structure has {dict(self._skeleton_counts[key])}; item text or the "
                "template produced a control token (a bug in neutralize or a template printing special tokens)"
            )
