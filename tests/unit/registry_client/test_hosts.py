from pathlib import Path

import pytest

from lazy2dfs.registry_client import Capability, ConfigError, RegistryHosts
from lazy2dfs.registry_client.hosts import (
    ALL_CAPABILITIES,
    is_loopback,
    parse_hosts_toml,
    reaches,
)

HOSTS_TOML = """
server = "https://registry-1.docker.io"
ca = "ca.pem"

[host."https://mirror-a.example.com"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  client = [["/etc/c.cert", "k.key"], "both.pem"]
  [host."https://mirror-a.example.com".header]
    x-token = ["1", "2"]

[host."http://mirror-b.internal:5000/prefix"]
  capabilities = ["pull"]

[host."https://mirror-c.example.com/custom/api"]
  override_path = true
"""


def test_mirrors_in_file_order_then_server(tmp_path: Path) -> None:
    a, b, c, server = parse_hosts_toml(HOSTS_TOML, tmp_path)
    assert (a.base_url, a.capabilities) == (
        "https://mirror-a.example.com/v2",
        Capability.PULL | Capability.RESOLVE,
    )
    assert a.tls.skip_verify
    assert a.tls.client_pairs == (
        (Path("/etc/c.cert"), tmp_path / "k.key"),
        (tmp_path / "both.pem", None),
    )
    assert a.headers == (("x-token", "1"), ("x-token", "2"))
    assert (b.base_url, b.capabilities) == (
        "http://mirror-b.internal:5000/prefix/v2",
        Capability.PULL,
    )
    assert c.base_url == "https://mirror-c.example.com/custom/api"
    assert server.base_url == "https://registry-1.docker.io/v2"
    assert server.capabilities == ALL_CAPABILITIES
    assert server.tls.ca_files == (tmp_path / "ca.pem",)


@pytest.mark.parametrize(
    "text",
    [
        "server = [",
        "server = 5",
        '[host."https://m"]\ncapabilities = ["fly"]',
        '[host."https://m"]\ncapabilities = []',
        '[host."https://m"]\nskip_verify = "yes"',
        '[host."ftp://m"]',
        '[host."https://m"]\nclient = [["a"]]',
        '[host."https://m"]\nca = 3',
        '[host."https://m"]\nheader = {a = 1}',
    ],
)
def test_bad_hosts_toml(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse_hosts_toml(text, tmp_path)


def test_defaults_without_hosts_dir() -> None:
    hosts = RegistryHosts()
    assert [e.base_url for e in hosts.endpoints("docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [e.base_url for e in hosts.endpoints("r.io")] == ["https://r.io/v2"]
    assert [e.base_url for e in hosts.endpoints("localhost:5000")] == ["http://localhost:5000/v2"]
    assert [e.base_url for e in hosts.endpoints("127.0.0.2:80")] == ["http://127.0.0.2:80/v2"]
    assert [e.base_url for e in hosts.endpoints("[::1]:5000")] == ["http://[::1]:5000/v2"]


def test_plain_http_only_where_asked() -> None:
    assert RegistryHosts(plain_http=True).endpoints("r.io")[0].scheme == "http"
    hosts = RegistryHosts(plain_http=["lab:5000"])
    assert hosts.endpoints("lab:5000")[0].scheme == "http"
    assert hosts.endpoints("r.io")[0].scheme == "https"


def test_host_directory_lookup_order(tmp_path: Path) -> None:
    (tmp_path / "r.io_5000_").mkdir()
    (tmp_path / "r.io_5000_/hosts.toml").write_text('[host."https://m1"]\n')
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default/hosts.toml").write_text('[host."https://fallback"]\n')
    hosts = RegistryHosts(tmp_path)
    assert [e.base_url for e in hosts.endpoints("r.io:5000")] == [
        "https://m1/v2",
        "https://r.io:5000/v2",
    ]
    assert [e.base_url for e in hosts.endpoints("other.io")] == [
        "https://fallback/v2",
        "https://other.io/v2",
    ]


def test_server_less_hosts_toml_keeps_its_settings_for_the_registry(tmp_path: Path) -> None:
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io/hosts.toml").write_text('capabilities = ["pull"]\nskip_verify = true\n')
    (endpoint,) = RegistryHosts(tmp_path).endpoints("docker.io")
    assert endpoint.base_url == "https://registry-1.docker.io/v2"
    assert endpoint.capabilities == Capability.PULL and endpoint.tls.skip_verify


def test_certs_directory_without_hosts_toml(tmp_path: Path) -> None:
    directory = tmp_path / "r.io"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "other.cert"):
        (directory / name).write_text("")
    (endpoint,) = RegistryHosts(tmp_path).endpoints("r.io")
    assert endpoint.tls.ca_files == (directory / "ca.crt",)
    assert endpoint.tls.client_pairs == (
        (directory / "client.cert", directory / "client.key"),
        (directory / "other.cert", None),
    )


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["localhost", "localhost:1", "127.1.2.3:5", "[::1]:5000"]))
    assert not any(map(is_loopback, ["r.io", "10.0.0.1:5000", "localhost.evil.com"]))


def test_unreadable_ca_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "r.io").mkdir()
    (tmp_path / "r.io/hosts.toml").write_text('ca = "missing.pem"\n')
    (endpoint,) = RegistryHosts(tmp_path).endpoints("r.io")
    with pytest.raises(ConfigError):
        endpoint.tls.ssl_context()


@pytest.mark.parametrize(
    ("host", "listener", "expected"),
    [
        ("127.0.0.1:5050", "127.0.0.1:5050", True),
        ("localhost:5050", "127.0.0.1:5050", True),
        ("[::1]:5050", "127.0.0.1:5050", True),
        ("10.0.0.7:5050", "0.0.0.0:5050", True),
        ("node:5050", "node:5050", True),
        ("127.0.0.1:5051", "127.0.0.1:5050", False),
        ("10.0.0.7:5050", "127.0.0.1:5050", False),
        ("registry.example.com", "127.0.0.1:443", False),
        ("", "127.0.0.1:5050", False),
    ],
)
def test_reaches(host: str, listener: str, expected: bool) -> None:
    assert reaches(host, listener) is expected


def test_skipped_listeners_are_left_out_of_the_endpoints(tmp_path: Path) -> None:
    """The daemon reads containerd's hosts.toml, which names the daemon's own mirror."""
    (tmp_path / "reg.example.com").mkdir()
    (tmp_path / "reg.example.com" / "hosts.toml").write_text(
        '[host."http://127.0.0.1:5050"]\n  capabilities = ["pull", "resolve"]\n'
        '[host."https://cache.example.com"]\n  capabilities = ["pull"]\n'
    )
    everything = RegistryHosts(tmp_path).endpoints("reg.example.com")
    assert [e.host for e in everything] == [
        "127.0.0.1:5050",
        "cache.example.com",
        "reg.example.com",
    ]
    skipping = RegistryHosts(tmp_path, skip=["localhost:5050"]).endpoints("reg.example.com")
    assert [e.host for e in skipping] == ["cache.example.com", "reg.example.com"]
