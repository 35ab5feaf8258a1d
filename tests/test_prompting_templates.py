"""Static checks of prompts/ (STYLE.md 5): manifest, parsing, variables vs schema, golden renders (R11)."""

from __future__ import annotations

import copy
import os
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from mmrec_gen.prompting import samples
from mmrec_gen.prompting.context import SCHEMA_FIELDS
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.prompting.templates import (
    DEFAULT_TEMPLATES,
    TemplateSpec,
    get_template,
    load_manifest,
    parse_manifest,
    template_source,
    undeclared_variables,
)
from mmrec_gen.prompting.validate import validate_templates

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "prompts" / "golden"
EXPECTED_IDS = {
    "rank_listwise",
    "rank_fewshot",
    "explain",
    "pointwise",
    "rec_items",
    "rec_items_titles",
    "rec_labels",
    "rank_listwise_images",
    "align_caption",
}


def _raw_manifest() -> dict:
    return yaml.safe_load(files("mmrec_gen.prompts").joinpath("manifest.yaml").read_text(encoding="utf-8"))


def test_manifest_lists_every_template_with_all_fields():
    specs = load_manifest()
    assert set(specs) == EXPECTED_IDS
    raw_ids = [e["id"] for e in _raw_manifest()["templates"]]
    assert len(raw_ids) == len(set(raw_ids)) == len(EXPECTED_IDS)
    for spec in specs.values():
        for f in fields(TemplateSpec):
            if f.name != "system":
                assert getattr(spec, f.name), f"{spec.id}: empty {f.name}"
        assert spec.version >= 1
        assert spec.file == f"{spec.id}.jinja"
        assert spec.system.strip() != ""
    assert {s.task for s in specs.values()} == {"rank", "explain", "pointwise"}
    assert specs["rank_listwise"].output_format == "labels"
    assert specs["pointwise"].output_format == "yes_no"
    assert specs["rec_items"].output_format == "items"
    assert specs["explain"].output_format == "text"


def test_default_templates_point_at_templates_of_the_right_task():
    assert DEFAULT_TEMPLATES == {
        "rank": "rank_listwise",
        "rank_fewshot": "rank_fewshot",
        "explain": "explain",
        "pointwise": "pointwise",
    }
    for key, template_id in DEFAULT_TEMPLATES.items():
        assert get_template(template_id).task == key.removesuffix("_fewshot")


def test_duplicate_ids_and_malformed_entries_raise():
    raw = _raw_manifest()
    dup = {"templates": raw["templates"] + [raw["templates"][0]]}
    with pytest.raises(ValueError, match="duplicate template id 'rank_listwise'"):
        parse_manifest(dup)
    missing = {"templates": [{k: v for k, v in raw["templates"][0].items() if k != "required_fields"}]}
    with pytest.raises(ValueError, match="lacks keys \\['required_fields'\\]"):
        parse_manifest(missing)
    bad_task = {"templates": [dict(raw["templates"][0], task="summarize")]}
    with pytest.raises(ValueError, match="task 'summarize'"):
        parse_manifest(bad_task)
    bad_field = {"templates": [dict(raw["templates"][0], required_fields=["history", "user_age"])]}
    with pytest.raises(ValueError, match="user_age"):
        parse_manifest(bad_field)


def test_unknown_template_id_lists_known_ids():
    with pytest.raises(KeyError, match="rank_listwise") as err:
        get_template("rank_pairwise")
    assert "rank_pairwise" in str(err.value)


@pytest.mark.parametrize("template_id", sorted(EXPECTED_IDS))
def test_template_parses_and_uses_exactly_its_required_fields(template_id):
    spec = get_template(template_id)
    source = template_source(spec)
    on_disk = (Path(__file__).resolve().parents[1] / "prompts" / spec.file).read_text(encoding="utf-8")
    assert source == on_disk  # loaded through importlib.resources, same bytes as the checked-in file
    found = undeclared_variables(source, spec.file)
    assert found <= SCHEMA_FIELDS
    assert found == set(spec.required_fields)


def test_macro_file_uses_no_global_variables():
    source = files("mmrec_gen.prompts").joinpath("_macros.jinja").read_text(encoding="utf-8")
    assert undeclared_variables(source, "_macros.jinja") == set()


def test_validate_templates_reports_every_template(tokenizer):
    lines = validate_templates()
    assert [line.split()[0] for line in lines] == [s for s in load_manifest()]
    assert all(": ok," in line for line in lines)
    with_tokens = validate_templates(tokenizer)
    assert all(line.endswith(" tokens") for line in with_tokens)


@pytest.mark.parametrize("template_id", sorted(EXPECTED_IDS))
def test_golden_render(tokenizer, template_id):
    # The compact rec_* templates and align_caption are rendered with item tokens (on a copy: the placeholder is
    # added to it).
    item_tokens = template_id.startswith("rec_") or template_id == "align_caption"
    tokenizer = copy.deepcopy(tokenizer) if item_tokens else tokenizer
    prompt = samples.render_sample(PromptBuilder(tokenizer, template_id, item_tokens=item_tokens), template_id)
    # R11: our text is exactly the chat template applied to our messages, and input_ids tokenize that text.
    assert prompt.prompt_text == tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=False
    )
    assert prompt.input_ids == tokenizer(prompt.prompt_text, add_special_tokens=False)["input_ids"]
    assert prompt.prompt_text.endswith("<|im_start|>assistant\n")
    golden = GOLDEN_DIR / f"{template_id}.txt"
    data = prompt.prompt_text.encode("utf-8")
    if os.environ.get("MMREC_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(data)
    assert golden.exists(), f"{golden} missing; run MMREC_UPDATE_GOLDEN=1 pytest {__file__}"
    assert golden.read_bytes() == data, (
        f"render of {template_id} changed; if intended, bump its version and regenerate"
    )


def test_golden_files_ship_as_package_data():
    shipped = {p.name for p in files("mmrec_gen.prompts").joinpath("golden").iterdir()}
    assert {f"{t}.txt" for t in EXPECTED_IDS} <= shipped


def test_rank_prompt_content_order_and_instruction(tokenizer):
    prompt = samples.render_sample(PromptBuilder(tokenizer, "rank_listwise"), "rank_listwise")
    user = prompt.messages[-1]["content"]
    titles = [e.item.title for e in samples.sample_history()]
    positions = [user.index(t) for t in titles]
    assert positions == sorted(positions)  # oldest first
    assert "1. Toy Story (1995) (genres: Adventure, Animation, Children, Comedy, Fantasy), rated 4.0/5" in user
    assert "2. Jumanji (1995) (genres: Adventure, Children, Fantasy)\n" in user  # no rating -> none printed
    assert "\nA. Star Wars: Episode IV - A New Hope (1977) (genres: Action, Adventure, Sci-Fi)\n" in user
    assert "\nD. Blade Runner (1982)\n" in user
    assert "letters of all 4 candidates" in user
    assert prompt.messages[0] == {"role": "system", "content": get_template("rank_listwise").system}


def test_fewshot_prompt_holds_demos_before_the_task(tokenizer):
    prompt = samples.render_sample(PromptBuilder(tokenizer, "rank_fewshot"), "rank_fewshot")
    user = prompt.messages[-1]["content"]
    assert user.count("Chosen next:") == 2
    assert "Chosen next: C\n" in user and "Chosen next: A\n" in user
    assert user.index("GoldenEye") < user.index("Now the user") < user.index("Toy Story")
    assert prompt.labels == ["A", "B", "C", "D"]
