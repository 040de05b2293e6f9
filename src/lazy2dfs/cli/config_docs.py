"""The configuration's documentation, generated from ``config.Config`` (``lazy2dfs config``).

``config.py`` is the one definition of every option; what a user reads about them is derived
from it here, so the two cannot drift apart:

* ``lazy2dfs config default``: the full default configuration as TOML, every option preceded by
  its description, its type and its environment variable; sections as TOML tables.
* ``lazy2dfs config check FILE``: validates FILE with ``config.load`` (exit status 1 and the
  problems found when it is invalid).
* ``lazy2dfs config docs``: ``docs/configuration.md``, which a test compares with the model.

TOML is written by hand (no dependency) for the types the model uses: strings, paths,
integers, booleans, lists of strings; an option whose default is ``None`` is shown commented out
with the example its field gives, so that uncommenting it yields valid TOML.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lazy2dfs import config

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
}


@dataclass(frozen=True)
class Option:
    """One setting, as a user meets it in the file, the environment and the docs."""

    section: str  # "" for top-level options
    name: str
    default: object
    example: object  # shown, commented out, for an option unset by default
    description: str
    type: str
    env: str  # "" when the environment cannot set it

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


@dataclass(frozen=True)
class Section:
    name: str  # "" for the top level
    description: str
    options: tuple[Option, ...]


def toml_value(value: object) -> str:
    """``value`` as a TOML literal; large integers get digit separators for readability."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_d}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON escapes quotes, backslashes and control characters as TOML does; TOML also
        # forbids a raw DEL, which JSON leaves alone. Other characters stay as they are.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}: extend config_docs.toml_value")


def _describe_type(annotation: Any) -> str:
    """A type as a user reads it: ``integer``, ``list of strings``, ``one of "a", "b"``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        named = [_describe_type(a) for a in args if a is not type(None)]
        return " or ".join(named) + (", or unset" if type(None) in args else "")
    if origin is list:
        return f"list of {_describe_type(args[0])}s"
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    raise TypeError(f"no description for type {annotation!r}: extend config_docs")


def _bounds(info: FieldInfo) -> str:
    """``" > 0"`` for ``Field(gt=0)``; pydantic keeps such bounds as metadata objects."""
    return "".join(
        f" {symbol} {getattr(m, attr)}"
        for m in info.metadata
        for attr, symbol in _BOUNDS
        if getattr(m, attr, None) is not None
    )


def _option(section: str, name: str, info: FieldInfo) -> Option:
    variables = {path: v for v, path in config.environment_variables().items()}
    env = variables[(section, name) if section else (name,)]
    if get_origin(info.annotation) is list:
        env = ""  # config.load passes variables on as strings, which a list does not accept
    return Option(
        section=section,
        name=name,
        default=info.get_default(call_default_factory=True),
        example=info.examples[0] if info.examples else None,
        description=info.description or "",
        type=_describe_type(info.annotation) + _bounds(info),
        env=env,
    )


def sections(model: type[BaseModel] = config.Config) -> list[Section]:
    """The model's options: top-level ones first, then one section per nested model."""
    top: list[Option] = []
    nested: list[Section] = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            options = tuple(_option(name, n, i) for n, i in sub.model_fields.items())
            nested.append(Section(name, _doc(sub), options))
        else:
            top.append(_option("", name, info))
    return [Section("", _doc(model), tuple(top)), *nested]


def _doc(model: type[BaseModel]) -> str:
    """A docstring as one line of plain Markdown (reST's double backquotes become single)."""
    return " ".join((model.__doc__ or "").split()).replace("``", "`")


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _option_lines(option: Option) -> Iterator[str]:
    yield from _comment(option.description)
    env = f"Environment: {option.env}." if option.env else "Set in this file only."
    yield f"# Type: {option.type}. {env}"
    if option.default is None:
        # Commented out, the line is still the valid TOML a user uncomments.
        yield "# Unset by default; for example:"
        yield f"# {option.name} = {toml_value(option.example)}"
    else:
        yield f"{option.name} = {toml_value(option.default)}"


def default_toml() -> str:
    """The whole default configuration as TOML that ``config.load`` accepts unchanged."""
    lines = [
        f"# lazy2dfs configuration ({config.DEFAULT_CONFIG_PATH}), printed by"
        " `lazy2dfs config default`.",
        "# Every value shown is the default. Precedence, lowest first: this file, LAZY2DFS_*",
        "# environment variables, command-line flags of `lazy2dfs serve`.",
    ]
    for section in sections():
        if section.name:
            lines.extend(["", *_comment(section.description), f"[{section.name}]"])
        for i, option in enumerate(section.options):
            if i or not section.name:
                lines.append("")
            lines.extend(_option_lines(option))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """``docs/configuration.md``."""
    out = [
        "# Configuration",
        "",
        "<!-- Generated from src/lazy2dfs/config.py by `lazy2dfs config docs > "
        "docs/configuration.md`; do not edit by hand (a test fails when it is stale). -->",
        "",
        f"`lazy2dfs serve` reads `{config.DEFAULT_CONFIG_PATH}` when it exists (or the file"
        " given with `--config`). Precedence, lowest first: the defaults below, the file,"
        f" environment variables (`{config.ENV_PREFIX}<OPTION>`, and"
        f" `{config.ENV_PREFIX}<SECTION>__<OPTION>` for an option of a section), the flags of"
        " `lazy2dfs serve` (`--root`, `--address`, `--metrics-address`, `--mirror-address`,"
        " `--log-level`).",
        "",
        "- `lazy2dfs config default` prints the whole default configuration as TOML, every"
        " option with its description: a starting point for the file.",
        "- `lazy2dfs config check FILE` validates a file and names every problem"
        " (exit status 1); unknown options are errors.",
    ]
    for section in sections():
        title = f"`[{section.name}]`" if section.name else "Top-level options"
        out += ["", f"## {title}", "", section.description, ""]
        out += ["| Option | Type | Default | Environment | Description |", "|---|---|---|---|---|"]
        for o in section.options:
            default = "unset" if o.default is None else f"`{toml_value(o.default)}`"
            env = f"`{o.env}`" if o.env else "file only"
            out.append(
                f"| `{o.key}` | {_cell(o.type)} | {_cell(default)} | {env} |"
                f" {_cell(o.description)} |"
            )
    return "\n".join(out) + "\n"
