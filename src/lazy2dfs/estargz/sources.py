"""Where the writer's entries come from: a tar archive or a directory tree.

Both give the same thing, a list of :class:`SourceEntry` (a tar header with a cleaned name and a
way to open its payload), so the writer only orders and encodes. Archives are read with random
access because prioritised files must be moved to the front.
"""

from __future__ import annotations

import functools
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lazy2dfs.estargz.errors import SourceError, UnsafePathError
from lazy2dfs.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME, clean_name

_RESERVED = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_SUPPORTED_TYPES = frozenset(
    {
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.LNKTYPE,
        tarfile.SYMTYPE,
        tarfile.DIRTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
    }
)


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """A tar header whose ``name`` (and hardlink target) is clean, and its payload opener."""

    info: tarfile.TarInfo
    open_payload: Callable[[], IO[bytes]] | None


def entries_from_tar(archive: tarfile.TarFile) -> list[SourceEntry]:
    """The archive's entries in order; a later entry with the same name replaces an earlier one.

    Names that the blob reserves (the TOC, landmarks) are dropped so that converting an eStargz
    blob again yields one TOC, as upstream does.
    """
    by_name: dict[str, SourceEntry] = {}
    try:
        members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SourceError(f"cannot read input tar: {err}") from None
    for member in members:
        if member.type not in _SUPPORTED_TYPES or member.issparse():
            raise SourceError(f"{member.name!r}: unsupported tar entry type {member.type!r}")
        info = _cleaned(member)
        if info.name in _RESERVED:
            continue
        opener = _tar_opener(archive, member) if info.isreg() else None
        by_name.pop(info.name, None)
        by_name[info.name] = SourceEntry(info, opener)
    return list(by_name.values())


def entries_from_directory(root: Path) -> list[SourceEntry]:
    """The tree under ``root`` in sorted order; ``uname``/``gname`` are left empty.

    Files sharing an inode become hardlinks to the first path seen, as tar does.
    """
    if not root.is_dir():
        raise SourceError(f"{root} is not a directory")
    entries: list[SourceEntry] = []
    first_path_of_inode: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for base in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath, base)
            name = path.relative_to(root).as_posix()
            if name in _RESERVED:
                continue
            entries.append(_directory_entry(path, name, first_path_of_inode))
    return entries


def _directory_entry(
    path: Path, name: str, first_path_of_inode: dict[tuple[int, int], str]
) -> SourceEntry:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    opener: Callable[[], IO[bytes]] | None = None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in first_path_of_inode:
            info.type, info.linkname = tarfile.LNKTYPE, first_path_of_inode[inode]
        else:
            first_path_of_inode[inode] = name
            info.type, info.size = tarfile.REGTYPE, st.st_size
            opener = functools.partial(_open_file, path)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        raise SourceError(f"{path}: cannot be stored in a tar (socket?)")
    return SourceEntry(info, opener)


def _open_file(path: Path) -> IO[bytes]:
    return path.open("rb")


def _cleaned(member: tarfile.TarInfo) -> tarfile.TarInfo:
    info = member.replace(deep=True)  # never alter the archive's own member list
    try:
        info.name = clean_name(member.name)
        if member.islnk():
            info.linkname = clean_name(member.linkname)
    except UnsafePathError as err:
        raise SourceError(str(err)) from None
    if member.type in (tarfile.AREGTYPE, tarfile.CONTTYPE):
        info.type = tarfile.REGTYPE
    return info


def _tar_opener(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        payload = archive.extractfile(member)
        if payload is None:
            raise SourceError(f"{member.name!r} has no payload")
        return payload

    return open_member
