"""The one Jinja environment every prompt template is rendered in.

Why these settings:
- `ImmutableSandboxedEnvironment`: templates are data that a user may edit or download, so a template that reaches
  for `__class__`, `__mro__`, `__globals__` and friends raises `jinja2.exceptions.SecurityError` instead of
  executing, and templates cannot mutate the lists/dicts they are given (transformers renders chat templates the
  same way).
- `StrictUndefined`: a template that uses a variable or field the record lacks raises instead of printing an empty
  string (R6). The renderer turns that error into one that names the template, the field and the record.
- `autoescape=False`: prompts are plain text, not HTML; `&` in a title must stay `&`.
- `keep_trailing_newline=True`, `trim_blocks`/`lstrip_blocks`: the template file's layout is the prompt's layout,
  block tags do not leave stray blank lines or indentation behind.

Item text always enters as a variable, never as template source, so `{{7*7}}` in a title prints literally.
"""

from __future__ import annotations

from jinja2 import BaseLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_environment(loader: BaseLoader | None = None) -> ImmutableSandboxedEnvironment:
    """Build the sandboxed, strict environment used for every prompt template.

    `loader` is optional: the template registry passes one that reads `prompts/*.jinja` through
    `importlib.resources`, so error messages and tracebacks name the template file.
    """
    return ImmutableSandboxedEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
