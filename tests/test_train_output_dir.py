"""`--output-dir` holds one run: a finished run or another tool's files are never trained over without
--overwrite, and rerunning a finished run leaves it exactly as it was."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.models.registry import load_model
from mmrec_gen.train.config import SFTTrainConfig
from mmrec_gen.train.trainers import RunFinished, run_sft


def _cfg(data, out, **overrides) -> SFTTrainConfig:
    values = dict(model="tiny-llama", max_steps=2, save_steps=1, max_users=8, num_candidates=5, min_history=3,
                  max_model_len=512, progress=False, report_to="none", logging_steps=1)  # fmt: skip
    values.update(overrides)
    return SFTTrainConfig(data=str(data), output_dir=str(out), **values)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(synth_dir, tmp_path):
    """A finished run (each test trains its own: they change or move it)."""
    out = tmp_path / "run"
    run_sft(_cfg(synth_dir, out), loaded=load_model("tiny-llama"))
    return out


@pytest.mark.parametrize("clean_checkpoints", [False, True])
def test_rerun_of_a_finished_run_says_so_and_leaves_it(synth_dir, finished, tmp_path, clean_checkpoints):
    import shutil

    out = finished
    if clean_checkpoints:
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    before = _files(out)
    with pytest.raises(RunFinished, match="finished run with this config"):
        run_sft(_cfg(synth_dir, out), loaded=load_model("tiny-llama"))
    assert _files(out) == before


def test_a_moved_finished_run_is_still_that_run(synth_dir, finished, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    finished.rename(moved)
    before = _files(moved)
    with pytest.raises(RunFinished, match="finished run with this config"):
        run_sft(_cfg(synth_dir, moved), loaded=load_model("tiny-llama"))
    assert _files(moved) == before
    # A config written by an earlier version records its folder: still the same run.
    saved = json.loads((moved / "mmrec_train_config.json").read_text())
    (moved / "mmrec_train_config.json").write_text(json.dumps({**saved, "output_dir": str(finished)}))
    with pytest.raises(RunFinished):
        run_sft(_cfg(synth_dir, moved), loaded=load_model("tiny-llama"))


def test_a_finished_run_with_another_config_is_refused_unless_overwrite(synth_dir, finished, tmp_path):
    import shutil

    out = finished
    for checkpoint in out.glob("checkpoint-*"):  # the old check looked only at checkpoints
        shutil.rmtree(checkpoint)
    before = _files(out)
    with pytest.raises(ValueError, match=r"finished run with another config \(changed: learning_rate\).*--overwrite"):
        run_sft(_cfg(synth_dir, out, learning_rate=1e-3), loaded=load_model("tiny-llama"))
    assert _files(out) == before
    summary = run_sft(_cfg(synth_dir, out, learning_rate=1e-3, overwrite=True), loaded=load_model("tiny-llama"))
    assert summary["steps"] == 2 and summary["resumed_from"] is None
    assert json.loads((out / "mmrec_train_config.json").read_text())["learning_rate"] == 1e-3


def test_a_folder_of_foreign_files_is_refused_unless_overwrite(synth_dir, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (out / "notes.txt").write_text("do not lose")
    with pytest.raises(ValueError, match="holds files that no mmrec training run wrote.*--overwrite"):
        run_sft(_cfg(synth_dir, out), loaded=load_model("tiny-llama"))
    assert _files(out) == {"adapter_config.json": b'{"peft_type": "LORA"}', "notes.txt": b"do not lose"}
    run_sft(_cfg(synth_dir, out, overwrite=True), loaded=load_model("tiny-llama"))
    assert (out / "train_summary.json").is_file() and (out / "notes.txt").read_text() == "do not lose"


def test_cli_rerun_of_a_finished_run_exits_0_and_names_it(synth_dir, finished, tmp_path, capsys):
    from mmrec_gen.cli import main

    out = finished
    before = _files(out)
    argv = ["train", "sft", "--data", str(synth_dir), "--output-dir", str(out), "--model", "tiny-llama",
            "--max-steps", "2", "--save-steps", "1", "--max-users", "8", "--num-candidates", "5", "--min-history",
            "3", "--max-model-len", "512", "--no-progress", "--report-to", "none"]  # fmt: skip
    assert main(argv) == 0
    assert f"{out}: a finished run with this config; left as it is" in capsys.readouterr().out
    assert _files(out) == before
