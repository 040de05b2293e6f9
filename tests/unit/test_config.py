import os
import subprocess
from pathlib import Path

import pytest

from devstack.process import lazy2dfs_argv
from lazy2dfs import config, locations
from lazy2dfs.errors import InvalidArgumentError


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('root = "/from/file"\nlog_level = "debug"\n[cache]\nmax_bytes = 1000\n')
    env = {"LAZY2DFS_ROOT": "/from/env", "LAZY2DFS_CACHE__MAX_BYTES": "2000"}
    loaded = config.load(file, env=env, overrides={"root": Path("/from/flag"), "address": None})
    assert loaded.root == Path("/from/flag")
    assert loaded.cache.max_bytes == 2000
    assert loaded.log_level == "debug"
    assert loaded.address == Path("/run/lazy2dfs/lazy2dfs.sock")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root = ", "not TOML"),
        ("unknown = 1", "unknown: Extra inputs"),
        ('metrics_address = "nope"', "is not HOST:PORT"),
        ("[cache]\nmax_bytes = -1", "cache.max_bytes"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "config.toml"
    file.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message):
        config.load(file, env={})


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        config.load(tmp_path / "missing.toml", env={})


def test_metrics_address_splits_host_and_port() -> None:
    loaded = config.load(Path("/dev/null"), env={"LAZY2DFS_METRICS_ADDRESS": "[::1]:9100"})
    assert loaded.metrics_host_port == ("::1", 9100)


def test_a_misspelt_environment_variable_stops_serve_and_names_the_right_one(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)}
    env["LAZY2DFS_CACHE_MAX_BYTES"] = "1000"  # one underscore where two belong
    done = subprocess.run(
        [
            *lazy2dfs_argv(),
            *("serve", "--root", str(tmp_path / "root"), "--address", str(tmp_path / "s.sock")),
            *("--config", "/dev/null"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert "LAZY2DFS_CACHE_MAX_BYTES (did you mean LAZY2DFS_CACHE__MAX_BYTES?)" in done.stderr
    assert not (tmp_path / "root").exists() and not (tmp_path / "s.sock").exists()


def test_every_variable_the_loader_reads_is_accepted() -> None:
    for variable, option in config.environment_variables().items():
        try:
            loaded = config.load(Path("/dev/null"), env={variable: "7"})
        except InvalidArgumentError as err:  # "7" is not a valid value of every option
            assert ".".join(option) in str(err) and "unknown" not in str(err)
        else:
            assert loaded != config.Config()


@pytest.mark.parametrize("address", ["127.0.0.1:5050", "127.8.9.1:1", "localhost:5050", "[::1]:5"])
def test_the_mirror_listens_on_loopback(address: str) -> None:
    assert config.Config(mirror_address=address).mirror_host_port is not None


@pytest.mark.parametrize("address", ["0.0.0.0:5050", "10.1.2.3:5050", "node-1:5050", "[::]:5"])
def test_the_mirror_refuses_other_addresses_unless_told(address: str) -> None:
    """The mirror pulls with the daemon's credentials for whoever asks."""
    with pytest.raises(InvalidArgumentError, match="mirror_beyond_loopback = true"):
        config.load(Path("/dev/null"), env={}, overrides={"mirror_address": address})
    allowed = config.load(
        Path("/dev/null"),
        env={"LAZY2DFS_MIRROR_BEYOND_LOOPBACK": "true"},
        overrides={"mirror_address": address},
    )
    assert allowed.mirror_address == address


def test_the_mirror_is_off_by_default() -> None:
    assert config.Config().mirror_address is None
    assert config.Config().mirror_host_port is None


@pytest.mark.parametrize("in_file", [None, "/srv/file/l2d.sock"])
@pytest.mark.parametrize("in_env", [None, "/srv/env/l2d.sock"])
def test_the_commands_find_the_control_socket_where_the_model_puts_it(
    tmp_path: Path, in_file: str | None, in_env: str | None
) -> None:
    """``lazy2dfs pull`` and ``status --health`` read the daemon's address without the model
    (``locations``): by the same rules, for a given file, the default file, and neither."""
    given = tmp_path / "config.toml"
    given.write_text(f'address = "{in_file}"\n' if in_file else 'log_level = "info"\n')
    env = {"LAZY2DFS_ADDRESS": in_env} if in_env else {}
    for path in (given, None):
        assert locations.daemon_control_address(path, env) == (
            config.load(path, env=env).control_address
        )


def test_the_commands_refuse_a_configuration_file_that_is_not_toml(tmp_path: Path) -> None:
    broken = tmp_path / "config.toml"
    broken.write_text("address = \n")
    with pytest.raises(InvalidArgumentError, match="is not TOML"):
        locations.daemon_control_address(broken, {})
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        locations.daemon_control_address(tmp_path / "absent.toml", {})
