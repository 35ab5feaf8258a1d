"""Fill a config dataclass from CLI flags, optionally on top of a YAML file (`--config FILE.yaml`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def yaml_to_argv(path: str) -> list[str]:
    """Turn a flat YAML mapping into flags placed BEFORE the real flags, so command-line values win."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping of option: value")
    argv: list[str] = []
    for key, value in data.items():
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def parse_config(config_cls, argv: Sequence[str], prog: str, description: str):
    """Parse argv into `config_cls` with HfArgumentParser (every field: --name and --name-with-dashes)."""
    from transformers import HfArgumentParser

    argv = list(argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit(f"{prog}: --config needs a YAML file")
        argv = yaml_to_argv(argv[at + 1]) + argv[:at] + argv[at + 2 :]
    parser = HfArgumentParser(config_cls, prog=prog, description=description)
    parser.add_argument("--config", help="YAML file of options; flags given on the command line override it.")
    try:
        cfg, *_ = parser.parse_args_into_dataclasses(args=argv)  # the last item holds the unused --config
    except ValueError as exc:  # __post_init__ validation: show it like an argparse error, not a traceback
        parser.error(str(exc))
    return cfg
