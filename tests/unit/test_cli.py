"""The command line as a user types it: no flag abbreviations, errors with the usage of the
command at fault, a description for every command, and shell completion that works in bash."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.process import lazy2dfs_argv
from lazy2dfs.cli import build_parser
from lazy2dfs.cli.parser import bash_completion


def lazy2dfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lazy2dfs_argv(), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_an_abbreviated_flag_is_refused_and_starts_nothing(tmp_path: Path) -> None:
    done = lazy2dfs("serve", "--root", str(tmp_path / "root"), "--metrics", "127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: lazy2dfs serve ")
    assert "unrecognized arguments: --metrics 127.0.0.1:1" in done.stderr
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (["pull", "--bogus", "host/m:v1"], "usage: lazy2dfs pull "),
        (["status", "--bogus"], "usage: lazy2dfs status "),
        (["config", "default", "--bogus"], "usage: lazy2dfs config default "),
        (["field", "from-safetensors", "--rows", "2", "m", "--bogus"], "usage: lazy2dfs field "),
        (["--bogus", "status"], "usage: lazy2dfs "),
    ],
)
def test_an_unknown_flag_shows_the_usage_of_its_command(command: list[str], usage: str) -> None:
    done = lazy2dfs(*command)
    assert done.returncode == 2
    assert done.stderr.startswith(usage), done.stderr
    assert "unrecognized arguments: --bogus" in done.stderr


def _parsers(
    parser: argparse.ArgumentParser, path: str = "lazy2dfs"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_command_has_a_description_and_refuses_abbreviations() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 12
    for path, parser in parsers:
        assert parser.description and len(parser.description) > 40, path
        assert parser.allow_abbrev is False, path
    done = lazy2dfs("serve", "--help")
    assert done.returncode == 0 and "containerd's proxy snapshotter plugin dials" in done.stdout


@pytest.mark.parametrize(
    "command", ["status", "pull", "build", "convert", "field from-safetensors"]
)
def test_commands_that_print_results_have_json(command: str) -> None:
    done = lazy2dfs(*command.split(), "--help")
    assert "--json" in done.stdout


def _complete(words: list[str], script: str) -> list[str]:
    """What bash's TAB offers after ``words`` (the last one being completed)."""
    program = f"""{script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
_lazy2dfs
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_commands_flags_and_choices(tmp_path: Path) -> None:
    done = lazy2dfs("completion", "bash")
    assert done.returncode == 0
    script = done.stdout
    assert script == bash_completion(build_parser())
    assert _complete(["lazy2dfs", "pu"], script) == ["pull"]
    assert set(_complete(["lazy2dfs", ""], script)) >= {"serve", "pull", "status", "completion"}
    assert _complete(["lazy2dfs", "config", "d"], script) == ["default", "docs"]
    assert _complete(["lazy2dfs", "pull", "--na"], script) == ["--namespace"]
    assert _complete(["lazy2dfs", "pull", "-n", "k8s.io", "--pl"], script) == ["--plain-http"]
    assert _complete(["lazy2dfs", "serve", "--log-level", "w"], script) == ["warning"]
    (tmp_path / "model.toml").write_text("")
    offered = _complete(["lazy2dfs", "serve", "--config", f"{tmp_path}/mo"], script)
    assert offered == [f"{tmp_path}/model.toml"]
    zsh = lazy2dfs("completion", "zsh").stdout
    assert "bashcompinit" in zsh and script in zsh


def test_the_command_line_starts_without_the_daemons_or_the_formats_libraries() -> None:
    """Every command's parser is built at each start, ``lazy2dfs pull``'s too, which a
    container's first tensor waits for: on a cold page cache the format library (``estargz``,
    zstandard, tarfile) and the status client (http.client) cost it about 0.15 s."""
    heavy = (
        "lazy2dfs.estargz",
        "lazy2dfs.status",
        "lazy2dfs.config",
        "http.client",
        "zstandard",
        "tarfile",
        "pydantic",
        "trio",
        "grpc",
        "pyfuse3",
    )
    (modules,) = _python("import sys, lazy2dfs.cli; print(' '.join(sorted(sys.modules)))")
    assert sorted(set(modules.split()) & set(heavy)) == []


def _python(probe: str, env: dict[str, str] | None = None) -> list[str]:
    """The lines ``probe`` prints, run by the interpreter ``lazy2dfs`` runs in."""
    done = subprocess.run(
        [*lazy2dfs_argv()[:-2], "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_lazy2dfs_pull_asks_the_daemon_without_a_toml_parser_or_typing_extensions(
    tmp_path: Path,
) -> None:
    """Told the daemon's address by the environment, the command reads no configuration file
    and leaves validating its request to the daemon: on a cold page cache the two cost its
    start 30 ms, before the pull's first request."""
    probe = (
        "import sys, lazy2dfs.cli, lazy2dfs.progress, lazy2dfs.status;"
        " from lazy2dfs.locations import daemon_control_address;"
        " print(daemon_control_address(None));"
        " print(' '.join(sorted(sys.modules)))"
    )
    address = tmp_path / "lazy2dfs.sock"
    told, modules = _python(probe, {"LAZY2DFS_ADDRESS": str(address)})
    assert told == str(address.with_suffix(".control.sock"))
    assert sorted(set(modules.split()) & {"tomllib", "typing_extensions"}) == []
