"""One parser per command: a config dataclass filled from CLI flags, optionally on top of a YAML file.

`make_parser(RankConfig, prog, description)` returns a `ConfigParser` (transformers' HfArgumentParser: every field
is `--name` and `--name-with-dashes`) that also takes `--config FILE.yaml` / `--config=FILE.yaml`; flags on the
command line win over the file. Abbreviated flags are refused (argparse would read `--max-u` as `--max-users`), and
so are YAML keys that are not options, keys without a value or given twice, a list for a one-value option, values
the option's type refuses and YAML syntax errors, each naming the file and line. Every float option refuses NaN and
infinities (`nan`, `inf`, YAML's `.nan` / `.inf`): a NaN learning rate or dropout trains nothing and says nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path


def _yaml_error(path: str, exc) -> ValueError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc)
    return ValueError(f"{where}: not valid YAML ({problem}); fix that line")


def finite_float(text: str) -> float:
    """argparse type of every float option: a number, never NaN or an infinity."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a real value such as 0.1")
    return value


def load_yaml_options(path: str, fields: Sequence[str] | None = None) -> dict:
    """The option: value mapping of a YAML config file, with every key checked against `fields` (when given)."""
    return _read_yaml(path, fields)[0]


def _read_yaml(path: str, fields: Sequence[str] | None) -> tuple[dict, dict[str, int]]:
    """(option: value mapping, {key: 1-based line}) of a YAML config file (see `load_yaml_options`)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping of option: value")
    first: dict[str, int] = {}
    for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
        line = key_node.start_mark.line + 1
        if str(key_node.value) in first:  # safe_load keeps the last silently
            raise ValueError(
                f"{path}:{line}: option {key_node.value!r} is given twice (first on line {first[key_node.value]}); "
                "keep one"
            )
        first[str(key_node.value)] = line
    known = {f.replace("-", "_") for f in fields} if fields is not None else None
    for key, value in data.items():
        name = str(key).replace("-", "_")
        where = f"{path}:{first.get(str(key), '?')}"
        if known is not None and name not in known:
            raise ValueError(f"{where}: unknown option {key!r}; see --help for the options (spelled out in full)")
        if value is None:
            raise ValueError(f"{where}: option {key!r} has no value; give one or remove the line")
    return data, first


def _flag_text(value) -> str:
    """A YAML value as the command-line word `yaml_to_argv` passes for it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_yaml_values(path: str, options: dict, lines: dict[str, int], actions: dict[str, argparse.Action]) -> None:
    """Raise ValueError naming the file, line and key of the first YAML value its option would refuse: a list for a
    one-value option, or a value the option's type or choices refuse (so the message points into the file, not
    at a flag the user never typed). `lines`: {key: line} as `_read_yaml` gives it."""
    for key, value in options.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None:
            continue
        where = f"{path}:{lines.get(str(key), '?')}: option {key!r}"
        many = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1
        if isinstance(value, list) and not many:
            raise ValueError(f"{where} takes one value, got a list {value}; write `{key}: VALUE`")
        for item in value if isinstance(value, list) else [value]:
            text = _flag_text(item)
            if callable(action.type):
                try:
                    converted = action.type(text)
                except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                    raise ValueError(f"{where}: {exc}") from None
            else:
                converted = text
            if action.choices is not None and converted not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise ValueError(f"{where}: {text!r} is not one of {choices}")


def yaml_to_argv(path: str, fields: Sequence[str] | None = None) -> list[str]:
    """Turn a flat YAML mapping into flags placed BEFORE the real flags, so command-line values win."""
    return _options_to_argv(load_yaml_options(path, fields))


def _options_to_argv(options: dict) -> list[str]:
    argv: list[str] = []
    for key, value in options.items():
        flag = f"--{key}"
        argv += [flag, *map(_flag_text, value)] if isinstance(value, list) else [flag, _flag_text(value)]
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
                fields = [f.name for f in dataclasses.fields(config_cls)]
                try:
                    options, lines = _read_yaml(config, fields)
                    check_yaml_values(config, options, lines, {a.dest: a for a in self._actions})
                    argv = _options_to_argv(options) + argv
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
        elif action.type is float:
            action.type = finite_float
    parser.add_argument("--config", help="YAML file of options; flags given on the command line override it.")
    return parser


def parse_config(config_cls, argv: Sequence[str], prog: str, description: str):
    """Parse argv into `config_cls` (see `make_parser`)."""
    return make_parser(config_cls, prog, description).parse_config(argv)
