"""`mmrec rank --permutations P`: score mode averages each candidate's label log-probability over P display orders
(order 0 = the candidate file's, then shuffles seeded by (seed, user id, k)) to remove the verbalizer's position
bias. P=1 is the plain score mode; per-user results do not depend on the batch (R10); failures stay per user."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmrec_gen.data.inputs import prepare_inputs, run_meta
from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import PromptBuilder
from mmrec_gen.rank.backend import create_backend
from mmrec_gen.rank.pipeline import build_tasks, run_rank
from mmrec_gen.rank.rank_config import RankConfig
from mmrec_gen.rank.ranker import Ranker, display_orders


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cands"))


@pytest.fixture(scope="module")
def inputs(synth_dir, cache_dir):
    return prepare_inputs(str(synth_dir), split="test", seed=0, num_candidates=20, cache_dir=cache_dir)


def _ranker(model, inputs, permutations, *, batch_size=4, seed=0, max_model_len=2048):
    builder = PromptBuilder(model.tokenizer, "rank_listwise", max_model_len=max_model_len, max_new_tokens=1)
    backend = create_backend("hf", model, batch_size=batch_size, progress=False)
    meta = run_meta(inputs, model=model.name, mode="score", template="rank_listwise", shots=0)
    return Ranker(backend, builder, "score", meta=meta, permutations=permutations, seed=seed)


def test_one_permutation_is_the_plain_score_mode(tiny_model, inputs):
    """P=1: scores are the raw label logits of the file's order, bit for bit, and the meta is unchanged."""
    tasks = build_tasks(inputs, split="test", max_users=6)
    ranker = _ranker(tiny_model, inputs, 1)
    rows = ranker.rank(tasks)
    prompts = [ranker.builder.rank(t.user_id, t.history, t.candidates) for t in tasks]
    label_ids = label_token_ids(tiny_model.tokenizer, prompts[0].labels)
    logits = ranker.backend.label_logits(prompts, label_ids)  # the same prompts in the same batches
    for row, task, out in zip(rows, tasks, logits, strict=True):
        assert row["candidates"] == [c.item_id for c in task.candidates]
        assert row["scores"] == out[:20]
        order = sorted(range(20), key=lambda i: -out[i])
        assert row["ranking"] == [row["candidates"][i] for i in order]
        assert row["meta"] == run_meta(inputs, model=tiny_model.name, mode="score", template="rank_listwise", shots=0)
    assert _ranker(tiny_model, inputs, 1).rank(tasks) == rows


def test_display_orders_start_with_the_file_order_and_depend_on_seed_and_user_only():
    orders = display_orders(0, "u1", 20, 5)
    assert orders[0] == list(range(20))
    assert all(sorted(o) == list(range(20)) for o in orders)
    assert len({tuple(o) for o in orders}) == 5
    assert display_orders(0, "u1", 20, 3) == orders[:3]  # order k does not depend on P
    assert display_orders(0, "u2", 20, 5)[1:] != orders[1:]
    assert display_orders(1, "u1", 20, 5)[1:] != orders[1:]


def test_scores_are_mean_label_log_probs_over_display_orders(tiny_model, inputs):
    """P=4: each candidate's score is the mean over the 4 orders of log_softmax(label logits) at the label it was
    shown under, recomputed here prompt by prompt."""
    tasks = build_tasks(inputs, split="test", max_users=3)
    rows = _ranker(tiny_model, inputs, 4).rank(tasks)
    plain = _ranker(tiny_model, inputs, 1).rank(tasks)
    builder = PromptBuilder(tiny_model.tokenizer, "rank_listwise", max_new_tokens=1)
    backend = create_backend("hf", tiny_model, batch_size=1, progress=False)
    for row, base, task in zip(rows, plain, tasks, strict=True):
        expected = dict.fromkeys(row["candidates"], 0.0)
        for order in display_orders(0, task.user_id, 20, 4):
            shown = [task.candidates[j] for j in order]
            prompt = builder.rank(task.user_id, task.history, shown)
            (logits,) = backend.label_logits([prompt], label_token_ids(tiny_model.tokenizer, prompt.labels))
            log_probs = torch.log_softmax(torch.tensor(logits[:20], dtype=torch.float64), dim=-1).tolist()
            for item, log_prob in zip(shown, log_probs, strict=True):
                expected[item.item_id] += log_prob / 4
        assert row["candidates"] == base["candidates"] == [c.item_id for c in task.candidates]
        assert row["scores"] == pytest.approx([expected[c] for c in row["candidates"]], abs=1e-4)
        assert row["scores"] != pytest.approx(base["scores"], abs=1e-2)
        ranked = [row["scores"][row["candidates"].index(c)] for c in row["ranking"]]
        assert ranked == sorted(ranked, reverse=True) and sorted(row["ranking"]) == sorted(row["candidates"])
        assert row["valid"] and row["error"] is None and row["meta"]["permutations"] == 4


def test_permuted_results_do_not_depend_on_the_batch_or_the_other_users(tiny_model, inputs):
    """R10: a user's P=3 row is the same ranked alone or among others, and with batch sizes 1 and 5."""
    tasks = build_tasks(inputs, split="test", max_users=8)
    together = _ranker(tiny_model, inputs, 3, batch_size=1).rank(tasks)
    for k in (0, 5):
        assert _ranker(tiny_model, inputs, 3, batch_size=1).rank([tasks[k]]) == [together[k]]
    shuffled = _ranker(tiny_model, inputs, 3, batch_size=5).rank(tasks[::-1])[::-1]
    for a, b in zip(together, shuffled, strict=True):
        assert a["ranking"] == b["ranking"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
    other_seed = _ranker(tiny_model, inputs, 3, batch_size=1, seed=1).rank(tasks)
    for a, b in zip(together, other_seed, strict=True):
        assert a["scores"] != pytest.approx(b["scores"], abs=1e-3)  # other shuffles, other averages


class _CountingModel:
    """Records the rows of every forward pass; raises out-of-memory for a batch holding the `fail_ids` prompt."""

    def __init__(self, model, fail_ids=None):
        self.model, self.fail_ids, self.batch_rows = model, fail_ids, []

    def __call__(self, *args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        if self.fail_ids is not None and self.fail_ids in rows:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.batch_rows.append(len(rows))
        return self.model(*args, **kwargs)


def test_users_are_batched_together_p_rows_each(tiny_model, inputs):
    """4 users x P=4 prompts with batch size 8: two forward passes of 8 rows, not one pass per user or order."""
    ranker = _ranker(tiny_model, inputs, 4, batch_size=8)
    ranker.backend.model = _CountingModel(tiny_model.model)
    rows = ranker.rank(build_tasks(inputs, split="test", max_users=4))
    assert all(r["valid"] for r in rows)
    assert ranker.backend.model.batch_rows == [8, 8]


def test_a_failing_permutation_makes_an_error_row_for_that_user_only(tiny_model, inputs):
    """R8 per user: one order of one user still runs out of memory alone -> that user's error row names it; the
    batch is halved for the others, whose rankings are unchanged."""
    tasks = build_tasks(inputs, split="test", max_users=6)
    expected = _ranker(tiny_model, inputs, 3, batch_size=6).rank(tasks)
    victim = tasks[2]
    shown = [victim.candidates[j] for j in display_orders(0, victim.user_id, 20, 3)[2]]
    ranker = _ranker(tiny_model, inputs, 3, batch_size=6)
    fail_ids = ranker.builder.rank(victim.user_id, victim.history, shown).input_ids
    ranker.backend.model = _CountingModel(tiny_model.model, fail_ids=fail_ids)
    rows = ranker.rank(tasks)
    failed = [r for r in rows if r["error"]]
    assert [r["user_id"] for r in failed] == [victim.user_id]
    assert "permutation 2 of 3" in failed[0]["error"] and "out of memory" in failed[0]["error"]
    assert failed[0]["ranking"] is None and failed[0]["valid"] is False
    for row, ref in zip(rows, expected, strict=True):
        if not row["error"]:
            assert row["ranking"] == ref["ranking"]


def test_an_over_long_user_becomes_an_error_row(tiny_model, inputs):
    """R4: a user whose prompts cannot fit is an error row; the others are ranked over all their orders."""
    tasks = build_tasks(inputs, split="test", max_users=5)
    tasks[1] = dataclasses.replace(tasks[1], candidates=[Item(c.item_id, "Z" * 5000) for c in tasks[1].candidates])
    rows = _ranker(tiny_model, inputs, 2, max_model_len=1200).rank(tasks)
    assert [r["user_id"] for r in rows if r["error"]] == [tasks[1].user_id]
    assert "PromptTooLongError" in rows[1]["error"]
    assert all(r["valid"] and r["meta"]["permutations"] == 2 for i, r in enumerate(rows) if i != 1)


def test_run_rank_passes_permutations_and_seed(tiny_model, synth_dir, cache_dir, tmp_path):
    cfg = RankConfig(
        data=str(synth_dir), out=str(tmp_path / "r.jsonl"), cache_dir=cache_dir, max_users=3, permutations=2, seed=5,
        progress=False,
    )  # fmt: skip
    rows = run_rank(cfg, tiny_model)
    inputs = prepare_inputs(str(synth_dir), split="test", seed=5, num_candidates=20, cache_dir=cache_dir)
    direct = _ranker(tiny_model, inputs, 2, batch_size=cfg.batch_size, seed=5).rank(
        build_tasks(inputs, split="test", max_users=3)
    )
    assert [r["scores"] for r in rows] == [r["scores"] for r in direct]
    assert rows[0]["meta"]["permutations"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"permutations": 0}, "--permutations must be >= 1"),
        ({"permutations": -2}, "--permutations must be >= 1"),
        ({"permutations": 2, "mode": "generate"}, "needs --mode score"),
        ({"permutations": 2, "mode": "constrained"}, "needs --mode score"),
        ({"permutations": 2, "template": "pointwise"}, "listwise template"),
    ],
)
def test_config_refuses_permutations_where_they_mean_nothing(options, message):
    with pytest.raises(ValueError, match=message):
        RankConfig(data="d", out="o", **options)


def test_config_accepts_permutations_in_score_mode():
    assert RankConfig(data="d", out="o", permutations=4).permutations == 4
    assert RankConfig(data="d", out="o", permutations=4, shots=2).template == "rank_fewshot"
    assert RankConfig(data="d", out="o", mode="generate").permutations == 1


def test_ranker_refuses_permutations_outside_listwise_score_mode(tiny_model, tiny_model_real_tokenizer, inputs):
    backend = create_backend("hf", tiny_model, batch_size=1, progress=False)
    listwise = PromptBuilder(tiny_model.tokenizer, "rank_listwise", max_new_tokens=1)
    with pytest.raises(ValueError, match="permutations=2"):
        Ranker(backend, listwise, "constrained", meta={}, permutations=2)
    with pytest.raises(ValueError, match="permutations=0"):
        Ranker(backend, listwise, "score", meta={}, permutations=0)
    pointwise = PromptBuilder(tiny_model_real_tokenizer.tokenizer, "pointwise", max_new_tokens=1)
    with pytest.raises(ValueError, match="pointwise"):
        Ranker(backend, pointwise, "score", meta={}, permutations=2)


@pytest.mark.smollm2
def test_permutations_remove_the_real_models_preference_for_label_a(smollm2, synth_dir, tmp_path):
    """SmolLM2-135M picks the candidate shown as "A" for every user; averaged over 8 orders it mostly does not."""
    inputs = prepare_inputs(str(synth_dir), split="test", seed=0, num_candidates=10, cache_dir=str(tmp_path))
    tasks = build_tasks(inputs, split="test", max_users=8)
    plain = _ranker(smollm2, inputs, 1, batch_size=8).rank(tasks)
    assert all(r["ranking"][0] == r["candidates"][0] for r in plain)
    debiased = _ranker(smollm2, inputs, 8, batch_size=8).rank(tasks)
    assert sum(r["ranking"][0] != r["candidates"][0] for r in debiased) >= len(tasks) // 2
