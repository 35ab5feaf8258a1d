"""Errors of the prompting layer. Both are ValueErrors that name the template, the record and the fix.

They define `__reduce__` so they survive pickling across processes (Ray / multiprocessing workers turn them into
error records).
"""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """The prompt does not fit max_model_len - max_new_tokens even with no history (docs/RELIABILITY.md R4)."""

    def __init__(self, user_id: str, template_id: str, num_tokens: int, budget: int) -> None:
        self.user_id = user_id
        self.template_id = template_id
        self.num_tokens = num_tokens
        self.budget = budget
        super().__init__(
            f"prompt for user {user_id!r} with template {template_id!r} needs {num_tokens} tokens with no history at "
            f"all, over the budget of {budget} tokens (max_model_len - max_new_tokens, image tokens included). "
            "Fix: raise --max-model-len, or use fewer candidates, or a smaller --max-text-chars."
        )

    def __reduce__(self):
        return (type(self), (self.user_id, self.template_id, self.num_tokens, self.budget))


class PromptFieldError(ValueError):
    """A template needs a field the record lacks (docs/RELIABILITY.md R6); never rendered as an empty string."""

    def __init__(
        self, template_id: str, field: str, user_id: str, record: str | None = None, detail: str = ""
    ) -> None:
        self.template_id = template_id
        self.field = field
        self.user_id = user_id
        self.record = record
        self.detail = detail
        where = f"user {user_id!r}" + (f", item {record!r}" if record else "")
        super().__init__(
            f"template {template_id!r} needs field {field!r}, which is missing for {where}"
            + (f" ({detail})" if detail else "")
            + ". Fix: add the field to the data (for example an item column), or use a template that does not need it."
        )

    def __reduce__(self):
        return (type(self), (self.template_id, self.field, self.user_id, self.record, self.detail))
