"""``lazy2dfs config default|check|docs``: generated from the model, accepted by the loader."""

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazy2dfs import config
from lazy2dfs.cli import config_docs, main

REPO = Path(__file__).resolve().parents[2]


def test_default_output_round_trips_through_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "default"]) == 0
    file = tmp_path / "config.toml"
    file.write_text(capsys.readouterr().out)
    assert config.load(file, env={}) == config.Config()
    assert main(["config", "check", str(file)]) == 0
    assert capsys.readouterr().out == f"{file}: valid\n"


def test_default_output_shows_every_option_with_its_description() -> None:
    text = config_docs.default_toml()
    values = tomllib.loads(text)
    for section in config_docs.sections():
        if section.name:
            assert f"\n[{section.name}]\n" in text
        for option in section.options:
            assert f"# {option.description}\n" in text
            table = values.get(section.name, {}) if section.name else values
            if option.default is None:
                assert option.name not in table
                example = f"# {option.name} = {config_docs.toml_value(option.example)}\n"
                assert example in text
            else:
                assert table[option.name] == _as_toml(option.default)
    dumped = config.Config().model_dump()
    every_field = {
        f"{name}.{sub}" if isinstance(value, dict) else name
        for name, value in dumped.items()
        for sub in (value if isinstance(value, dict) else [name])
    }
    assert every_field == {o.key for s in config_docs.sections() for o in s.options}


def _as_toml(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def test_unset_options_show_an_example_that_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = config_docs.default_toml()
    assert '# metrics_address = "127.0.0.1:9880"\n' in text
    file = tmp_path / "config.toml"
    file.write_text(text.replace("# metrics_address = ", "metrics_address = "))
    assert config.load(file, env={}).metrics_address == "127.0.0.1:9880"


def test_check_names_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "config.toml"
    file.write_text('log_level = "loud"\n[cache]\nmax_bytes = 0\nmax_byte = 1\n')
    assert main(["config", "check", str(file)]) == 1
    err = capsys.readouterr().err
    for problem in ("log_level", "cache.max_bytes: Input should be greater than 0", "max_byte:"):
        assert problem in err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_check_ignores_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZY2DFS_LOG_LEVEL", "loud")
    file = tmp_path / "config.toml"
    file.write_text('log_level = "debug"\n')
    assert main(["config", "check", str(file)]) == 0


def test_environment_variables_shown_are_the_ones_the_loader_reads() -> None:
    options = [o for s in config_docs.sections() for o in s.options]
    assert {o.env for o in options if o.section == "cache"} == {"LAZY2DFS_CACHE__MAX_BYTES"}
    loaded = config.load(path=Path("/dev/null"), env={"LAZY2DFS_CACHE__MAX_BYTES": "7"})
    assert loaded.cache.max_bytes == 7
    # A list cannot come from the environment (config.load passes strings on): say so.
    plain_http = next(o for o in options if o.key == "registry.plain_http")
    assert plain_http.env == ""
    with pytest.raises(Exception, match="valid list"):
        config.load(path=Path("/dev/null"), env={"LAZY2DFS_REGISTRY__PLAIN_HTTP": "a:1"})


def test_types_bounds_and_choices_are_described() -> None:
    options = {o.key: o for s in config_docs.sections() for o in s.options}
    assert options["cache.max_bytes"].type == "integer > 0"
    assert options["log_level"].type == 'one of "debug", "info", "warning", "error"'
    assert options["metrics_address"].type == "string, or unset"
    assert options["registry.plain_http"].type == "list of strings"


@given(st.text())
def test_strings_survive_toml(text: str) -> None:
    assert tomllib.loads(f"x = {config_docs.toml_value(text)}")["x"] == text


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_survive_toml(number: int) -> None:
    assert tomllib.loads(f"x = {config_docs.toml_value(number)}")["x"] == number


@given(st.floats(allow_nan=False))
def test_floats_survive_toml(number: float) -> None:
    assert tomllib.loads(f"x = {config_docs.toml_value(number)}")["x"] == number


def test_docs_configuration_md_is_generated_from_the_model() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == config_docs.markdown(), (
        "docs/configuration.md is stale: run"
        " '.venv/bin/lazy2dfs config docs > docs/configuration.md'"
    )


def test_docs_command_prints_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out == config_docs.markdown()
