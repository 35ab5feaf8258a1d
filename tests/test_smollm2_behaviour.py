"""Behaviour on the real embedded model, SmolLM2-135M-Instruct (converted once by `make model`)."""

from __future__ import annotations

import pytest

from mmrec_gen.data.inputs import prepare_inputs, run_meta
from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.labels import candidate_labels, label_token_ids
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder
from mmrec_gen.rank.backend import create_backend
from mmrec_gen.rank.pipeline import build_tasks
from mmrec_gen.rank.ranker import YES_NO, Ranker, UserTask, label_vocab

pytestmark = pytest.mark.smollm2


def test_labels_and_yes_no_are_single_tokens(smollm2):
    """R11: every candidate label (and Yes/No) is one token of the real tokenizer, also after ', '."""
    labels = candidate_labels(26)
    ids = label_token_ids(smollm2.tokenizer, labels)
    assert len(set(ids)) == 26
    vocab = label_vocab(smollm2.tokenizer, labels)
    assert len(set(vocab.cont_ids)) == 26 and len(vocab.sep_ids) == 1
    assert len(label_token_ids(smollm2.tokenizer, YES_NO)) == 2


def test_rendered_prompt_equals_chat_template(smollm2):
    builder = PromptBuilder(smollm2.tokenizer, "rank_listwise", max_new_tokens=1)
    prompt = builder.rank(
        "u1", [HistoryEntry(Item("1", "Toy Story (1995)"), 4.0)], [Item("2", "Heat"), Item("3", "Up")]
    )
    tok = smollm2.tokenizer
    assert prompt.prompt_text == tok.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    assert prompt.input_ids == tok(prompt.prompt_text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def inputs(synth_dir, tmp_path_factory):
    return prepare_inputs(
        str(synth_dir), split="test", seed=0, num_candidates=20, cache_dir=str(tmp_path_factory.mktemp("c"))
    )


def _ranker(model, inputs, mode):
    new_tokens = {"score": 1, "constrained": 40}[mode]
    builder = PromptBuilder(model.tokenizer, "rank_listwise", max_new_tokens=new_tokens)
    backend = create_backend("hf", model, batch_size=4, progress=False)
    return Ranker(
        backend, builder, mode, meta=run_meta(inputs, model=model.name, mode=mode, template="rank_listwise", shots=0)
    )


def test_score_and_constrained_agree_and_are_valid_on_the_real_model(smollm2, inputs):
    """R3 on SmolLM2: both modes give full permutations; constrained starts with score's top label."""
    tasks = build_tasks(inputs, split="test", max_users=4)
    score = _ranker(smollm2, inputs, "score").rank(tasks)
    constrained = _ranker(smollm2, inputs, "constrained").rank(tasks)
    for s, c in zip(score, constrained, strict=True):
        assert s["valid"] and c["valid"]
        assert sorted(c["ranking"]) == sorted(c["candidates"])
        assert s["ranking"][0] == c["ranking"][0]


def test_score_mode_logits_depend_on_the_history(smollm2):
    """The same candidates after two different histories get different label scores: the model reads the prompt."""
    items = [Item(str(i), t) for i, t in enumerate(["Heat", "Casino", "Alien", "Fargo", "Se7en"])]
    builder = PromptBuilder(smollm2.tokenizer, "rank_listwise", max_new_tokens=1)
    ranker = Ranker(create_backend("hf", smollm2, batch_size=2, progress=False), builder, "score", meta={})
    horror = [HistoryEntry(Item("h1", "Alien (1979)"), 5.0), HistoryEntry(Item("h2", "Aliens (1986)"), 5.0)]
    crime = [HistoryEntry(Item("h3", "Goodfellas (1990)"), 5.0), HistoryEntry(Item("h4", "Scarface (1983)"), 1.0)]
    rows = ranker.rank([UserTask("u1", horror, items, target="2"), UserTask("u2", crime, items, target="1")])
    assert all(r["valid"] and len(r["scores"]) == 5 for r in rows)
    assert max(abs(a - b) for a, b in zip(rows[0]["scores"], rows[1]["scores"], strict=True)) > 1e-3
