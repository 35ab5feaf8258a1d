"""Configs from flags and YAML: one dataclass, command-line values win over the file."""

from __future__ import annotations

import re

import pytest

from mmrec_gen.cli_args import parse_config, yaml_to_argv
from mmrec_gen.rank.rank_config import RankConfig


def test_yaml_fills_the_config_and_flags_override(tmp_path):
    cfg_file = tmp_path / "rank.yaml"
    cfg_file.write_text("data: /d\nout: o.jsonl\nmode: constrained\nnum_candidates: 10\nshots: 2\nprogress: false\n")
    cfg = parse_config(RankConfig, ["--config", str(cfg_file), "--num-candidates", "12"], "mmrec rank", "")
    assert (cfg.data, cfg.out, cfg.mode, cfg.num_candidates, cfg.shots) == ("/d", "o.jsonl", "constrained", 12, 2)
    assert cfg.progress is False and cfg.template == "rank_fewshot"


def test_yaml_must_be_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        yaml_to_argv(str(bad))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "train"], "--split must be valid or test"),
        (["--num-candidates", "30"], "between 2 and 26"),
        (["--mode", "generate", "--template", "pointwise"], "use it with --mode score"),
    ],
)
def test_validation_errors_name_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(RankConfig, ["--data", "d", "--out", "o", *flags], "mmrec rank", "")
    assert message in capsys.readouterr().err


def _parse_with_yaml(tmp_path, text, flags=()):
    cfg_file = tmp_path / "rank.yaml"
    cfg_file.write_text(text)
    return parse_config(RankConfig, [*flags, "--config", str(cfg_file)], "mmrec rank", "")


def test_config_with_equals_sign_is_applied(tmp_path):
    cfg_file = tmp_path / "rank.yaml"
    cfg_file.write_text("data: /d\nout: o.jsonl\nmode: constrained\n")
    cfg = parse_config(RankConfig, [f"--config={cfg_file}"], "mmrec rank", "")
    assert (cfg.data, cfg.out, cfg.mode) == ("/d", "o.jsonl", "constrained")


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("data: /d\nout: o\nmax_u: 2\n", (), "rank.yaml:3: unknown option 'max_u'"),
        ("data: /d\nout: o\nfoo_bar:\n", (), "rank.yaml:3: unknown option 'foo_bar'"),
        ("data: /d\nout: o\nmax_users:\n", (), "rank.yaml:3: option 'max_users' has no value"),
        ("data: /d\nout: [o\nmode: score\n", (), "rank.yaml:3: not valid YAML"),
        ("data: /d\nout: o\n", ("--max-u", "2"), "['--max-u', '2']"),
    ],
)
def test_bad_config_input_is_refused_with_file_and_line(tmp_path, capsys, text, flags, message):
    with pytest.raises(SystemExit):
        _parse_with_yaml(tmp_path, text, flags)
    assert message in capsys.readouterr().err


def test_abbreviated_flag_is_refused_and_full_flag_works(capsys):
    with pytest.raises(SystemExit):
        parse_config(RankConfig, ["--data", "d", "--out", "o", "--max-u", "2"], "mmrec rank", "")
    assert "--max-u" in capsys.readouterr().err
    assert parse_config(RankConfig, ["--data", "d", "--out", "o", "--max-users", "2"], "mmrec rank", "").max_users == 2


def test_train_yaml_prefix_of_an_option_is_refused(tmp_path, capsys):
    from mmrec_gen.train.config import SFTTrainConfig

    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("data: /d\noutput_dir: o\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit):
        parse_config(SFTTrainConfig, ["--config", str(cfg_file)], "mmrec train sft", "")
    assert "unknown option 'learning_rat'" in capsys.readouterr().err


def test_train_configs_extend_trl_and_take_every_training_option():
    from trl import DPOConfig, SFTConfig

    from mmrec_gen.train.config import DPOTrainConfig, SFTTrainConfig

    sft = parse_config(SFTTrainConfig, ["--data", "d", "--output-dir", "o", "--report-to", "tensorboard"], "sft", "")
    assert isinstance(sft, SFTConfig) and sft.report_to == ["tensorboard"]
    # Laptop defaults where TRL's differ; the seed is the mmrec one (windows, negatives and initialisation).
    assert (sft.learning_rate, sft.gradient_checkpointing, sft.bf16, sft.seed) == (2e-4, False, False, 0)
    dpo = parse_config(DPOTrainConfig, ["--data", "d", "--output-dir", "o", "--beta", "0.3"], "dpo", "")
    assert isinstance(dpo, DPOConfig) and (dpo.beta, dpo.learning_rate) == (0.3, 5e-5)
    # The resume check compares what a run computes: logging and reporting options are not part of it.
    assert dpo.fingerprint()["beta"] == 0.3 and "report_to" not in sft.fingerprint()
    assert sft.fingerprint()["lr_scheduler_type"] == "cosine" and "beta" not in sft.fingerprint()


# -- issue 23: non-finite numbers, lists for one value, impossible counts: refused when the options are parsed --


@pytest.mark.parametrize(
    ("command", "flags", "flag"),
    [
        ("sft", ["--lora-dropout", "nan"], "--lora-dropout"),
        ("dpo", ["--beta", "nan"], "--beta"),
        ("sft", ["--learning-rate", "inf"], "--learning-rate"),
        ("dpo", ["--loss-weights", "1", "inf"], "--loss-weights"),
        ("sft", ["--max-grad-norm=-inf"], "--max-grad-norm"),
    ],
)
def test_non_finite_float_flags_are_refused_before_any_model_loads(tmp_path, capsys, command, flags, flag):
    from mmrec_gen.cli import main

    # The data folder does not exist: a run that got past the options would fail on it (exit 1), not exit 2 here.
    argv = ["train", command, "--data", str(tmp_path / "no-data"), "--output-dir", str(tmp_path / "o"), *flags]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"argument (--\w+/)?{flag}: '-?(nan|inf)' is not a finite number", err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "Infinity"])
def test_non_finite_float_in_yaml_is_refused_naming_file_line_and_key(tmp_path, capsys, value):
    from mmrec_gen.train.config import SFTTrainConfig

    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(f"data: /d\noutput_dir: o\n\nlearning_rate: {value}\n")
    with pytest.raises(SystemExit):
        parse_config(SFTTrainConfig, ["--config", str(cfg_file)], "mmrec train sft", "")
    err = capsys.readouterr().err
    assert f"{cfg_file}:4: option 'learning_rate'" in err and "not a finite number" in err


@pytest.mark.parametrize("value", ["[5, 10]", "[7]", "\n  - 7"])
def test_yaml_list_for_a_one_value_option_is_refused_with_file_and_line(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        _parse_with_yaml(tmp_path, f"data: /d\nout: o\nnum_candidates: {value}\n")
    err = capsys.readouterr().err
    assert "rank.yaml:3: option 'num_candidates' takes one value, got a list" in err


def test_yaml_value_of_the_wrong_type_names_file_and_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse_with_yaml(tmp_path, "data: /d\nout: o\nbatch_size: many\n")
    assert "rank.yaml:3: option 'batch_size'" in capsys.readouterr().err


def test_yaml_key_given_twice_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse_with_yaml(tmp_path, "data: /d\nout: o\nshots: 1\nshots: 2\n")
    assert "rank.yaml:4: option 'shots' is given twice (first on line 3)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-candidates", "0"], "--num-candidates takes a number >= 2 or all, got '0'"),
        (["--num-candidates", "-3"], "--num-candidates takes a number >= 2 or all, got '-3'"),
        (["--mode", "generate", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ],
)
def test_impossible_counts_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(RankConfig, ["--data", "d", "--out", "o", *flags], "mmrec rank", "")
    assert message in capsys.readouterr().err


def test_num_candidates_zero_in_yaml_is_refused_and_all_still_works(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse_with_yaml(tmp_path, "data: /d\nout: o\nnum_candidates: 0\n")
    assert (
        "rank.yaml:3: option 'num_candidates': --num-candidates takes a number >= 2 or all" in capsys.readouterr().err
    )
    cfg = _parse_with_yaml(tmp_path, "data: /d\nout: o\nnum_candidates: all\n")
    assert cfg.all_candidates
