"""scripts/compare_modalities.py end to end on synthetic data with a tiny model and a few steps: both arms train and
rank the same candidate file through the package's own functions, and the last line is the JSON object of both
arms' `mmrec evaluate` metrics and the paired McNemar test on per-user HR@1."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.minilm  # the text source uses all-MiniLM-L6-v2 from its wheel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_modalities.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_modalities", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_compare_modalities_runs_both_arms_on_one_candidate_file(synth_dir, tiny_model, tmp_path, capsys):
    from mmrec_gen.data.results import read_results
    from mmrec_gen.eval.paired import paired_hr1

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: tiny-llama\nhead: items\ntemplate: rec_items\nmax_history: 6\nwindows_per_user: 2\n"
        "learning_rate: 0.01\nmax_steps: 3\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 1\n"
        "warmup_steps: 0\nlora_r: 2\nsave_steps: 100\nlogging_steps: 1\n"
    )
    module = _script()
    cfg = module.make_parser().parse_config(
        [
            "--data", str(synth_dir), "--images", str(Path(synth_dir) / "images"), "--recipe", str(recipe),
            "--output-dir", str(tmp_path / "cmp"), "--max-users", "12", "--num-candidates", "5",
            "--cache-dir", str(tmp_path / "cand"), "--align-steps", "2", "--json",
        ]
    )  # fmt: skip
    result = module.main(cfg, loaded=tiny_model)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    assert set(result) == {"text", "text_image", "paired"}
    text, image, paired = result["text"], result["text_image"], result["paired"]
    assert text["sources"] == ["text"] and image["sources"] == ["text", "image"]
    assert text["n_users"] == image["n_users"] == paired["n_users"] == 12
    assert text["candidates_hash"] == image["candidates_hash"]  # the same candidate file
    assert text["train_steps"] == image["train_steps"] == 3
    for arm in (text, image):
        assert {"hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "valid_ratio"} <= set(arm)
        assert arm["valid_ratio"] == 1.0
    # The paired numbers are those of eval/paired.py on the two ranking files.
    expected = paired_hr1(
        read_results(tmp_path / "cmp" / "text.jsonl"), read_results(tmp_path / "cmp" / "text_image.jsonl")
    )
    assert paired["hr1_text"] == expected["hr1_a"] == text["hr@1"]
    assert paired["hr1_text_image"] == expected["hr1_b"] == image["hr@1"]
    assert paired["mcnemar_p"] == expected["mcnemar_p"] and 0.0 <= paired["mcnemar_p"] <= 1.0
    # The image arm started from the aligned projector; the text arm has no image source.
    assert (tmp_path / "cmp" / "align" / "image_projector.safetensors").is_file()
    config = json.loads((tmp_path / "cmp" / "text_image" / "config.json").read_text())
    assert sorted(config["source_dims"]) == ["image", "text"] and config["model_type"] == "mmrec_item_rec"
    assert list(json.loads((tmp_path / "cmp" / "text" / "config.json").read_text())["source_dims"]) == ["text"]
