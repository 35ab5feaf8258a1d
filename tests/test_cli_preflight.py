"""Bad output paths, bad options and empty data fail before any model loads or any user is ranked, with one line
naming the path or option and the fix (never a traceback after the compute)."""

from __future__ import annotations

import os

import pytest

from mmrec_gen.cli import main


class ModelLoaded(AssertionError):
    """Raised by the patched model loaders: the command got past its checks to the expensive part."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded("the model was loaded before the bad input was reported")

    # Modules that bind load_model at import are imported before the registry is patched, so none keeps `refuse`.
    import mmrec_gen.models.llm_encoder  # noqa: F401
    import mmrec_gen.train.item_rec_trainer  # noqa: F401

    monkeypatch.setattr("mmrec_gen.train.trainers.load_model", refuse)
    monkeypatch.setattr("mmrec_gen.models.registry.load_model", refuse)


def _rank(synth_dir, tmp_path, *extra):
    return ["rank", "--data", str(synth_dir), "--model", "tiny-llama", "--max-users", "3", "--num-candidates", "5",
            "--cache-dir", str(tmp_path / "cands"), "--no-progress", *extra]  # fmt: skip


def _bad_outs(tmp_path):
    (tmp_path / "somefile").write_text("x")
    (tmp_path / "adir").mkdir()
    return {
        "folder": (str(tmp_path / "adir"), "is a folder"),
        "under a file": (str(tmp_path / "somefile" / "x.jsonl"), "is a file"),
    }


@pytest.mark.parametrize("case", ["folder", "under a file"])
def test_rank_checks_out_before_loading_the_model(synth_dir, tmp_path, capsys, no_model, case):
    out, expected = _bad_outs(tmp_path)[case]
    assert main(_rank(synth_dir, tmp_path, "--out", out)) == 1
    err = capsys.readouterr().err
    assert f"mmrec rank: error: --out {out}" in err and expected in err


def test_rank_refuses_an_out_in_a_folder_it_cannot_write(synth_dir, tmp_path, capsys, no_model):
    try:  # /sys is read-only even for root; skip where it is not
        open("/sys/.mmrec-probe", "w").close()
        os.unlink("/sys/.mmrec-probe")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    assert main(_rank(synth_dir, tmp_path, "--out", "/sys/x.jsonl")) == 1
    assert "--out /sys/x.jsonl: cannot write in /sys" in capsys.readouterr().err


def test_explain_and_baseline_check_out_first(synth_dir, tmp_path, capsys, no_model):
    out, _ = _bad_outs(tmp_path)["folder"]
    explain = ["explain", "--data", str(synth_dir), "--model", "tiny-llama", "--max-users", "2",
               "--cache-dir", str(tmp_path / "c"), "--out", out, "--no-progress"]  # fmt: skip
    assert main(explain) == 1
    assert f"mmrec explain: error: --out {out} is a folder" in capsys.readouterr().err
    baseline = ["baseline", "pop", "--data", str(synth_dir), "--cache-dir", str(tmp_path / "c"), "--out", out]
    assert main(baseline) == 1
    assert f"mmrec baseline: error: --out {out} is a folder" in capsys.readouterr().err


def test_train_output_dir_that_is_a_file_is_a_clear_error(synth_dir, tmp_path, capsys, no_model):
    target = tmp_path / "afile"
    target.write_text("keep me")
    argv = ["train", "sft", "--data", str(synth_dir), "--model", "tiny-llama", "--output-dir", str(target),
            "--max-steps", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    assert f"--output-dir {target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    merge = ["train", "merge", "--adapter", str(tmp_path), "--out", str(target), "--model", "tiny-llama"]
    assert main(merge) == 1
    assert f"--out {target} is a file, not a folder" in capsys.readouterr().err


def test_header_only_ratings_fail_before_the_model_and_write_nothing(tmp_path, capsys, no_model):
    data = tmp_path / "ml"
    data.mkdir()
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    (data / "movies.csv").write_text("movieId,title,genres\n1,A (1999),Drama\n")
    out = tmp_path / "out.jsonl"
    argv = ["rank", "--data", str(data), "--model", "tiny-llama", "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    assert f"{data / 'ratings.csv'}: no interactions" in capsys.readouterr().err
    assert not out.exists()


def test_too_many_shots_and_unknown_template_fail_before_the_model(synth_dir, tmp_path, capsys, no_model):
    out = tmp_path / "out.jsonl"
    assert main(_rank(synth_dir, tmp_path, "--shots", "1000", "--out", str(out))) == 1
    assert "--shots 1000 needs 1000 other users" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(_rank(synth_dir, tmp_path, "--template", "nosuch", "--out", str(out)))
    assert "--template 'nosuch' is not a prompt template; choose one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_rank(synth_dir, tmp_path, "--template", "explain", "--out", str(out)))
    assert "--template 'explain' is for the explain task" in capsys.readouterr().err
