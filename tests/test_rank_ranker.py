"""Ranking modes on tiny random models: validity (R3), no label leak (R2), batch invariance (R10),
over-long prompts in a batch (R4) and out-of-memory halving (R8)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmrec_gen.data.inputs import prepare_inputs, run_meta
from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.rank.backend import create_backend
from mmrec_gen.rank.pipeline import build_tasks
from mmrec_gen.rank.ranker import Ranker, label_vocab


@pytest.fixture(scope="module")
def inputs(synth_dir, tmp_path_factory):
    return prepare_inputs(
        str(synth_dir), split="test", seed=0, num_candidates=20, cache_dir=str(tmp_path_factory.mktemp("cands"))
    )


def _rank(model, inputs, mode, *, batch_size=4, template="rank_listwise", tasks=None, max_model_len=2048, shots=0):
    tasks = tasks if tasks is not None else build_tasks(inputs, split="test", max_users=12, shots=shots, seed=0)
    new_tokens = {"score": 1, "constrained": 40, "generate": 24}[mode]
    builder = PromptBuilder(model.tokenizer, template, max_model_len=max_model_len, max_new_tokens=new_tokens)
    backend = create_backend("hf", model, batch_size=batch_size, progress=False)
    meta = run_meta(inputs, model=model.name, mode=mode, template=template, shots=shots)
    return Ranker(backend, builder, mode, meta=meta, max_new_tokens=new_tokens).rank(tasks)


@pytest.mark.parametrize("mode", ["score", "constrained"])
def test_score_and_constrained_are_always_valid_permutations(tiny_model, inputs, mode):
    rows = _rank(tiny_model, inputs, mode)
    assert len(rows) == 12
    for row in rows:
        assert row["valid"] is True and row["error"] is None
        assert sorted(row["ranking"]) == sorted(row["candidates"])
        assert len(set(row["ranking"])) == 20
        assert row["target"] in row["candidates"]


def test_score_ranking_follows_label_logits(tiny_model, inputs):
    for row in _rank(tiny_model, inputs, "score"):
        scores = dict(zip(row["candidates"], row["scores"], strict=True))
        ranked_scores = [scores[c] for c in row["ranking"]]
        assert ranked_scores == sorted(ranked_scores, reverse=True)


def test_constrained_first_pick_equals_score_argmax(tiny_model, inputs):
    """Constrained decoding starts from the same next-token distribution the score mode reads."""
    score_rows = _rank(tiny_model, inputs, "score")
    constrained_rows = _rank(tiny_model, inputs, "constrained")
    for s, c in zip(score_rows, constrained_rows, strict=True):
        assert s["ranking"][0] == c["ranking"][0]
        assert c["raw_output"].count(",") == 19


def test_pointwise_template_scores_every_candidate(tiny_model_real_tokenizer, inputs):
    rows = _rank(tiny_model_real_tokenizer, inputs, "score", template="pointwise")
    for row in rows:
        assert row["valid"] and len(row["scores"]) == 20
        assert sorted(row["ranking"]) == sorted(row["candidates"])


def test_generate_mode_counts_errors_and_never_loses_a_user(tiny_model, inputs):
    rows = _rank(tiny_model, inputs, "generate")
    assert [r["user_id"] for r in rows] == [t.user_id for t in build_tasks(inputs, split="test", max_users=12)]
    for row in rows:
        assert sorted(row["ranking"]) == sorted(row["candidates"])
        # The raw output is what was decoded: at most the 24 new tokens the test allows.
        assert len(tiny_model.tokenizer(row["raw_output"], add_special_tokens=False)["input_ids"]) <= 24
        # A random tiny model never names a candidate: the output is invalid and every candidate is missing.
        assert row["valid"] is False and row["errors"]["invalid"] == 1 and row["errors"]["missing"] == 20


def test_gold_label_never_reaches_inference(tiny_model, inputs):
    """R2: changing every user's target leaves prompts, outputs and parsing byte-identical."""
    tasks = build_tasks(inputs, split="test", max_users=6)
    changed = [
        dataclasses.replace(
            t,
            target=t.candidates[
                (t.candidates.index(next(c for c in t.candidates if c.item_id == t.target)) + 1) % 20
            ].item_id,
        )
        for t in tasks
    ]
    for mode in ("score", "generate"):
        a = _rank(tiny_model, inputs, mode, tasks=tasks)
        b = _rank(tiny_model, inputs, mode, tasks=changed)
        for ra, rb in zip(a, b, strict=True):
            assert ra["target"] != rb["target"]
            assert {k: v for k, v in ra.items() if k != "target"} == {k: v for k, v in rb.items() if k != "target"}


@pytest.mark.parametrize("mode", ["score", "constrained", "generate"])
def test_batch_size_does_not_change_outputs(tiny_model, inputs, mode):
    """R10: greedy outputs and rankings are identical for batch sizes 1 and 5."""
    one = _rank(tiny_model, inputs, mode, batch_size=1)
    five = _rank(tiny_model, inputs, mode, batch_size=5)
    assert [r["ranking"] for r in one] == [r["ranking"] for r in five]
    assert [r["raw_output"] for r in one] == [r["raw_output"] for r in five]
    if mode == "score":
        for a, b in zip(one, five, strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def _demo_ids(task):
    return [
        (d.answer_item_id, [c.item_id for c in d.candidates], [h.item.item_id for h in d.history]) for d in task.demos
    ]


def test_few_shot_demos_do_not_depend_on_which_users_run(inputs):
    """A user's demonstrations depend on (seed, user id) only, not on the batch or the other users."""
    all_tasks = build_tasks(inputs, split="test", max_users=None, shots=2, seed=7)
    rows = inputs.candidate_file.rows
    for subset in ([rows[-1]], [rows[3], rows[-1]], list(reversed(rows))):
        fewer = dataclasses.replace(inputs, candidate_file=dataclasses.replace(inputs.candidate_file, rows=subset))
        by_user = {t.user_id: t for t in build_tasks(fewer, split="test", max_users=None, shots=2, seed=7)}
        assert len(by_user) == len(subset)
        for task in all_tasks:
            if task.user_id in by_user:
                assert _demo_ids(by_user[task.user_id]) == _demo_ids(task)
    other_seed = build_tasks(inputs, split="test", max_users=None, shots=2, seed=8)
    assert [_demo_ids(t) for t in other_seed] != [_demo_ids(t) for t in all_tasks]


def test_few_shot_demos_come_from_other_users_training_data(inputs):
    """Each demo is another user's training window: its answer is that user's last training item and its history
    the training items before it; no demo can be rebuilt from the user's own data."""
    users = inputs.split_result.users
    for task in build_tasks(inputs, split="test", max_users=None, shots=2, seed=7):
        assert len(task.demos) == 2
        for demo in task.demos:
            history = [h.item.item_id for h in demo.history]
            sources = {
                u
                for u, s in users.items()
                if len(s.train) >= 2
                and s.train[-1].item_id == demo.answer_item_id
                and [i.item_id for i in s.train[:-1][-len(history) :]] == history
            }
            assert sources and task.user_id not in sources
            assert demo.answer_item_id in {c.item_id for c in demo.candidates}


def test_few_shot_ranking_runs(tiny_model, inputs):
    # The tiny byte-level tokenizer needs ~4x SmolLM2's tokens for the same text, hence the long context.
    rows = _rank(tiny_model, inputs, "score", template="rank_fewshot", shots=2, max_model_len=8192)
    assert all(r["valid"] for r in rows) and rows[0]["meta"]["shots"] == 2


def test_one_over_long_prompt_in_a_batch_of_100(tiny_model, inputs):
    """R4: 99 results and 1 error row naming the user; every kept prompt fits the budget."""
    base = build_tasks(inputs, split="test", max_users=None)
    tasks = [dataclasses.replace(base[i % len(base)], user_id=f"user{i:03d}") for i in range(100)]
    huge = [Item(c.item_id, "Z" * 5000) for c in tasks[42].candidates]
    tasks[42] = dataclasses.replace(tasks[42], candidates=huge)
    rows = _rank(tiny_model, inputs, "score", tasks=tasks, max_model_len=1200, batch_size=16)
    errors = [r for r in rows if r["error"]]
    assert len(rows) == 100 and len(errors) == 1
    assert errors[0]["user_id"] == "user042" and "PromptTooLongError" in errors[0]["error"]
    assert errors[0]["ranking"] is None and errors[0]["valid"] is False
    assert sum(r["truncated"] for r in rows if not r["error"]) > 0  # histories were cut to fit, oldest first


class _OOMOverTwo:
    """Fault injection: the model raises out-of-memory whenever a forward pass holds more than two rows."""

    def __init__(self, model, fail_user_len=None):
        self.model, self.fail_len = model, fail_user_len

    def __call__(self, *args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[0] > 2 or (self.fail_len is not None and ids.shape[1] == self.fail_len):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.model(*args, **kwargs)


def test_out_of_memory_halves_the_batch_and_isolates_a_failing_record(tiny_model, inputs):
    """R8: the batch is halved and retried; a single record that still fails becomes an error row."""
    expected = _rank(tiny_model, inputs, "score", batch_size=8)
    tasks = build_tasks(inputs, split="test", max_users=12)
    builder = PromptBuilder(tiny_model.tokenizer, "rank_listwise", max_new_tokens=1)
    victim = builder.rank(tasks[3].user_id, tasks[3].history, tasks[3].candidates)
    backend = create_backend("hf", tiny_model, batch_size=8, progress=False)
    backend.model = _OOMOverTwo(tiny_model.model, fail_user_len=len(victim.input_ids))
    meta = run_meta(inputs, model="tiny-llama", mode="score", template="rank_listwise", shots=0)
    rows = Ranker(backend, builder, "score", meta=meta).rank(tasks)
    failed = [r for r in rows if r["error"]]
    assert tasks[3].user_id in {r["user_id"] for r in failed}
    assert all("out of memory" in r["error"] for r in failed)
    for row, ref in zip(rows, expected, strict=True):
        if not row["error"]:
            assert row["ranking"] == ref["ranking"]


def test_label_vocab_matches_tokenizer(tiny_model):
    vocab = label_vocab(tiny_model.tokenizer, ["A", "B", "C"])
    tok = tiny_model.tokenizer
    assert [tok.decode([i]) for i in vocab.first_ids] == ["A", "B", "C"]
    assert [tok.decode([i]).strip() for i in vocab.cont_ids] == ["A", "B", "C"]
    assert tok.decode(list(vocab.sep_ids)) == ","


class _OptionsProbe:
    """A backend class that records the options create_backend hands it."""

    config_options = ("max_images", "not_a_run_option")

    def __init__(self, loaded_model, *, batch_size, progress, **options):
        self.options = options


def test_a_backend_takes_the_run_options_it_lists_and_explicit_options_win(monkeypatch, tiny_model):
    """The vLLM backend sizes its engine's image limit from the run's --max-images this way (config_options)."""
    import types

    from mmrec_gen.rank.backend import BACKENDS

    monkeypatch.setattr(BACKENDS, "_entries", dict(BACKENDS._entries))
    BACKENDS.register("probe", f"{__name__}:_OptionsProbe", "records its options")
    run = types.SimpleNamespace(max_images=3, image_items="both")
    assert create_backend("probe", tiny_model, batch_size=1, config=run).options == {"max_images": 3}
    assert create_backend("probe", tiny_model, batch_size=1, config=run, max_images=7).options == {"max_images": 7}
    assert create_backend("probe", tiny_model, batch_size=1).options == {}
    # The HF backend lists none: a run config changes nothing there.
    assert not getattr(BACKENDS.resolve("hf"), "config_options", ())
