"""Go builds of upstream test code against the sources Debian ships, offline."""

import os
from pathlib import Path

GOCODE = Path("/usr/share/gocode")  # Debian's golang-*-dev packages install sources here


def go_env(gopath: Path) -> dict[str, str]:
    """This environment, with Go in GOPATH mode over ``gopath`` and Debian's sources, and
    without network or cgo; the build cache is shared between runs."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{gopath}:{GOCODE}",
        GOCACHE=os.environ.get("CONFORMANCE_GOCACHE", "/tmp/lazy2dfs-conformance-gocache"),
        GOFLAGS="",
        GOPROXY="off",
        CGO_ENABLED="0",
    )
    return env
