"""`mmrec prompts validate`: every template of the manifest parses, uses only schema variables, and renders.

Kept apart from the template registry (`templates.py`) because it needs the sample records and the PromptBuilder,
both of which import the registry.
"""

from __future__ import annotations

from mmrec_gen.prompting import samples
from mmrec_gen.prompting.context import SCHEMA_FIELDS
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.prompting.templates import (
    load_manifest,
    read_prompt_file,
    render_user_text,
    template_source,
    undeclared_variables,
)


def validate_templates(tokenizer=None) -> list[str]:
    """Check every template in the manifest; return one report line per template, raise on the first failure.

    Checks: the file parses; its undeclared variables are within the documented schema and equal its
    required_fields; it renders on built-in sample data without error. With a tokenizer, it also renders through
    the chat template (PromptBuilder), checks rendered == apply_chat_template(messages) and, for rank templates,
    that the labels are single tokens; the line then reports the token count.
    """
    lines: list[str] = []
    macro_vars = undeclared_variables(read_prompt_file("_macros.jinja"), "_macros.jinja")
    if macro_vars:
        raise ValueError(f"prompts/_macros.jinja uses global variables {sorted(macro_vars)}; macros take arguments")
    for spec in load_manifest().values():
        source = template_source(spec)
        found = undeclared_variables(source, spec.file)
        outside = found - SCHEMA_FIELDS
        if outside:
            raise ValueError(
                f"prompts/{spec.file} (template {spec.id!r}) uses variables {sorted(outside)} that are not in the "
                f"context schema {sorted(SCHEMA_FIELDS)}"
            )
        if found != set(spec.required_fields):
            raise ValueError(
                f"prompts/{spec.file} (template {spec.id!r}) uses {sorted(found)} but the manifest declares "
                f"required_fields {sorted(spec.required_fields)}; make them equal"
            )
        text = render_user_text(spec, samples.sample_context(spec.task), user_id="sample")
        line = f"{spec.id} v{spec.version} ({spec.task}, {spec.output_format}): ok, {len(text)} chars"
        if tokenizer is not None:
            prompt = samples.render_sample(PromptBuilder(tokenizer, spec.id, max_model_len=100_000), spec.id)
            chat = tokenizer.apply_chat_template
            if chat(prompt.messages, add_generation_prompt=True, tokenize=False) != prompt.prompt_text:
                raise ValueError(f"template {spec.id!r}: prompt_text differs from apply_chat_template(messages)")
            if spec.task == "rank":
                label_token_ids(tokenizer, prompt.labels, prefix=prompt.prompt_text)
            line += f", {len(prompt.input_ids)} tokens"
        lines.append(line)
    return lines
