"""Configs from flags and YAML: one dataclass, command-line values win over the file."""

from __future__ import annotations

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
