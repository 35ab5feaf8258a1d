"""PromptBuilder behaviour: chat rendering (R11), missing fields (R6), labels, demos, task checks."""

from __future__ import annotations

import math
import pickle

import pytest

from mmrec_gen.data.schema import Item
from mmrec_gen.models.tiny import build_tiny_tokenizer
from mmrec_gen.prompting import samples
from mmrec_gen.prompting.labels import candidate_labels, label_token_ids
from mmrec_gen.prompting.render import (
    Demo,
    HistoryEntry,
    PromptBuilder,
    PromptFieldError,
    PromptTooLongError,
)
from mmrec_gen.prompting.templates import TemplateSpec, environment, render_user_text


def _history(n: int) -> list[HistoryEntry]:
    return [HistoryEntry(Item(f"h{i}", f"Movie {i}", {"genres": "Drama"}), float(1 + i % 5)) for i in range(n)]


def _cands(n: int) -> list[Item]:
    return [Item(f"c{i}", f"Candidate {i}") for i in range(n)]


# ---------------------------------------------------------------------------------------------------- labels
def test_candidate_labels():
    assert candidate_labels(0) == []
    assert candidate_labels(3) == ["A", "B", "C"]
    assert candidate_labels(26)[-1] == "Z"
    with pytest.raises(ValueError, match="27 candidates.*at most 26"):
        candidate_labels(27)


def test_label_token_ids_single_tokens(tokenizer):
    labels = candidate_labels(20)
    ids = label_token_ids(tokenizer, labels)
    assert len(set(ids)) == 20
    assert [tokenizer.decode([i]) for i in ids] == labels
    prompt = PromptBuilder(tokenizer, "rank_listwise").rank("u", _history(3), _cands(20))
    # the label is the first token of the answer right after the assistant prefix
    assert label_token_ids(tokenizer, prompt.labels, prefix=prompt.prompt_text) == ids
    full = tokenizer(prompt.prompt_text + "C, A", add_special_tokens=False)["input_ids"]
    assert full[: len(prompt.input_ids) + 1] == [*prompt.input_ids, ids[2]]


def test_label_token_ids_rejects_multi_token_label(tokenizer):
    with pytest.raises(ValueError, match=r"label 'AB' is 2 tokens \['A', 'B'\] \(ids \[\d+, \d+\]\) in tokenizer \w+"):
        label_token_ids(tokenizer, ["A", "AB"])


def test_label_token_ids_rejects_duplicate_ids(tokenizer):
    with pytest.raises(ValueError, match="same token id"):
        label_token_ids(tokenizer, ["A", "A"])


# ------------------------------------------------------------------------------------------------ rendering
def test_rank_prompt_fields(tokenizer):
    history = _history(30)
    prompt = PromptBuilder(tokenizer, "rank_listwise").rank("u42", history, _cands(5))
    assert prompt.user_id == "u42" and prompt.template_id == "rank_listwise"
    assert prompt.candidate_ids == ["c0", "c1", "c2", "c3", "c4"]
    assert prompt.labels == ["A", "B", "C", "D", "E"]
    assert prompt.images == []
    # max_history cap (20) is not budget truncation
    assert (prompt.n_history_total, prompt.n_history_used, prompt.truncated) == (30, 20, False)
    user = prompt.messages[-1]["content"]
    assert "Movie 9," not in user and "1. Movie 10 (genres: Drama), rated 1.0/5\n" in user
    assert "20. Movie 29 (genres: Drama), rated 5.0/5\n" in user
    assert [m["role"] for m in prompt.messages] == ["system", "user"]
    assert prompt.prompt_text == tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=False
    )
    assert prompt.input_ids == tokenizer(prompt.prompt_text, add_special_tokens=False)["input_ids"]


def test_nan_rating_is_not_printed(tokenizer):
    history = [HistoryEntry(Item("h1", "Heat"), math.nan), HistoryEntry(Item("h2", "Babe"), 4.5)]
    user = PromptBuilder(tokenizer, "pointwise").pointwise("u", history, Item("i", "Seven")).messages[-1]["content"]
    assert "1. Heat\n" in user and "2. Babe, rated 4.5/5\n" in user and "nan" not in user


def test_empty_history_is_stated(tokenizer):
    prompt = PromptBuilder(tokenizer, "explain").explain("u", [], Item("i", "Seven"))
    assert "no recorded history" in prompt.messages[-1]["content"]
    assert (prompt.n_history_total, prompt.n_history_used, prompt.truncated) == (0, 0, False)
    assert prompt.candidate_ids == ["i"] and prompt.labels == []


def test_explain_and_pointwise_prompts(tokenizer):
    item = Item("i9", "Seven (1995)", {"genres": "Mystery|Thriller"})
    explain = PromptBuilder(tokenizer, "explain").explain("u", _history(2), item).messages[-1]["content"]
    assert "Recommended item: Seven (1995) (genres: Mystery, Thriller)" in explain
    assert "Cite at least one title" in explain
    point = PromptBuilder(tokenizer, "pointwise").pointwise("u", _history(2), item).messages[-1]["content"]
    assert point.endswith('Will the user enjoy "Seven (1995)"? Answer Yes or No.')


def test_text_fields_truncated_to_max_text_chars(tokenizer):
    builder = PromptBuilder(tokenizer, "rank_listwise", max_text_chars=10)
    prompt = builder.rank("u", [HistoryEntry(Item("h", "A very long title indeed"), None)], _cands(2))
    assert "1. A very lo…\n" in prompt.messages[-1]["content"]


def test_task_and_demo_checks(tokenizer):
    with pytest.raises(ValueError, match="'explain' template"):
        PromptBuilder(tokenizer, "explain").rank("u", [], _cands(2))
    with pytest.raises(ValueError, match="few-shot and needs demos for user 'u'"):
        PromptBuilder(tokenizer, "rank_fewshot").rank("u", [], _cands(2))
    demo = Demo(history=tuple(_history(2)), candidates=tuple(_cands(3)), answer_item_id="c1")
    with pytest.raises(ValueError, match="does not use demos"):
        PromptBuilder(tokenizer, "rank_listwise").rank("u", [], _cands(2), [demo])
    bad = Demo(history=(), candidates=tuple(_cands(3)), answer_item_id="zzz")
    with pytest.raises(ValueError, match="answer item 'zzz' is not among"):
        PromptBuilder(tokenizer, "rank_fewshot").rank("u", [], _cands(2), [bad])
    with pytest.raises(ValueError, match="duplicate candidate ids \\['c0'\\]"):
        PromptBuilder(tokenizer, "rank_listwise").rank("u", [], [*_cands(2), _cands(1)[0]])
    with pytest.raises(KeyError, match="known templates"):
        PromptBuilder(tokenizer, "nope")


def test_demo_history_is_capped(tokenizer):
    demo = Demo(history=tuple(_history(9)), candidates=tuple(_cands(3)), answer_item_id="c2")
    prompt = PromptBuilder(tokenizer, "rank_fewshot", demo_history=2).rank("u", _history(1), _cands(2), [demo])
    user = prompt.messages[-1]["content"]
    demo_part = user[: user.index("Now the user")]
    assert "Movie 6" not in demo_part and "1. Movie 7" in demo_part and "2. Movie 8" in demo_part
    assert "Chosen next: C\n" in demo_part


def test_render_is_deterministic(tokenizer):
    b = PromptBuilder(tokenizer, "rank_fewshot")
    one = samples.render_sample(b, "rank_fewshot")
    two = samples.render_sample(PromptBuilder(tokenizer, "rank_fewshot"), "rank_fewshot")
    assert one == two


# ---------------------------------------------------------------------------------------- R6: missing fields
def _custom_spec(required: tuple[str, ...]) -> TemplateSpec:
    return TemplateSpec("custom_director", "custom_director.jinja", "explain", 1, "test", required, "text", None)


def test_missing_record_field_names_template_field_and_user():
    spec = _custom_spec(("item",))
    template = environment().from_string("Directed by {{ item.fields.director }}")
    context = {"item": {"title": "Seven", "fields": {"genres": "Thriller"}}}
    with pytest.raises(PromptFieldError) as err:
        render_user_text(spec, context, user_id="u17", template=template)
    e = err.value
    assert (e.template_id, e.field, e.user_id, e.record) == ("custom_director", "director", "u17", "Seven")
    assert "template 'custom_director' needs field 'director'" in str(e) and "user 'u17'" in str(e)
    assert render_user_text(spec, {"item": {"fields": {"director": "Fincher"}}}, user_id="u", template=template) == (
        "Directed by Fincher"
    )


def test_missing_top_level_field():
    spec = _custom_spec(("item", "history"))
    template = environment().from_string("{{ item.title }} {{ history | length }}")
    with pytest.raises(PromptFieldError, match="needs field 'history'.*user 'u3'"):
        render_user_text(spec, {"item": {"title": "x"}}, user_id="u3", template=template)


def test_empty_title_and_none_field_raise_instead_of_printing_empty(tokenizer):
    builder = PromptBuilder(tokenizer, "rank_listwise")
    with pytest.raises(PromptFieldError, match="needs field 'title'.*user 'u5', item 'c9'"):
        builder.rank("u5", _history(2), [Item("c1", "Fine"), Item("c9", "  ")])
    with pytest.raises(PromptFieldError, match="needs field 'fields.genres'.*item 'h1'"):
        builder.rank("u5", [HistoryEntry(Item("h1", "Heat", {"genres": None}), 3.0)], _cands(2))


def test_errors_survive_pickling():
    too_long, missing = (
        PromptTooLongError("u1", "rank_listwise", 5000, 2040),
        PromptFieldError("explain", "title", "u2", "i3"),
    )
    e, f = pickle.loads(pickle.dumps(too_long)), pickle.loads(pickle.dumps(missing))
    assert (e.user_id, e.template_id, e.num_tokens, e.budget) == ("u1", "rank_listwise", 5000, 2040)
    assert (f.template_id, f.field, f.user_id, f.record) == ("explain", "title", "u2", "i3")
    # The messages (what the CLI prints for these ValueErrors) survive too.
    assert (str(e), str(f)) == (str(too_long), str(missing)) and "u1" in str(e) and "title" in str(f)


def test_chat_template_without_system_role_gets_system_text_in_user_turn():
    tok = build_tiny_tokenizer()
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + tok.chat_template
    )
    builder = PromptBuilder(tok, "pointwise")
    prompt = builder.pointwise("u", _history(1), Item("i", "Seven"))
    assert [m["role"] for m in prompt.messages] == ["user"]
    assert prompt.messages[0]["content"].startswith(builder.spec.system + "\n\nThe user's history")
    assert prompt.prompt_text == tok.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
