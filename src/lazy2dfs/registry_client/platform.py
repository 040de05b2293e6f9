"""Which manifest of an image index this machine can run.

Names follow Go's GOOS/GOARCH as OCI does (``amd64``, ``arm64``, ``arm`` + ``v7`` ...). An
``arm64`` manifest without a variant is the same as ``arm64/v8``; otherwise a variant must match
exactly, and a manifest without a variant matches any wanted variant (containerd is equally
lenient because most images leave it out).
"""

from __future__ import annotations

import platform as _host
from dataclasses import dataclass
from typing import Final

from lazy2dfs.errors import InvalidArgumentError

_MACHINE_TO_OCI: Final = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
    "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}
_DEFAULT_VARIANT: Final = {"arm64": "v8"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def normalized(self) -> Platform:
        variant = self.variant or _DEFAULT_VARIANT.get(self.architecture, "")
        return Platform(self.os.lower(), self.architecture.lower(), variant.lower())

    def matches(self, candidate: Platform) -> bool:
        """True when a manifest built for ``candidate`` is what ``self`` asks for."""
        want, have = self.normalized(), candidate.normalized()
        if (want.os, want.architecture) != (have.os, have.architecture):
            return False
        return not have.variant or not want.variant or want.variant == have.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """This machine as OCI names it; always ``linux`` because containers here are Linux."""
    machine = _host.machine().lower()
    architecture, variant = _MACHINE_TO_OCI.get(machine, (machine, ""))
    return Platform("linux", architecture, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` as in ``--platform linux/arm64``."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgumentError(f"platform {text!r} is not os/arch[/variant]")
    return Platform(*parts)
