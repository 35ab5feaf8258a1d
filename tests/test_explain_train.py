"""`mmrec train sft --target explanation`: grounded targets from the train split, the inference prompt, one step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrec_gen.data.loaders import load_dataset
from mmrec_gen.data.split import split_dataset
from mmrec_gen.models.registry import load_model
from mmrec_gen.prompting.evidence import select_evidence
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder
from mmrec_gen.train.config import SFTTrainConfig
from mmrec_gen.train.examples import build_examples
from mmrec_gen.train.rows import RowStats, render_examples, trl_sft_rows


def _config(data, out, **overrides) -> SFTTrainConfig:
    values = dict(
        model="tiny-llama", target="explanation", max_examples=6, max_steps=1, gradient_accumulation_steps=1,
        learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, warmup_steps=0, save_steps=5, logging_steps=1,
        progress=False,
    )  # fmt: skip
    values.update(overrides)
    return SFTTrainConfig(data=str(data), output_dir=str(out), **values)


def test_targets_cite_the_most_related_train_history_item_under_the_inference_prompt(synth_dir, tokenizer):
    ds = load_dataset(synth_dir)
    sr = split_dataset(ds)
    examples = build_examples(ds, sr, seed=0, num_candidates=8, max_examples=12)
    builder = PromptBuilder(tokenizer, "explain", max_model_len=2048, max_new_tokens=64)
    rendered = render_examples(builder, ds, examples, RowStats())
    rows = trl_sft_rows(ds, rendered, target="explanation", explanations=False, seed=0)
    assert len(rows) == len(examples) == 12
    for ex, row in zip(examples, rows, strict=True):
        user = sr.users[ex.user_id]
        assert ex.target not in (user.valid.item_id, user.test.item_id)  # answers come from the train split
        history = [HistoryEntry(ds.items[h.item_id], h.rating) for h in ex.history]
        answer = ds.items[ex.target]
        evidence = select_evidence([h.item for h in history], answer)
        # The training prompt is the prompt `mmrec explain` builds for this history and item (R11).
        assert row["prompt"] == builder.explain(ex.user_id, history, answer, evidence).messages
        text = row["completion"][0]["content"]
        best = evidence[0]
        assert text.startswith(f"Because you enjoyed {best.item.title},")
        assert best.item.item_id in {h.item_id for h in user.train[: ex.position]}
        if best.shared:
            assert " and ".join(best.shared) in text and answer.title in text


def test_config_defaults_to_the_explain_template_and_refuses_mixed_targets(synth_dir, tmp_path):
    cfg = _config(synth_dir, tmp_path)
    assert cfg.template == "explain" and not cfg.uses_fast_path
    with pytest.raises(ValueError, match="--target explanation trains explanations alone"):
        _config(synth_dir, tmp_path, explanations=True)


def test_a_step_of_explanation_sft_trains_the_adapter(synth_dir, tmp_path):
    from mmrec_gen.train.trainers import run_sft

    summary = run_sft(_config(synth_dir, tmp_path), loaded=load_model("tiny-llama"))
    assert summary["path"] == "trl" and summary["steps"] == 1 and summary["rows"] == 6
    from safetensors.torch import load_file

    lora = load_file(str(Path(tmp_path) / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # B starts at zero: it was trained
    meta = json.loads(Path(tmp_path, "mmrec_adapter.json").read_text())
    assert meta["template"] == "explain" and meta["target"] == "explanation"
    with pytest.raises(ValueError, match="needs a explain one|needs a explain"):
        run_sft(_config(synth_dir, tmp_path / "r", template="rank_listwise"), loaded=load_model("tiny-llama"))
