import base64
import json
import os
from pathlib import Path

import pytest

from lazy2dfs.registry_client import ConfigError, Credentials, CredentialStore


def write_config(tmp_path: Path, config: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
                "r.io:5000": {"auth": b64("u:p"), "identitytoken": "idt"},
                "https://other.io": {"username": "o", "password": "q"},
            }
        },
    )
    store = CredentialStore(docker_config=path)
    assert store.lookup("registry-1.docker.io") == Credentials("hub", "pw:with:colons")
    assert store.lookup("docker.io") == Credentials("hub", "pw:with:colons")
    assert store.lookup("r.io:5000") == Credentials("u", "p", "idt")
    assert store.lookup("other.io") == Credentials("o", "q")
    assert store.lookup("unknown.io") is None


def test_explicit_wins(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"r.io": {"auth": b64("file:x")}}})
    store = CredentialStore({"r.io": Credentials("explicit", "y")}, path)
    assert store.lookup("r.io") == Credentials("explicit", "y")


def test_missing_config_is_anonymous(tmp_path: Path) -> None:
    assert CredentialStore(docker_config=tmp_path / "absent.json").lookup("r.io") is None


@pytest.mark.parametrize(
    "config",
    [
        "not json",
        [],
        {"auths": {"r.io": {"auth": "!!"}}},
        {"auths": {"r.io": {"auth": b64("nocolon")}}},
    ],
)
def test_bad_config(tmp_path: Path, config: object) -> None:
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ConfigError):
        CredentialStore(docker_config=path).lookup("r.io")


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-fake``: knows r.io (password) and tok.io (identity token)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    script = bin_dir / "docker-credential-fake"
    script.write_text(
        "#!/bin/sh\n"
        f'read server; echo "$1 $server" >> {log}\n'
        'case "$server" in\n'
        '  r.io) echo \'{"ServerURL":"r.io","Username":"hu","Secret":"hs"}\' ;;\n'
        '  tok.io) echo \'{"ServerURL":"tok.io","Username":"<token>","Secret":"rt"}\' ;;\n'
        '  broken.io) echo "kaput"; exit 2 ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_cred_helpers_and_store(tmp_path: Path, helpers: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "credHelpers": {"r.io": "fake", "tok.io": "fake"},
            "auths": {"x.io": {"auth": b64("a:b")}},
        },
    )
    store = CredentialStore(docker_config=path)
    assert store.lookup("r.io") == Credentials("hu", "hs")
    assert store.lookup("r.io") == Credentials("hu", "hs")
    assert store.lookup("tok.io") == Credentials(identity_token="rt")
    assert store.lookup("x.io") == Credentials("a", "b")
    assert helpers.read_text().splitlines() == ["get r.io", "get tok.io"]

    store = CredentialStore(docker_config=write_config(tmp_path, {"credsStore": "fake"}))
    assert store.lookup("r.io") == Credentials("hu", "hs")
    assert store.lookup("nothing.io") is None
    with pytest.raises(ConfigError, match="kaput"):
        store.lookup("broken.io")


def test_missing_helper(tmp_path: Path) -> None:
    store = CredentialStore(docker_config=write_config(tmp_path, {"credsStore": "nonexistent-zz"}))
    with pytest.raises(ConfigError, match="docker-credential-nonexistent-zz"):
        store.lookup("r.io")


def test_repr_hides_secrets() -> None:
    assert "secret" not in repr(Credentials("u", "secret", "secret"))
