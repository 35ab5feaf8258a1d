"""One parser per command: a config dataclass filled from CLI flags, optionally on top of a YAML file.

`make_parser(RankConfig, prog, description)` returns a `ConfigParser` (transformers' HfArgumentParser: every field
is `--name` and `--name-with-dashes`) that also takes `--config FILE.yaml` / `--config=FILE.yaml`; flags on the
command line win over the file. Abbreviated flags are refused (argparse would read `--max-u` as `--max-users`), and
so are YAML keys that are not options, keys without a value and YAML syntax errors, each naming the file and line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path


def _yaml_error(path: str, exc) -> ValueError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc)
    return ValueError(f"{where}: not valid YAML ({problem}); fix that line")


def load_yaml_options(path: str, fields: Sequence[str] | None = None) -> dict:
    """The option: value mapping of a YAML config file, with every key checked against `fields` (when given)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping of option: value")
    lines = {str(k): n for n, line in enumerate(text.splitlines(), 1) for k in [line.split(":", 1)[0].strip()]}
    known = {f.replace("-", "_") for f in fields} if fields is not None else None
    for key, value in data.items():
        name = str(key).replace("-", "_")
        where = f"{path}:{lines.get(str(key), '?')}"
        if known is not None and name not in known:
            raise ValueError(f"{where}: unknown option {key!r}; see --help for the options (spelled out in full)")
        if value is None:
            raise ValueError(f"{where}: option {key!r} has no value; give one or remove the line")
    return data


def yaml_to_argv(path: str, fields: Sequence[str] | None = None) -> list[str]:
    """Turn a flat YAML mapping into flags placed BEFORE the real flags, so command-line values win."""
    argv: list[str] = []
    for key, value in load_yaml_options(path, fields).items():
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def split_config_flag(argv: Sequence[str], prog: str) -> tuple[str | None, list[str]]:
    """(the --config file or None, argv without it); takes `--config FILE` and `--config=FILE`."""
    rest: list[str] = []
    config = None
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            if config is not None:
                raise SystemExit(f"{prog}: --config given twice")
            if arg == "--config":
                if i + 1 >= len(argv):
                    raise SystemExit(f"{prog}: --config needs a YAML file")
                config, i = argv[i + 1], i + 2
            else:
                config, i = arg.split("=", 1)[1], i + 1
            if not config:
                raise SystemExit(f"{prog}: --config needs a YAML file")
            continue
        rest.append(arg)
        i += 1
    return config, rest


def make_parser(config_cls, prog: str, description: str):
    """The parser of one command: its config dataclass's fields as flags, plus --config, no abbreviations."""
    from transformers import HfArgumentParser

    class ConfigParser(HfArgumentParser):
        def parse_config(self, argv: Sequence[str]):
            """Parse argv (YAML from --config first, then the flags) into one filled `config_cls`."""
            config, argv = split_config_flag(argv, self.prog)
            if config is not None:
                try:
                    argv = yaml_to_argv(config, [f.name for f in dataclasses.fields(config_cls)]) + argv
                except ValueError as exc:
                    self.error(str(exc))
            try:
                cfg, *_ = self.parse_args_into_dataclasses(args=argv)  # the last item holds the unused --config
            except ValueError as exc:  # __post_init__ validation: an argparse error, not a traceback
                self.error(str(exc))
            return cfg

    parser = ConfigParser(config_cls, prog=prog, description=description, allow_abbrev=False)
    for action in parser._actions:  # e.g. --num-candidates all: a field typed int that also takes a word
        parse = getattr(config_cls, "argparse_types", {}).get(action.dest)
        if parse is not None:
            action.type = parse
    parser.add_argument("--config", help="YAML file of options; flags given on the command line override it.")
    return parser


def parse_config(config_cls, argv: Sequence[str], prog: str, description: str):
    """Parse argv into `config_cls` (see `make_parser`)."""
    return make_parser(config_cls, prog, description).parse_config(argv)
