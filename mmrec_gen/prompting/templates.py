"""The template registry: `prompts/manifest.yaml` + `prompts/*.jinja`, loaded with importlib.resources only.

Templates ship inside the wheel as the package `mmrec_gen.prompts` (pyproject maps the top-level `prompts/`
folder there), so the same code finds them in an editable install and in an installed wheel.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml
from jinja2 import FunctionLoader, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mmrec_gen.prompting.context import SCHEMA_FIELDS
from mmrec_gen.prompting.environment import make_environment
from mmrec_gen.prompting.errors import PromptFieldError

logger = logging.getLogger(__name__)

PROMPTS_PACKAGE = "mmrec_gen.prompts"
MANIFEST_FILE = "manifest.yaml"
TASKS = ("rank", "explain", "pointwise")
OUTPUT_FORMATS = ("labels", "text", "yes_no", "items")
DEFAULT_TEMPLATES = {
    "rank": "rank_listwise",
    "rank_fewshot": "rank_fewshot",
    "explain": "explain",
    "pointwise": "pointwise",
}

_MANIFEST_KEYS = ("id", "file", "task", "version", "description", "required_fields", "output_format")
_FILE_RE = re.compile(r"^[A-Za-z0-9_\-]+\.jinja$")


@dataclass(frozen=True)
class TemplateSpec:
    """One manifest entry."""

    id: str
    file: str
    task: str
    version: int
    description: str
    required_fields: tuple[str, ...]
    output_format: str
    system: str | None = None


def read_prompt_file(name: str) -> str:
    # Names come from the manifest or `{% import %}`: refuse anything that is not a plain file name in prompts/.
    if not _FILE_RE.match(name) and name != MANIFEST_FILE:
        raise ValueError(f"prompt file name {name!r} is not a plain '<name>.jinja' file in prompts/")
    resource = files(PROMPTS_PACKAGE).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"prompts/{name} not found in package {PROMPTS_PACKAGE} ({files(PROMPTS_PACKAGE)})")
    return resource.read_text(encoding="utf-8")


def _load_for_jinja(name: str) -> tuple[str, str, Any]:
    return read_prompt_file(name), f"prompts/{name}", lambda: True


def _entry_to_spec(i: int, entry: Any) -> TemplateSpec:
    where = f"prompts/{MANIFEST_FILE}: templates[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
    missing = [k for k in _MANIFEST_KEYS if k not in entry]
    if missing:
        raise ValueError(f"{where} (id {entry.get('id')!r}) lacks keys {missing}; every entry needs {_MANIFEST_KEYS}")
    unknown = set(entry) - set(_MANIFEST_KEYS) - {"system"}
    if unknown:
        raise ValueError(f"{where} (id {entry['id']!r}) has unknown keys {sorted(unknown)}")
    where = f"{where} (id {entry['id']!r})"
    if entry["task"] not in TASKS:
        raise ValueError(f"{where}: task {entry['task']!r} is not one of {TASKS}")
    if entry["output_format"] not in OUTPUT_FORMATS:
        raise ValueError(f"{where}: output_format {entry['output_format']!r} is not one of {OUTPUT_FORMATS}")
    if not isinstance(entry["version"], int) or isinstance(entry["version"], bool) or entry["version"] < 1:
        raise ValueError(f"{where}: version must be an int >= 1, got {entry['version']!r}")
    fields = entry["required_fields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields) or not fields:
        raise ValueError(f"{where}: required_fields must be a non-empty list of names, got {fields!r}")
    bad = sorted(set(fields) - SCHEMA_FIELDS)
    if bad:
        raise ValueError(f"{where}: required_fields {bad} are not in the context schema {sorted(SCHEMA_FIELDS)}")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"{where}: system must be a string, got {type(system).__name__}")
    if not _FILE_RE.match(str(entry["file"])) or str(entry["file"]).startswith("_"):
        raise ValueError(f"{where}: file {entry['file']!r} must be a '<name>.jinja' file not starting with '_'")
    return TemplateSpec(
        id=str(entry["id"]),
        file=str(entry["file"]),
        task=entry["task"],
        version=entry["version"],
        description=str(entry["description"]),
        required_fields=tuple(fields),
        output_format=entry["output_format"],
        system=system,
    )


def load_manifest() -> dict[str, TemplateSpec]:
    """Read prompts/manifest.yaml into {id: TemplateSpec}; a duplicate id or a malformed entry raises ValueError."""
    return parse_manifest(yaml.safe_load(read_prompt_file(MANIFEST_FILE)))


def parse_manifest(data: Any) -> dict[str, TemplateSpec]:
    """Validate a loaded manifest mapping (`{"templates": [...]}`) into {id: TemplateSpec}."""
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
        raise ValueError(f"prompts/{MANIFEST_FILE} must hold a mapping with a 'templates' list")
    specs: dict[str, TemplateSpec] = {}
    for i, entry in enumerate(data["templates"]):
        spec = _entry_to_spec(i, entry)
        if spec.id in specs:
            raise ValueError(f"prompts/{MANIFEST_FILE}: duplicate template id {spec.id!r} (templates[{i}])")
        specs[spec.id] = spec
    return specs


@lru_cache(maxsize=1)
def _manifest() -> dict[str, TemplateSpec]:
    return load_manifest()


def get_template(template_id: str) -> TemplateSpec:
    """The manifest entry for `template_id`; an unknown id raises KeyError listing the known ids."""
    specs = _manifest()
    if template_id not in specs:
        raise KeyError(f"unknown prompt template {template_id!r}; known templates: {sorted(specs)}")
    return specs[template_id]


def template_source(spec: TemplateSpec) -> str:
    """The Jinja source of a template, read from the installed package."""
    return read_prompt_file(spec.file)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The shared environment with a loader over prompts/ (so `{% from "_macros.jinja" import ... %}` works)."""
    return make_environment(FunctionLoader(_load_for_jinja))


def compiled_template(spec: TemplateSpec) -> Template:
    """The compiled template; a syntax error raises ValueError naming the file and line."""
    try:
        return environment().get_template(spec.file)
    except TemplateSyntaxError as e:
        raise ValueError(f"prompts/{spec.file} (template {spec.id!r}): line {e.lineno}: {e.message}") from e


def undeclared_variables(source: str, name: str) -> set[str]:
    try:
        ast = environment().parse(source)
    except TemplateSyntaxError as e:
        raise ValueError(f"prompts/{name}: line {e.lineno}: {e.message}") from e
    return set(meta.find_undeclared_variables(ast))


_FIELD_RES = (re.compile(r"has no attribute '([^']+)'"), re.compile(r"'([^']+)' is undefined"))


def _field_from_error(err: UndefinedError) -> str:
    for pattern in _FIELD_RES:
        m = pattern.search(str(err))
        if m:
            return m.group(1)
    return "?"


def render_user_text(
    spec: TemplateSpec, context: dict[str, Any], *, user_id: str, template: Template | None = None
) -> str:
    """Render the user message text of `spec` with `context`.

    Only the template's `required_fields` are passed; a field it needs but the context lacks, or a record field the
    template reaches for that is missing (StrictUndefined), raises PromptFieldError naming the template, the field
    and the user. A template that reaches for `__class__` & co. raises jinja2.exceptions.SecurityError.
    """
    missing = [f for f in spec.required_fields if f not in context]
    if missing:
        raise PromptFieldError(spec.id, missing[0], user_id, None, f"the {spec.task} context has {sorted(context)}")
    template = template or compiled_template(spec)
    try:
        return template.render({f: context[f] for f in spec.required_fields})
    except UndefinedError as e:  # jinja2's SecurityError is a sibling class, so it propagates unchanged
        raise PromptFieldError(spec.id, _field_from_error(e), user_id, _record_missing(context, e), str(e)) from e


def _record_missing(context: dict[str, Any], err: UndefinedError) -> str | None:
    """Best effort: the title of the first record whose `fields` lack the missing key (to name it in the error)."""
    key = _field_from_error(err)
    records: list[Any] = []
    for name in ("history", "candidates"):
        records.extend(context.get(name) or [])
    if isinstance(context.get("item"), dict):
        records.append(context["item"])
    for rec in records:
        if isinstance(rec, dict) and key not in rec and key not in rec.get("fields", {}):
            return str(rec.get("title"))
    return None
