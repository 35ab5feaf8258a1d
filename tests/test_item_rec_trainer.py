"""The item-token recommender trained through the Trainer (train/item_rec_trainer.py), on a tiny Llama and synthetic
data: TrainingArguments options work as documented (report_to, evaluation on the valid split with
load_best_model_at_end), a diverging run stops naming its step, and `accelerate launch` with 2 CPU processes trains
the same loss as one process."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from training_helpers import adapter_state

pytestmark = pytest.mark.minilm  # the text source uses all-MiniLM-L6-v2 from its wheel


def _cfg(synth_dir, out, **overrides):
    from mmrec_gen.train.config import SFTTrainConfig

    values = dict(
        data=str(synth_dir), output_dir=str(out), model="tiny-llama", dtype="float32", item_tokens="cf,text",
        head="items", max_history=8, windows_per_user=3, max_steps=4, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=1e-2, save_steps=2, logging_steps=1, progress=False,
        lora_dropout=0.0, report_to="none",
    )  # fmt: skip
    values.update(overrides)
    return SFTTrainConfig(**values)


def test_report_to_tensorboard_writes_event_files(synth_dir, tmp_path):
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    run_item_sft(_cfg(synth_dir, tmp_path / "tb", report_to="tensorboard", max_steps=2))
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars


def test_evaluation_on_valid_keeps_the_best_checkpoint_when_it_is_not_the_last(synth_dir, tmp_path):
    """After step 4's update a callback zeroes the item head (every score ties: the step-4 evaluation that follows is
    the worst possible),
    so the best checkpoint is step 2's; load_best_model_at_end must leave step 2's weights in the saved adapter."""
    from transformers import TrainerCallback

    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out = tmp_path / "best"
    kept = tmp_path / "checkpoint-2-weights.safetensors"

    class BreakAtStep4(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                shutil.copy(out / "checkpoint-2" / "adapter_model.safetensors", kept)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:  # on_step_end runs after the update and before that step's evaluation
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "item_tokens" in name and name.endswith(("head.weight", "head.bias")):
                            p.zero_()

    summary = run_item_sft(
        _cfg(synth_dir, out, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
             metric_for_best_model="ndcg@10"),
        callbacks=[BreakAtStep4()],
    )  # fmt: skip
    evals = summary["evaluations"]
    assert [e["step"] for e in evals] == [2, 4] and summary["eval_users"] == 40
    assert evals[0]["eval_ndcg@10"] > evals[1]["eval_ndcg@10"] and evals[1]["eval_hr@1"] == 0.0
    assert summary["best_step"] == 2 and summary["best_metric"] == pytest.approx(evals[0]["eval_ndcg@10"])
    from safetensors.torch import load_file

    best = {k.replace("base_model.model.", "", 1): v for k, v in load_file(str(kept)).items()}
    saved = adapter_state(out)
    assert saved.keys() == best.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], best[key], rtol=0, atol=0)
    assert saved["item_tokens.head.weight"].abs().sum() > 0  # not the zeroed step-4 head


def test_ranking_metrics_count_ties_against_the_right_candidate():
    from transformers import EvalPrediction

    from mmrec_gen.train.item_rec_trainer import ranking_metrics

    scores = [[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
    metrics = ranking_metrics(EvalPrediction(predictions=scores, label_ids=[0, 0, 1]))
    # ranks 1, 2 (a tie counts against it), 1 -> HR@1 2/3; NDCG@10 (1 + 1/log2(3) + 1) / 3
    assert metrics["hr@1"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx((2 + 1 / math.log2(3)) / 3)


def test_a_diverging_run_stops_naming_the_step_and_saves_no_adapter(synth_dir, tmp_path):
    from mmrec_gen.train.item_rec_trainer import run_item_sft
    from mmrec_gen.train.trainers import NonFiniteLossError

    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"training diverged at step [0-9]+: the loss is (nan|inf)"):
        run_item_sft(_cfg(synth_dir, out, learning_rate=1e30, max_grad_norm=0.0, max_steps=3))
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_summary.json").exists()


def test_accelerate_launch_with_two_cpu_processes_matches_one_process_at_step_1(synth_dir, tmp_path):
    """4 windows of equal length, one step: 2 processes x 2 rows and 1 process x 4 rows see the same rows, so the
    logged step-1 loss (averaged over processes) is the same."""
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    common = dict(max_users=4, windows_per_user=1, max_history=4, max_steps=1, learning_rate=1e-3)
    single = run_item_sft(_cfg(synth_dir, tmp_path / "one", per_device_train_batch_size=4, **common))
    assert single["examples"] == 4
    cmd = [
        # --multi_gpu picks accelerate's torchrun launcher; the trainer sets use_cpu on a machine without a GPU, so
        # the processes form a gloo (MULTI_CPU) group. (`--cpu` alone starts one process unless MPI is configured.)
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmrec_gen", "train", "sft",
        "--data", str(synth_dir), "--output-dir", str(tmp_path / "two"), "--model", "tiny-llama", "--dtype",
        "float32", "--item-tokens", "cf,text", "--head", "items", "--max-users", "4", "--windows-per-user", "1",
        "--max-history", "4", "--max-steps", "1", "--per-device-train-batch-size", "2",
        "--gradient-accumulation-steps", "1", "--learning-rate", "1e-3", "--lora-dropout", "0", "--logging-steps",
        "1", "--save-steps", "100", "--progress", "false", "--report-to", "none",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **__import__("os").environ}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["windows_per_step"] == 4 and two["steps"] == 1
    assert two["first_loss"] == pytest.approx(single["first_loss"], abs=1e-4)


class _Payload:
    """Unpickling this runs code (writes a file): what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_file_is_refused_on_resume_and_runs_no_code(synth_dir, tmp_path):
    import pickle

    from training_helpers import Killed, kill_after_save

    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_item_sft(_cfg(synth_dir, out), callbacks=[kill_after_save(2)])
    marker = tmp_path / "code-ran"
    for name in ("rng_state.pth", "optimizer.pt"):
        (out / "checkpoint-2" / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(pickle.UnpicklingError):
        run_item_sft(_cfg(synth_dir, out))
    assert not marker.exists()  # the Trainer loads checkpoints with weights_only=True: nothing was executed
