"""The one definition of lazy2dfs's configuration.

Precedence, lowest first: the defaults below, the TOML file (``/etc/lazy2dfs/config.toml``),
environment variables (``LAZY2DFS_<FIELD>``, e.g. ``LAZY2DFS_ROOT``; a section's field as
``LAZY2DFS_<SECTION>__<FIELD>``, e.g. ``LAZY2DFS_CACHE__MAX_BYTES``), command-line flags.
Any other ``LAZY2DFS_*`` variable is an error, as an unknown key in the file is: a misspelt
name would otherwise leave its option silently at the default.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.locations import DEFAULT_ADDRESS, control_address, read_file
from lazy2dfs.locations import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from lazy2dfs.locations import ENV_PREFIX as ENV_PREFIX


class CacheConfig(BaseModel):
    """The layer cache under ``<root>/cache``: each blob's files, unpacked as they arrive."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="Upper bound of cached bytes. Layers no snapshot uses go first, whole, least"
        " recently used; when nothing can go, reads are served without being cached.",
    )


class FetchConfig(BaseModel):
    """How remote layers are fetched."""

    model_config = ConfigDict(extra="forbid")

    background: bool = Field(
        default=True,
        description="Fetch every chunk of a mounted layer in the background, yielding to reads:"
        " from the first read of its image, or 2 s after the mount.",
    )
    deadline_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A read waiting longer than this on the registry (retries included) fails"
        " with EIO instead of hanging.",
    )
    resolve_deadline_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Opening a layer (manifest, config, footer, TOC) that takes longer than this"
        " is given up: containerd downloads the layer instead. A slow registry cannot hold"
        " Prepare, and the daemon's threads, for ever.",
    )
    resolves_per_registry: int = Field(
        default=8,
        gt=0,
        description="Layers opened at once from one registry host; more wait briefly, then are"
        " downloaded, so one tenant's slow registry cannot take every thread.",
    )
    verify_deadline_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A lazily served layer whose every byte has not arrived and been checked"
        " against its image's diff ID within this long is refused (reads fail, no new"
        " containers): it bounds how long an image could pass another image's layer off as"
        " its own (docs/security.md).",
    )
    max_toc_entries: int = Field(
        default=500_000,
        gt=0,
        description="Files and directories of lazily served layers' TOCs kept in memory, over"
        " all layers (about 2 KB each). A layer that does not fit is downloaded instead.",
    )


class FuseConfig(BaseModel):
    """The FUSE mount under ``<root>/fuse``, held by the keeper process across restarts."""

    model_config = ConfigDict(extra="forbid")

    restart_grace_seconds: float = Field(
        default=120.0,
        gt=0,
        description="While no daemon runs (restart, upgrade, crash), reads of running containers"
        " wait this long for the next one, then fail with EIO.",
    )
    keeper: Literal["spawn", "external"] = Field(
        default="spawn",
        description="Who starts the FUSE keeper that holds the mount: the daemon (spawn, in a"
        " session of its own), or someone else (external: `lazy2dfs keeper`, e.g. a container"
        " of its own, so that a restart of the daemon's container keeps the mount); the"
        " daemon then waits for it, and leaves the mount to it when stopping.",
    )
    fill_page_cache: bool = Field(
        default=True,
        description="Put fetched, verified bytes into their files' page cache as they arrive,"
        " so a model loading behind the background fetch reads them without a request"
        " through the daemon (1 GiB model, cold: about half its bytes come this way, the"
        " rest in reads already asked for, which stores leave out). Those pages are"
        " charged to the keeper's memory cgroup, not the reading container's: turn off where"
        " the keeper's cgroup is limited below the models the node loads.",
    )


class RegistryConfig(BaseModel):
    """How registries are reached (credentials come from ~/.docker/config.json)."""

    model_config = ConfigDict(extra="forbid")

    hosts_dir: Path = Field(
        default=Path("/etc/containerd/certs.d"),
        description="containerd hosts.toml directory: mirrors, CAs, client certificates.",
    )
    plain_http: list[str] = Field(
        default_factory=list,
        description="Registries (host:port) reached over plain HTTP; loopback always is.",
    )
    spill_max_bytes: int = Field(
        default=8 * 1024**3,
        ge=0,
        description="Whole blobs a registry or pull-through mirror sends for a range request are"
        " kept under <root>/spill, up to this many bytes, to serve later ranges without"
        " downloading them again; 0 keeps none.",
    )
    spill_idle_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A kept whole blob that no read used for this long is dropped.",
    )
    mirror_warm_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A pull-through mirror that answers a range of a blob it does not hold yet"
        " with the whole blob (the CNCF registry in proxy mode) is left to fetch it from its"
        " origin, and reads of the blob wait up to this long for it to serve ranges, so that"
        " the origin sends the blob once, not once more per node; then its whole answer is"
        " kept. 0 keeps its first whole answer. Below fetch.deadline_seconds.",
    )


class Config(BaseModel):
    """Settings of ``lazy2dfs serve``."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(
        default=Path("/var/lib/lazy2dfs"),
        description="Directory holding snapshots, the metadata database and the FUSE mount.",
    )
    address: Path = Field(
        default=DEFAULT_ADDRESS,
        description="Unix socket containerd's proxy plugin dials (config.toml `address`). The"
        " control socket `lazy2dfs status` and `lazy2dfs pull` ask is beside it, its `.sock`"
        " replaced by `.control.sock`.",
    )
    metrics_address: str | None = Field(
        default=None,
        description="HOST:PORT for Prometheus /metrics, /healthz and /status; unset disables"
        " the endpoint (`lazy2dfs status` still works over the control socket).",
        examples=["127.0.0.1:9880"],
    )
    metrics_image_names: bool = Field(
        default=True,
        description="Name images in /metrics labels and /status on metrics_address, which"
        " answer anyone who reaches them. Off, layers are named by digest only there (and"
        " registry errors left out); the control socket, root's alone, still names them.",
    )
    mirror_address: str | None = Field(
        default=None,
        description="HOST:PORT of the partition mirror, a read-only registry that answers"
        " 2DFS partition tags (model:v1--1.0.2.0) for containerd through hosts.toml; unset"
        " disables it. Loopback only, unless mirror_beyond_loopback is set.",
        examples=["127.0.0.1:5050"],
    )
    mirror_beyond_loopback: bool = Field(
        default=False,
        description="Let mirror_address be a non-loopback address. The mirror answers anyone"
        " who reaches it with what the daemon's registry credentials can pull.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log level printed."
    )
    cache: CacheConfig = CacheConfig()
    fetch: FetchConfig = FetchConfig()
    fuse: FuseConfig = FuseConfig()
    registry: RegistryConfig = RegistryConfig()

    @field_validator("metrics_address", "mirror_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _mirror_on_loopback(self) -> Config:
        """The mirror pulls with the daemon's credentials for whoever asks: by default only
        this machine may ask."""
        address = self.mirror_host_port
        if address is not None and not self.mirror_beyond_loopback and not _loopback(address[0]):
            raise ValueError(
                f"mirror_address {self.mirror_address!r} is not a loopback address: the mirror"
                " answers with the daemon's registry credentials; bind it to 127.0.0.1, or set"
                " mirror_beyond_loopback = true if other machines may pull through it"
            )
        return self

    @property
    def control_address(self) -> Path:
        """The daemon's control socket, beside ``address``: ``lazy2dfs status`` and
        ``lazy2dfs pull`` ask the daemon there (root only, always on while it serves)."""
        return control_address(self.address)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return None if self.metrics_address is None else split_host_port(self.metrics_address)

    @property
    def mirror_host_port(self) -> tuple[str, int] | None:
        return None if self.mirror_address is None else split_host_port(self.mirror_address)


def split_host_port(value: str) -> tuple[str, int]:
    """``("::1", 5000)`` from ``"[::1]:5000"``; ``ValueError`` when it is not HOST:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(exc: ValidationError, source: str) -> InvalidArgumentError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
    )
    return InvalidArgumentError(f"invalid configuration in {source}: {problems}")


def environment_variables() -> dict[str, tuple[str, ...]]:
    """Every ``LAZY2DFS_*`` variable the loader reads, with the option it sets (a path into
    the model: ``("root",)``, ``("cache", "max_bytes")``)."""
    names: dict[str, tuple[str, ...]] = {}
    for name, info in Config.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for field in section.model_fields:
                names[f"{ENV_PREFIX}{name.upper()}__{field.upper()}"] = (name, field)
        else:
            names[ENV_PREFIX + name.upper()] = (name,)
    return names


def _unknown_variables(environ: Mapping[str, str], known: Mapping[str, object]) -> None:
    """A misspelt variable would silently leave its option at the default: refuse it."""
    unknown = sorted(v for v in environ if v.startswith(ENV_PREFIX) and v not in known)
    if not unknown:
        return
    problems = []
    for variable in unknown:
        close = difflib.get_close_matches(variable, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{variable}{hint}")
    raise InvalidArgumentError(
        f"unknown environment variable {'; '.join(problems)}: lazy2dfs reads only the"
        " variables `lazy2dfs config default` names; rename or unset it"
    )


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Builds the configuration; ``path=None`` reads the default file if it exists."""
    values: dict[str, Any] = read_file(path)
    source = str(path or DEFAULT_CONFIG_PATH)
    environ = os.environ if env is None else env
    known = environment_variables()
    _unknown_variables(environ, known)
    for variable, option in known.items():
        if (value := environ.get(variable)) is None:
            continue
        if len(option) == 2:
            values.setdefault(option[0], {})[option[1]] = value
        else:
            values[option[0]] = value
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        raise _describe(exc, f"{source}, environment or flags") from exc
