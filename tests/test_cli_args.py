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
