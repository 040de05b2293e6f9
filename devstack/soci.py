"""The SOCI snapshotter (Debian unstable's ``soci-snapshotter`` 0.4.1, unpacked into the checkout
by ``make soci``), for benchmarks that compare lazy2dfs with it.

SOCI lazily loads unconverted gzip layers through an index made beside the image: ``soci
create`` writes a zTOC per layer (the gzip stream's checkpoints every span) and an index
manifest naming them, and ``soci push`` uploads both with the image's manifest as their subject
(0.4.1 has index manifests v1 only; a registry without the referrers API, as docker-registry
2.8, gets the OCI fallback tag ``sha256-<digest>``). The snapshotter finds the index from the
image's manifest digest, which CRI passes in its snapshot labels.

0.4.1 keeps its content store and its CLI's artifacts database at the fixed path
``/var/lib/soci-snapshotter-grpc``. ``SociRoot`` binds a private directory there while it is
entered (the host's root mount is private, so nothing propagates elsewhere), so that every run
starts cold and nothing is left on the host; one SOCI stack runs at a time.

Its registry client fetches the index and zTOCs over HTTPS whatever the host (oras-go), but
layers over plain HTTP when the host is a loopback address (containerd's resolver): so a
node here reaches a TLS registry for the index and the plain one (the same storage) for layer
ranges, through the resolver's mirror setting.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import TracebackType

from devstack.mounts import detach_under
from devstack.process import ChildProcess
from lazy2dfs.errors import UnavailableError

REPO = Path(__file__).resolve().parents[1]
SOCI_BIN = REPO / ".cache" / "debian-unstable" / "soci" / "usr" / "bin"
FIXED_ROOT = Path("/var/lib/soci-snapshotter-grpc")
START_TIMEOUT = 30.0
CLI_TIMEOUT = 1800.0
INSTALL_HINT = "run 'make soci'"


def soci_binary(name: str) -> str:
    path = SOCI_BIN / name
    if not os.access(path, os.X_OK):
        raise UnavailableError(f"{path} is missing: {INSTALL_HINT}")
    return str(path)


class SociRoot:
    """``directory`` bound at SOCI's fixed root while entered; on exit whatever SOCI mounted
    below it is detached and the bind undone."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __enter__(self) -> SociRoot:
        self.directory.mkdir(parents=True, exist_ok=True)
        FIXED_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
        if any(FIXED_ROOT.iterdir()) or os.path.ismount(FIXED_ROOT):
            raise UnavailableError(
                f"{FIXED_ROOT} is in use (another SOCI snapshotter, or one left mounted):"
                f" stop it, or run 'umount -l {FIXED_ROOT}'"
            )
        subprocess.run(["mount", "--bind", str(self.directory), str(FIXED_ROOT)], check=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        detach_under(FIXED_ROOT)  # the bind itself included, last


def soci_cli(containerd_address: Path, *args: str) -> str:
    """``soci`` against a containerd; SOCI's root must be bound (``SociRoot``)."""
    argv = [soci_binary("soci"), "--address", str(containerd_address), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    if done.returncode != 0:
        raise UnavailableError(f"{' '.join(argv)} failed:\n{done.stderr}{done.stdout}")
    return done.stdout


def daemon_config(tls_host: str, plain_host: str) -> str:
    """The snapshotter's TOML: upstream's defaults, with layers of ``tls_host``'s images read
    from ``plain_host`` (the same registry storage, plain HTTP)."""
    return f'[[resolver.host."{tls_host}".mirrors]]\nhost = "{plain_host}"\ninsecure = true\n'


class LocalSoci:
    """``soci-snapshotter-grpc`` with its root ``workdir/root`` (bound at SOCI's fixed root),
    its socket ``workdir/soci.sock``, trusting ``ca_file`` for HTTPS; stopped on exit, with
    whatever it left mounted detached."""

    def __init__(self, workdir: Path, config: str, ca_file: Path) -> None:
        self.workdir = workdir
        self.root = FIXED_ROOT
        self.address = workdir / "soci.sock"
        self.config = config
        self.ca_file = ca_file
        self.process: ChildProcess | None = None
        self._bound: SociRoot | None = None

    def __enter__(self) -> LocalSoci:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._bound = SociRoot(self.workdir / "root").__enter__()
        try:
            config = self.workdir / "config.toml"
            config.write_text(self.config)
            argv = [soci_binary("soci-snapshotter-grpc"), "-root", str(self.root)]
            argv += ["-address", str(self.address), "-config", str(config)]
            env = dict(os.environ, SSL_CERT_FILE=str(self.ca_file))
            log = self.workdir / "soci.log"
            self.process = ChildProcess("soci-snapshotter-grpc", argv, log, env)
            self.process.wait_until(self.address.exists, START_TIMEOUT, "serving")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._bound is not None:
            self._bound.__exit__(None, None, None)
            self._bound = None
