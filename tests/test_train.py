"""Fine-tuning on tiny models: examples from the train split only, R11 prompts, LoRA-only updates, the loss
falling, resume after a crash (R9), adapter checks (R12), merge equivalence, S-DPO and `rank --adapter`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.registry import load_model
from mmrec_gen.train.config import DPOTrainConfig, SFTTrainConfig
from mmrec_gen.train.examples import build_examples


@pytest.fixture(scope="module")
def split(synth_dir):
    ds = load_dataset(synth_dir)
    return ds, split_dataset(ds)


def sft_config(data, out, **overrides) -> SFTTrainConfig:
    values = dict(
        model="tiny-llama",
        max_examples=8,
        max_steps=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        save_steps=2,
        logging_steps=1,
        progress=False,
    )
    values.update(overrides)
    return SFTTrainConfig(data=str(data), output_dir=str(out), **values)


def lora_state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------------ examples
def test_examples_use_train_items_only_and_are_seeded(split):
    ds, sr = split
    examples = build_examples(ds, sr, seed=1, num_candidates=10, windows_per_user=2, min_history=3)
    assert len(examples) == sum(min(2, max(0, len(u.train) - 3)) for u in sr.users.values())
    for ex in examples:
        user = sr.users[ex.user_id]
        assert ex.target == user.train[ex.position].item_id
        assert ex.history == user.train[: ex.position] and len(ex.history) >= 3
        assert ex.target not in (user.valid.item_id, user.test.item_id)
        assert len(set(ex.candidates)) == 10 and ex.target in ex.candidates
        negatives = set(ex.candidates) - {ex.target}
        assert not negatives & user.all_item_ids  # never an item the user interacted with, in any split
    assert examples == build_examples(ds, sr, seed=1, num_candidates=10, windows_per_user=2, min_history=3)
    assert examples != build_examples(ds, sr, seed=2, num_candidates=10, windows_per_user=2, min_history=3)
    # R10: a user's examples do not depend on which other users are present.
    first = build_examples(ds, sr, seed=1, num_candidates=10, windows_per_user=2, min_history=3, max_users=5)
    assert first == [e for e in examples if e.user_id in {e.user_id for e in first}]
    # Answers sit at every label position, not at one.
    assert len({ex.target_index for ex in examples}) > 5


def test_training_prompt_is_the_inference_prompt_and_trl_masks_only_the_answer(split, tiny_model, tmp_path):
    """R11: the fast path trains on exactly the ids score mode reads; TRL's tokenised row is that prompt followed
    by the answer, with the loss mask on the answer only."""
    from trl import SFTConfig, SFTTrainer

    from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder
    from mmrec_gen.train.rows import RowStats, fast_sft_rows, render_examples, trl_sft_rows

    ds, sr = split
    ex = build_examples(ds, sr, seed=0, num_candidates=8, max_examples=3)
    tok = tiny_model.tokenizer
    builder = PromptBuilder(tok, "rank_listwise", max_model_len=2048, max_new_tokens=1, max_history=20)
    rendered = render_examples(builder, ds, ex, RowStats())
    inference = builder.rank(
        ex[0].user_id, [HistoryEntry(ds.items[i.item_id], i.rating) for i in ex[0].history],
        [ds.items[c] for c in ex[0].candidates],
    )  # fmt: skip
    fast = fast_sft_rows(tok, rendered)
    assert fast[0]["input_ids"] == inference.input_ids
    assert tok.convert_ids_to_tokens([fast[0]["target_id"]]) == [inference.labels[ex[0].target_index]]

    rows = trl_sft_rows(ds, rendered, target="score", explanations=False, seed=0)
    from datasets import Dataset

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=4096)
    trainer = SFTTrainer(
        model=tiny_model.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    row = trainer.train_dataset[0]
    n = len(inference.input_ids)
    assert row["input_ids"][:n] == inference.input_ids
    assert all(label == -100 for label in row["labels"][:n])  # no loss on the prompt
    answer = [t for t in row["labels"] if t != -100]
    assert tok.decode(answer).startswith(inference.labels[ex[0].target_index])


def test_trl_rows_count_prompt_tokens_and_overlong_rows_are_dropped_and_counted(split, tiny_model):
    from mmrec_gen.prompting.render import PromptBuilder
    from mmrec_gen.train.rows import RowStats, fast_sft_rows, render_examples, trl_sft_rows
    from mmrec_gen.train.trainers import _drop_overlong, prompt_tokens

    ds, sr = split
    tok = tiny_model.tokenizer
    builder = PromptBuilder(tok, "rank_listwise", max_model_len=2048, max_new_tokens=1, max_history=20)
    rendered = render_examples(
        builder, ds, build_examples(ds, sr, seed=0, num_candidates=8, max_examples=4), RowStats()
    )
    rows = trl_sft_rows(ds, rendered, target="score", explanations=False, seed=0)
    fast = fast_sft_rows(tok, rendered)
    assert prompt_tokens(rows, tok) == prompt_tokens(fast, tok) == sum(len(r.prompt.input_ids) for r in rendered)
    shortest = min(len(r.prompt.input_ids) for r in rendered)
    stats = RowStats()
    kept = _drop_overlong(rows, tok, shortest + 5, stats, ("completion",))
    assert len(kept) + stats.dropped["completion_truncated"] == 4
    assert stats.dropped["completion_truncated"] == sum(len(r.prompt.input_ids) + 5 > shortest + 5 for r in rendered)


def test_explanations_cite_history_items_only(split):
    from mmrec_gen.train.rows import explanation

    ds, sr = split
    for ex in build_examples(ds, sr, seed=0, num_candidates=8, max_examples=10):
        text = explanation(ds, ex)
        history_titles = {ds.items[h.item_id].title for h in ex.history}
        # "Second Letters" is inside "Second Letters III": match the longest titles first and mask them.
        found, rest = set(), text
        for title in sorted({item.title for item in ds.items.values()}, key=len, reverse=True):
            if title in rest:
                found.add(title)
                rest = rest.replace(title, "\0")
        cited = found - {ds.items[ex.target].title}
        assert cited and cited <= history_titles, text


# ------------------------------------------------------------------------------------------------ SFT
@pytest.mark.parametrize("fast", [True, False])
def test_a_step_changes_lora_weights_and_not_the_base(synth_dir, tmp_path, fast):
    from mmrec_gen.train.trainers import run_sft

    loaded = load_model("tiny-llama")
    base_before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    summary = run_sft(sft_config(synth_dir, tmp_path, fast=fast, max_steps=1), loaded=loaded)
    assert summary["path"] == ("fast" if fast else "trl") and summary["steps"] == 1
    lora = lora_state(tmp_path)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # B starts at zero
    base_after = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in loaded.model.state_dict().items()
        if "lora_" not in k
    }
    assert set(base_before) == set(base_after)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_lora_on_the_last_layers_only(synth_dir, tmp_path):
    from mmrec_gen.train.trainers import run_sft

    run_sft(sft_config(synth_dir, tmp_path, max_steps=1, lora_last_layers=1), loaded=load_model("tiny-llama"))
    keys = lora_state(tmp_path).keys()
    assert keys and all(".layers.1." in k for k in keys)  # tiny-llama has layers 0 and 1
    with pytest.raises(ValueError, match="--lora-last-layers must be between 1 and 2"):
        run_sft(sft_config(synth_dir, tmp_path / "x", lora_last_layers=3), loaded=load_model("tiny-llama"))


def test_loss_falls_on_a_learnable_toy_task(synth_dir, tmp_path):
    """Eight examples seen again and again: the answer's cross-entropy must fall well below its start.

    The tiny model's random head (std 0.02) after a norm cannot make a peaked distribution, so here LoRA also
    adapts the head."""
    from mmrec_gen.train.trainers import run_sft

    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    cfg = sft_config(
        synth_dir, tmp_path, max_steps=24, per_device_train_batch_size=4, learning_rate=5e-3, lora_r=8,
        lora_alpha=16, lora_target_modules=linear,
    )  # fmt: skip
    summary = run_sft(cfg, loaded=load_model("tiny-llama"))
    assert summary["last_loss"] < 0.5 * summary["first_loss"]


class _CrashAt:
    """Simulates a kill -9 at a given step (after the checkpoint before it was written)."""

    def __init__(self, step):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == outer.step:
                    raise KeyboardInterrupt("simulated kill")

        self.step = step
        self.callback = Callback()


def test_resume_after_a_crash_equals_an_uninterrupted_run(synth_dir, tmp_path):
    from mmrec_gen.train.trainers import run_sft

    cfg = dict(max_steps=6, save_steps=2, lora_dropout=0.1)  # dropout: the RNG state must be restored too
    run_sft(sft_config(synth_dir, tmp_path / "whole", **cfg), loaded=load_model("tiny-llama"))
    with pytest.raises(KeyboardInterrupt):
        run_sft(
            sft_config(synth_dir, tmp_path / "killed", **cfg),
            loaded=load_model("tiny-llama"),
            callbacks=[_CrashAt(5).callback],
        )
    assert (tmp_path / "killed" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    # A changed config refuses to resume, naming what changed.
    with pytest.raises(ValueError, match="learning_rate"):
        run_sft(sft_config(synth_dir, tmp_path / "killed", learning_rate=1e-3, **cfg), loaded=load_model("tiny-llama"))
    summary = run_sft(sft_config(synth_dir, tmp_path / "killed", **cfg), loaded=load_model("tiny-llama"))
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6
    whole, resumed = lora_state(tmp_path / "whole"), lora_state(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ adapters
@pytest.fixture(scope="module")
def trained_adapter(synth_dir, tmp_path_factory):
    from mmrec_gen.train.trainers import run_sft

    out = tmp_path_factory.mktemp("adapter")
    run_sft(sft_config(synth_dir, out, max_steps=3), loaded=load_model("tiny-llama"))
    return out


def test_merged_and_unmerged_logits_agree(trained_adapter):
    from mmrec_gen.models.adapters import with_adapter

    ids = torch.randint(5, 200, (2, 40))
    base = load_model("tiny-llama").model(ids).logits
    unmerged = with_adapter(load_model("tiny-llama"), trained_adapter, merge=False).model(ids).logits
    merged = with_adapter(load_model("tiny-llama"), trained_adapter, merge=True).model(ids).logits
    assert not torch.allclose(base, unmerged, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)


def test_adapter_for_another_base_model_is_refused(trained_adapter):
    from mmrec_gen.models.adapters import with_adapter
    from mmrec_gen.models.tiny import build_tiny_llama

    other = load_model("tiny-llama")
    other.model = build_tiny_llama(other.tokenizer, seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match="trained on base model 'tiny-llama'"):
        with_adapter(other, trained_adapter)


def test_adapter_with_a_missing_key_is_refused(trained_adapter, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from mmrec_gen.models.adapters import with_adapter

    broken = tmp_path / "broken"
    shutil.copytree(trained_adapter, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = lora_state(broken)
    weights.pop(sorted(weights)[0])
    save_file(weights, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 LoRA weights"):
        with_adapter(load_model("tiny-llama"), broken)


def test_adapter_rank_above_the_serving_limit_and_non_adapter_folder_are_refused(trained_adapter, tmp_path):
    from mmrec_gen.models.adapters import with_adapter

    with pytest.raises(ValueError, match="rank 4 is above the serving limit 2"):
        with_adapter(load_model("tiny-llama"), trained_adapter, max_lora_rank=2)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        with_adapter(load_model("tiny-llama"), tmp_path)


def test_rank_with_adapter_and_merge_command(trained_adapter, synth_dir, tmp_path):
    from mmrec_gen.cli import main
    from mmrec_gen.data.results import read_results

    common = ["--data", str(synth_dir), "--model", "tiny-llama", "--max-users", "6", "--cache-dir", str(tmp_path)]
    assert main(["rank", *common, "--out", str(tmp_path / "base.jsonl"), "--no-progress"]) == 0
    assert main(["rank", *common, "--adapter", str(trained_adapter), "--out", str(tmp_path / "a.jsonl")]) == 0
    base, tuned = read_results(tmp_path / "base.jsonl"), read_results(tmp_path / "a.jsonl")
    assert tuned[0]["meta"]["model"] == f"tiny-llama+{trained_adapter.name}"
    assert [r["candidates"] for r in base] == [r["candidates"] for r in tuned]
    assert [r["scores"] for r in base] != [r["scores"] for r in tuned]

    assert main(["train", "merge", "--adapter", str(trained_adapter), "--out", str(tmp_path / "merged")]) == 0
    merged_model = tmp_path / "merged"
    # A saved model folder loads in bf16 under --dtype auto on a CPU with native bf16; tiny-llama ran in fp32.
    fp32 = ["--dtype", "float32"]
    assert (
        main(
            ["rank", *common[:2], "--model", str(merged_model), *common[4:], *fp32, "--out", str(tmp_path / "m.jsonl")]
        )
        == 0
    )
    merged = read_results(tmp_path / "m.jsonl")
    assert [r["ranking"] for r in merged] == [r["ranking"] for r in tuned]
    for a, b in zip(merged, tuned, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


# ------------------------------------------------------------------------------------------------ DPO
def test_sdpo_loss_values():
    from mmrec_gen.train.fast import sdpo_loss

    zeros = torch.zeros(3)
    # Policy == reference: every margin is 0, the loss is log(1 + k).
    assert sdpo_loss(zeros, torch.zeros(3, 4), zeros, torch.zeros(3, 4), 0.1).item() == pytest.approx(
        torch.log(torch.tensor(5.0)).item()
    )
    # One negative: standard DPO, -log sigmoid(beta * ((pc - rc) - (pr - rr))).
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([[-3.0]]), torch.tensor([-2.0]), torch.tensor([[-2.5]])
    expected = -torch.nn.functional.logsigmoid(torch.tensor(0.5 * ((-1 + 2) - (-3 + 2.5))))
    assert sdpo_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(expected.item())


def test_dpo_from_an_sft_adapter_prefers_the_chosen_label(trained_adapter, synth_dir, tmp_path):
    """Fast S-DPO starts at loss log(1 + k) (policy == the SFT reference) and the loss falls."""
    from mmrec_gen.train.trainers import run_dpo

    cfg = DPOTrainConfig(
        data=str(synth_dir), output_dir=str(tmp_path), model="tiny-llama", adapter=str(trained_adapter),
        max_examples=8, max_steps=12, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        learning_rate=2e-2, num_negatives=3, beta=0.5, warmup_steps=0, lr_scheduler_type="constant",
        logging_steps=1, save_steps=50, progress=False, lora_dropout=0.0,
    )  # fmt: skip
    summary = run_dpo(cfg, loaded=load_model("tiny-llama"))
    assert summary["path"] == "fast"
    assert summary["first_loss"] == pytest.approx(float(torch.log(torch.tensor(4.0))), abs=1e-3)
    assert summary["last_loss"] < 0.95 * summary["first_loss"]  # the chosen label gained on the rejected ones
    assert json.loads((tmp_path / "mmrec_adapter.json").read_text())["kind"] == "dpo"


def test_trl_dpo_path_trains_the_adapter(synth_dir, tmp_path):
    from mmrec_gen.train.trainers import run_dpo

    cfg = DPOTrainConfig(
        data=str(synth_dir), output_dir=str(tmp_path), model="tiny-llama", fast=False, max_examples=4,
        max_steps=2, gradient_accumulation_steps=1, num_negatives=2, lora_r=4, lora_alpha=8, progress=False,
    )  # fmt: skip
    summary = run_dpo(cfg, loaded=load_model("tiny-llama"))
    assert summary["path"] == "trl" and summary["rows"] == 8 and summary["steps"] == 2
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora_state(tmp_path).items())


# ------------------------------------------------------------------------------------------------ config / CLI
def test_configs_reject_bad_values(tmp_path):
    with pytest.raises(ValueError, match="--target must be one of"):
        SFTTrainConfig(data="d", output_dir="o", target="list")
    with pytest.raises(ValueError, match="--num-negatives must be between 1 and"):
        DPOTrainConfig(data="d", output_dir="o", num_negatives=20)
    from mmrec_gen.train.trainers import load_base

    with pytest.raises(ValueError, match="needs the bitsandbytes package and a CUDA GPU"):
        load_base(SFTTrainConfig(data="d", output_dir="o", quantization="4bit"))


def test_cli_train_errors_are_clear(synth_dir, tmp_path, capsys):
    from mmrec_gen.cli import main

    assert main(["train", "fit"]) == 1
    assert "unknown train action 'fit'" in capsys.readouterr().err
    out = str(tmp_path / "x")
    assert main(["train", "dpo", "--data", str(synth_dir), "--output-dir", out, "--model", "tiny-llama",
                 "--target", "ranking"]) == 1  # fmt: skip
    assert "use --target score" in capsys.readouterr().err
    assert main(["rank", "--data", str(synth_dir), "--model", "tiny-llama", "--adapter", out, "--out",
                 str(tmp_path / "r.jsonl"), "--cache-dir", str(tmp_path)]) == 1  # fmt: skip
    assert "no adapter_config.json" in capsys.readouterr().err
