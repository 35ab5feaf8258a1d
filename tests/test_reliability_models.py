"""Models and adapters that cannot be used fail at once with one line naming them and the fix (issue 11 cases 6, 7).

Case 6: an HF id on a machine without the hub (HF_HUB_OFFLINE, or an endpoint that refuses connections) is one
clear error within seconds, not a minute of retries and a traceback; a cached copy still loads without the hub.
Case 7: an adapter whose config has no peft_type, is not JSON, or whose weights are not safetensors is refused
when the options are parsed, before data or a model loads, naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmrec_gen.cli import main

# --------------------------------------------------------------------------------------------- case 6: offline hub


def _mmrec(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "mmrec_gen", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    return res, time.perf_counter() - start


def _hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    # An empty cache, and an endpoint that refuses every connection at once (port 9 is "discard", never served).
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", MMREC_HOME=str(tmp_path / "home"))
    env.update(extra)
    return env


def _rank_args(synth_dir, tmp_path, model: str) -> list[str]:
    return ["rank", "--data", str(synth_dir), "--model", model, "--max-users", "2", "--num-candidates", "5",
            "--out", str(tmp_path / "out.jsonl"), "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_hub_model_offline_is_one_clear_error_at_once(synth_dir, tmp_path, how):
    extra = {"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {}
    args = _rank_args(synth_dir, tmp_path, "someowner/somemodel")
    res, seconds = _mmrec(args, _hub_env(tmp_path, **extra), tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Retrying" not in res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("mmrec rank: error:")]
    assert len(error) == 1 and "'someowner/somemodel'" in error[0]
    assert "smollm2-135m-instruct" in error[0] and "local model folder" in error[0]
    assert ("HF_HUB_OFFLINE is set" if extra else "the hub cannot be reached") in error[0]
    # The deterministic checks are above (no retry, no traceback); the bound leaves room for a loaded machine.
    assert seconds < 45, f"took {seconds:.1f} s (imports included); retries take about a minute"


def _fake_hub_cache(hf_home: Path, repo_id: str) -> None:
    """The HF cache layout (refs/main -> snapshots/<commit>/) holding the tiny Llama, as a download leaves it."""
    from mmrec_gen.models.registry import load_model

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    loaded = load_model("tiny-llama")
    loaded.model.save_pretrained(snapshot)
    loaded.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_cached_hub_model_loads_without_the_hub(tmp_path):
    _fake_hub_cache(tmp_path / "hf", "someowner/tiny")
    code = (  # time the load only: imports alone can take half a minute on a loaded machine
        "import time, torch, transformers\n"
        "from mmrec_gen.models.registry import load_model\n"
        "t = time.perf_counter()\n"
        "m = load_model('someowner/tiny')\n"
        "print(m.name, round(time.perf_counter() - t, 1))\n"
    )
    for extra in ({}, {"HF_HUB_OFFLINE": "1"}):
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=_hub_env(tmp_path, **extra), timeout=300
        )
        assert res.returncode == 0, res.stderr[-2000:]
        name, seconds = res.stdout.split()
        assert "Retrying" not in res.stderr  # from_pretrained's backoff (about 23 s per file) never starts
        assert name == "someowner/tiny" and float(seconds) < 60
        if not extra:
            assert "the hub is unreachable" in res.stderr and "loading the cached copy" in res.stderr


# --------------------------------------------------------------------------------------------- case 7: bad adapters


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    """A real PEFT LoRA adapter of the tiny Llama, as save_pretrained writes it."""
    from peft import LoraConfig, get_peft_model

    from mmrec_gen.models.registry import load_model

    out = tmp_path_factory.mktemp("adapter")
    model = load_model("tiny-llama").model
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


def _damaged(good: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    bad = tmp_path / how
    shutil.copytree(good, bad)
    config = bad / "adapter_config.json"
    if how == "no-peft-type":
        data = json.loads(config.read_text())
        del data["peft_type"]
        config.write_text(json.dumps(data))
        return bad, config
    if how == "not-json":
        config.write_text("")
        return bad, config
    if how == "unknown-peft-type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "NOSUCH"}))
        return bad, config
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(os.urandom(4096))
    return bad, weights


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad adapter was reported")

    monkeypatch.setattr("mmrec_gen.models.registry.load_model", refuse)


EXPECTED = {
    "no-peft-type": "has no 'peft_type'",
    "unknown-peft-type": "has peft_type 'NOSUCH', which PEFT does not know",
    "not-json": "not valid JSON (Expecting value at line 1 column 1)",
    "random-safetensors": "not a readable safetensors file",
}


@pytest.mark.parametrize("how", list(EXPECTED))
def test_damaged_adapter_is_refused_before_any_model_loads(good_adapter, synth_dir, tmp_path, capsys, no_model, how):
    bad, culprit = _damaged(good_adapter, tmp_path, how)
    argv = _rank_args(synth_dir, tmp_path, "tiny-llama") + ["--adapter", str(bad), "--cache-dir", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2  # an option error, as for any other bad option value
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"mmrec rank: error: {culprit}: ") and EXPECTED[how] in err
    assert "Fix:" in err or "retrain it" in err
    assert not (tmp_path / "c").exists()  # no candidate file built: nothing ran


def test_damaged_adapter_is_refused_by_with_adapter_too(good_adapter, tmp_path):
    """The same checks guard the library call (mmrec train merge, scripts), naming the file."""
    from mmrec_gen.models.adapters import AdapterFileError, with_adapter
    from mmrec_gen.models.registry import load_model

    for how in EXPECTED:
        bad, culprit = _damaged(good_adapter, tmp_path, how)
        with pytest.raises(AdapterFileError, match=EXPECTED[how].replace("(", r"\(").replace(")", r"\)")) as err:
            with_adapter(load_model("tiny-llama"), bad)
        assert str(err.value).startswith(f"{culprit}: ")
    assert with_adapter(load_model("tiny-llama"), good_adapter).name.startswith("tiny-llama+")
