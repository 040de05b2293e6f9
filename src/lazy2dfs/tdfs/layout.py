"""An image as an OCI image-layout tar (``oci-layout``, ``index.json``, ``blobs/sha256/…``).

``index.json`` names the image index with ``org.opencontainers.image.ref.name`` (the tag, as
skopeo's ``oci-archive:`` and the OCI spec expect) and ``io.containerd.image.name`` (the full
name, which ``ctr images import`` uses). The tar is deterministic (sorted names, fixed times,
owner 0:0) and written under a temporary name, so a failed export leaves no partial file.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from lazy2dfs.registry_client import OCI_INDEX, Reference, sha256_digest
from lazy2dfs.tdfs.tarview import FIXED_MTIME

REF_NAME_ANNOTATION: Final = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION: Final = "io.containerd.image.name"
_LAYOUT: Final = b'{"imageLayoutVersion":"1.0.0"}'


def write_oci_layout(
    out: Path, reference: Reference, index: bytes, blobs: Mapping[str, bytes | Path]
) -> None:
    """Writes ``index`` (an OCI index) and every blob it needs, by digest, to the tar ``out``."""
    top = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_INDEX,
                "digest": sha256_digest(index),
                "size": len(index),
                "annotations": {
                    CONTAINERD_NAME_ANNOTATION: str(reference),
                    REF_NAME_ANNOTATION: reference.tag or "latest",
                },
            }
        ],
    }
    members: dict[str, bytes | Path] = {
        f"blobs/{digest.replace(':', '/', 1)}": content for digest, content in blobs.items()
    }
    members[f"blobs/{sha256_digest(index).replace(':', '/', 1)}"] = index
    members["oci-layout"] = _LAYOUT
    members["index.json"] = json.dumps(top, separators=(",", ":")).encode()
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            for directory in ("blobs", "blobs/sha256"):
                archive.addfile(_info(directory, tarfile.DIRTYPE, 0))
            for name in sorted(members):
                _add(archive, name, members[name])
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _add(archive: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    if isinstance(content, bytes):
        archive.addfile(_info(name, tarfile.REGTYPE, len(content)), io.BytesIO(content))
        return
    with content.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        archive.addfile(_info(name, tarfile.REGTYPE, size), source)


def _info(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, FIXED_MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info
