"""Whether the daemon reaches a registry the way ``lazy2dfs pull`` does.

The pull fetches manifests with its own client; the daemon fetches every lazy layer with its
own, configured apart (``registry.plain_http``, ``registry.hosts_dir``, its user's credentials).
When the two disagree, the daemon fails to reach the registry and containerd downloads every
layer in full: a pull that silently is not lazy. Nothing the client knows is handed to the
daemon for one pull (a snapshot label could downgrade its transport, and on some containerd
versions labels come from image annotations), so the pull asks the daemon how it would reach
the registry and refuses, naming the setting to change, when that is not how the pull does.
"""

from __future__ import annotations

from lazy2dfs.errors import FailedPreconditionError
from lazy2dfs.registry_client import Endpoint
from lazy2dfs.status import RegistryAnswer

_RESTART = "then restart the daemon (`systemctl restart lazy2dfs`; running containers keep reading)"


def _flip(url: str) -> str:
    if url.startswith("http://"):
        return "https://" + url.removeprefix("http://")
    return "http://" + url.removeprefix("https://")


def check_endpoints(ours: list[Endpoint], theirs: RegistryAnswer, config_file: str) -> None:
    """Refuses when the pull would use an endpoint the daemon does not: another scheme (plain
    HTTP on one side only) or a mirror only one side has. The daemon may try more endpoints
    than the pull (its own mirrors first): that reaches the same content."""
    registry = theirs["registry"]
    urls = [e.base_url for e in ours]
    missing = [u for u in urls if u not in theirs["endpoints"]]
    if not missing:
        return
    hosts_file = f"{theirs['hosts_dir']}/{registry}/hosts.toml"
    url = missing[0]
    if _flip(url) in theirs["endpoints"] and url.startswith("http://"):
        raise FailedPreconditionError(
            f"refusing to pull: this pull reaches {registry} over plain HTTP, but the lazy2dfs"
            f" daemon would use HTTPS, fail, and have containerd download every layer in full."
            f' Tell the daemon: add "{registry}" to registry.plain_http in {config_file}, or'
            f' write {hosts_file} with server = "http://{registry}"; {_RESTART}'
        )
    if _flip(url) in theirs["endpoints"]:
        why = (
            f"registry.plain_http in {config_file}"
            if registry in theirs["plain_http"]
            else theirs["hosts_source"] or "its configuration"
        )
        raise FailedPreconditionError(
            f"refusing to pull: this pull reaches {registry} over HTTPS, but the lazy2dfs daemon"
            f" over plain HTTP ({why}). If the registry speaks plain HTTP, pass --plain-http;"
            f" if it speaks HTTPS, remove it there; {_RESTART}"
        )
    raise FailedPreconditionError(
        f"refusing to pull: this pull reaches {registry} at {', '.join(urls)}, but the lazy2dfs"
        f" daemon at {', '.join(theirs['endpoints']) or 'no endpoint'}"
        f" ({theirs['hosts_source'] or 'no hosts.toml'}), so it would not find the layers there."
        f" Give both the same hosts.toml: the daemon reads {theirs['hosts_dir'] or 'none'}"
        f" (registry.hosts_dir in {config_file}), this pull the same setting of the"
        " configuration it reads (--config)"
    )


def check_fetched(reference: str, theirs: RegistryAnswer) -> None:
    """Refuses when the daemon could not fetch the manifest this pull just fetched: its layers
    would all be downloaded."""
    if theirs["fetched"]:
        return
    fix = _log_in(theirs) if theirs["unauthorized"] else "fix what the error names, then pull again"
    raise FailedPreconditionError(
        f"refusing to pull: the lazy2dfs daemon cannot fetch {reference} ({theirs['error']}),"
        f" so containerd would download every layer in full. {fix[0].upper()}{fix[1:]}"
    )


def refused(reference: str, theirs: RegistryAnswer, error: Exception) -> FailedPreconditionError:
    """The error of a pull, made with the daemon's own settings, that the registry refused."""
    fix = _log_in(theirs)
    return FailedPreconditionError(
        f"the lazy2dfs daemon cannot fetch {reference} ({error}). {fix[0].upper()}{fix[1:]}"
    )


def _log_in(theirs: RegistryAnswer) -> str:
    registry = theirs["registry"]
    have = "its credentials" if theirs["credentials"] else "no credentials"
    return (
        f"the daemon has {have} for {registry}, read from"
        f" {theirs['docker_config'] or 'no Docker config'}: log in as the daemon's user"
        f" (`docker login {registry}` as root), {_RESTART}"
    )
