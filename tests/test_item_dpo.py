"""S-DPO on top of item-token adapters (both heads) and LLaRA's curriculum, on tiny models and synthetic data."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from training_helpers import adapter_state

pytestmark = pytest.mark.minilm  # the text source uses all-MiniLM-L6-v2 from its wheel

COMMON = dict(
    model="tiny-llama", dtype="float32", max_history=8, windows_per_user=3, per_device_train_batch_size=4,
    gradient_accumulation_steps=1, save_steps=100, logging_steps=1, progress=False, lora_dropout=0.0,
)  # fmt: skip


def _sft(synth_dir, out, **overrides):
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    values = dict(COMMON, data=str(synth_dir), output_dir=str(out), item_tokens="cf,text", head="items",
                  max_steps=3, learning_rate=1e-2)  # fmt: skip
    values.update(overrides)
    run_item_sft(SFTTrainConfig(**values))
    return out


def _dpo_cfg(synth_dir, adapter, out, **overrides):
    from mmrec_gen.train.config import DPOTrainConfig

    values = dict(COMMON, data=str(synth_dir), output_dir=str(out), adapter=str(adapter), max_steps=4,
                  learning_rate=1e-2, beta=0.5, num_negatives=3)  # fmt: skip
    values.update(overrides)
    return DPOTrainConfig(**values)


def _weights(folder):
    return adapter_state(folder)


@pytest.fixture(scope="module")
def items_adapter(synth_dir, tmp_path_factory):
    return _sft(synth_dir, tmp_path_factory.mktemp("sft_items"))


@pytest.mark.parametrize("head", ["items", "labels"])
def test_dpo_starts_at_the_reference_and_moves_the_adapter(synth_dir, items_adapter, tmp_path, head):
    from mmrec_gen.train.item_rec_dpo import run_item_dpo

    start = items_adapter if head == "items" else _sft(synth_dir, tmp_path / "sft_labels", head="labels",
                                                        item_tokens="cf", num_candidates=5)  # fmt: skip
    out = tmp_path / "dpo"
    cfg = _dpo_cfg(synth_dir, start, out, num_candidates=20)  # the adapter's own num_candidates wins
    summary = run_item_dpo(cfg)
    # At the first step the policy is the reference: every margin is 0 and S-DPO is log(1 + k), k = 3 negatives.
    assert summary["first_loss"] == pytest.approx(math.log(4), abs=1e-4)
    assert summary["kind"] == "dpo" and summary["path"] == f"item-tokens/{head}" and summary["steps"] == 4
    started, tuned = _weights(start), _weights(out)
    assert started.keys() == tuned.keys()
    assert any("lora_B" in k and not torch.equal(started[k], tuned[k]) for k in started)
    # The items head scores through the head and the projectors; the labels head through the projectors only.
    moved = {k for k in started if k.startswith("item_tokens.") and not torch.equal(started[k], tuned[k])}
    assert any(k.startswith("item_tokens.projectors.") for k in moved)
    assert ("item_tokens.head.weight" in moved) == (head == "items")
    assert not any(k.startswith("item_tokens.table_") for k in moved)  # the feature tables never train
    before = json.loads((start / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    assert {k: after[k] for k in ("head", "source_dims", "recipe", "fingerprints", "item_ids", "base_model")} == {
        k: before[k] for k in ("head", "source_dims", "recipe", "fingerprints", "item_ids", "base_model")
    }
    assert json.loads((out / "mmrec_adapter.json").read_text())["kind"] == "dpo"


def test_dpo_lowers_its_loss_and_the_result_ranks(synth_dir, items_adapter, tmp_path):
    from mmrec_gen.rank.pipeline import run_rank
    from mmrec_gen.rank.rank_config import RankConfig
    from mmrec_gen.train.item_rec_dpo import run_item_dpo

    out = tmp_path / "dpo"
    run_item_dpo(_dpo_cfg(synth_dir, items_adapter, out, max_steps=12))
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in log if "loss" in h]
    assert np.mean(losses[-3:]) < losses[0] - 0.05  # the preference is learned on the training windows
    rows = run_rank(RankConfig(data=str(synth_dir), out=str(tmp_path / "r.jsonl"), model="tiny-llama",
                               adapter=str(out), max_users=4, progress=False))  # fmt: skip
    assert len(rows) == 4 and all(r["valid"] and sorted(r["ranking"]) == sorted(r["candidates"]) for r in rows)
    assert rows[0]["meta"]["head"] == "items"


def test_dpo_refuses_other_sources_and_item_tokens_without_an_adapter(synth_dir, items_adapter, tmp_path):
    from mmrec_gen.cli import main
    from mmrec_gen.train.item_rec_dpo import run_item_dpo

    with pytest.raises(ValueError, match="its item tokens are cf,text"):
        run_item_dpo(_dpo_cfg(synth_dir, items_adapter, tmp_path / "a", item_tokens="cf"))
    code = main(["train", "dpo", "--data", str(synth_dir), "--model", "tiny-llama", "--item-tokens", "cf",
                 "--output-dir", str(tmp_path / "b")])  # fmt: skip
    assert code != 0


def test_dpo_runs_on_the_adapters_base_and_writes_nothing_when_that_base_cannot_load(
    synth_dir, items_adapter, tmp_path
):
    from mmrec_gen.train.item_rec_dpo import run_item_dpo

    summary = run_item_dpo(_dpo_cfg(synth_dir, items_adapter, tmp_path / "a", model="tiny-llama-smollm2-tokenizer",
                                    max_steps=1))  # fmt: skip
    assert summary["model"].startswith("tiny-llama+")  # the adapter's base, not --model
    moved = tmp_path / "moved"
    shutil.copytree(items_adapter, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "base_model": str(tmp_path / "no-such-model")}))
    out = tmp_path / "b"
    with pytest.raises((ValueError, OSError)):
        run_item_dpo(_dpo_cfg(synth_dir, moved, out, max_steps=1))
    assert not out.exists()  # refused before the output folder was touched


# ------------------------------------------------------------------------------------------------ curriculum
def test_hybrid_share_ramps_from_zero_to_one():
    from mmrec_gen.train.item_rec_trainer import hybrid_share

    assert [hybrid_share(0.5, s, 100) for s in (0, 25, 50, 75, 100)] == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert hybrid_share(0.0, 1, 100) == 1.0


def test_text_only_rows_get_zero_vectors_at_their_slots_only(tiny_model):
    import copy

    from mmrec_gen.models.item_rec import ItemRecForRanking, item_rec_config

    tables = {"cf": np.eye(2, 4, dtype=np.float32)}
    lm = copy.deepcopy(tiny_model.model)
    model = ItemRecForRanking.from_language_model(
        lm, item_rec_config(lm, item_ids=["a", "b"], tables=tables, item_token_id=9), tables=tables
    )
    ids = torch.tensor([[1, 9, 2, 9], [3, 9, 4, 5]])
    rows = torch.tensor([[0, 1], [1, -1]])
    hybrid = model.embed_prompts(ids, rows)
    mixed = model.embed_prompts(ids, rows, soft_mask=torch.tensor([True, False]))
    assert torch.equal(mixed[0], hybrid[0])  # a hybrid row is untouched
    assert torch.equal(mixed[1, 1], torch.zeros(hybrid.shape[-1]))  # the text-only row's slot holds no item
    assert torch.equal(mixed[1, [0, 2, 3]], hybrid[1, [0, 2, 3]])  # and its text is unchanged
    assert not torch.equal(hybrid[1, 1], torch.zeros(hybrid.shape[-1]))


def test_curriculum_run_trains_with_titles_and_ramps(synth_dir, tmp_path, monkeypatch):
    from mmrec_gen.models.item_rec import ItemRecForRanking

    seen = []
    embed = ItemRecForRanking.embed_prompts

    def record(self, input_ids, item_indices, soft_mask=None):
        if self.training:
            seen.append(None if soft_mask is None else soft_mask.tolist())
        return embed(self, input_ids, item_indices, soft_mask)

    monkeypatch.setattr(ItemRecForRanking, "embed_prompts", record)
    _sft(synth_dir, tmp_path / "c", template="rec_items_titles", curriculum=1.0, max_steps=4)
    shares = [np.mean(s) for s in seen]
    # Step 1 of 4 has a hybrid share of 1/4, step 4 of 4 of 1: the ramp reaches every prompt by the end.
    assert len(shares) == 4 and shares[-1] == 1.0 and shares[0] < 1.0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["recipe"]["template"] == "rec_items_titles"


def test_curriculum_is_validated(synth_dir, tmp_path):
    with pytest.raises(ValueError, match="--curriculum is a fraction"):
        _sft(synth_dir, tmp_path / "x", curriculum=1.5)
    with pytest.raises(ValueError, match="--curriculum ramps in item tokens"):
        _sft(synth_dir, tmp_path / "y", item_tokens="", head="labels", curriculum=0.5)
