"""Safe extraction of tar (plain or gzip) and zip archives.

Every member is checked before it is written: absolute paths, drive letters, ``..`` components, links
whose target leaves the destination, writes through such links, and device files, FIFOs or sockets are
refused with :class:`UnsafeArchiveError` naming the archive and the member. Files are written by this
code (never ``extractall``), so nothing lands outside the destination and no permission bits, owners or
timestamps from the archive are applied. Callers extract into a scratch folder they throw away on error.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

from deeplab.errors import PipelineError

Keep = Callable[[str], bool]  # member name -> extract it?


class UnsafeArchiveError(PipelineError, ValueError):
    """An archive member would escape the destination or is not a plain file, folder or inner link."""

    exit_code = 1


def extract(archive: Path, dest: Path, keep: Keep | None = None) -> int:
    """Extract ``archive`` (.tar, .tgz, .tar.gz, .zip) into ``dest``; return the number of files written.
    ``keep`` selects members by name (e.g. to skip a split that is never used)."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, dest, keep)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, dest, keep)
    raise UnsafeArchiveError(f"{archive}: neither a tar nor a zip archive (corrupt or wrong file?)")


def safe_target(dest: Path, name: str, archive: Path) -> Path:
    """The path ``name`` will have under ``dest``; raises when it is absolute, climbs with ``..`` or
    resolves (through links already extracted) outside ``dest``."""
    parts = re.split(r"[\\/]+", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} climbs out with '..'; refusing the archive")
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, *[p for p in parts if p not in ("", ".")]))
    if target != root and not target.startswith(root + os.sep):
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves to {target}, outside the destination"
                                 " (through a link); refusing the archive")
    return Path(target)


def _extract_tar(archive: Path, dest: Path, keep: Keep | None) -> int:
    written = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streamed: one pass, even for a gzip-compressed archive
            if keep is not None and not keep(member.name):
                continue
            target = safe_target(dest, member.name, archive)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written += 1
            elif member.issym() or member.islnk():
                _link(archive, dest, member, target)
            else:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, FIFO or other "
                                         "special file; refusing the archive")
    return written


def _link(archive: Path, dest: Path, member: tarfile.TarInfo, target: Path) -> None:
    """Create a symlink or hard link whose target stays inside ``dest``."""
    if member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeArchiveError(f"{archive}: link {member.name!r} points to the absolute path "
                                     f"{member.linkname!r}; refusing the archive")
        relative_to_dest = os.path.join(os.path.dirname(member.name), member.linkname)
    else:
        relative_to_dest = member.linkname  # hard links name another member
    pointee = os.path.normpath(relative_to_dest)
    if pointee.startswith("..") or os.path.isabs(pointee):
        raise UnsafeArchiveError(f"{archive}: link {member.name!r} -> {member.linkname!r} points outside "
                                 "the destination; refusing the archive")
    resolved = safe_target(dest, pointee, archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        os.symlink(member.linkname, target)
    else:
        os.link(resolved, target)


def _extract_zip(archive: Path, dest: Path, keep: Keep | None) -> int:
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if keep is not None and not keep(info.filename):
                continue
            target = safe_target(dest, info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link or special file; "
                                         "zip archives of these datasets hold only files and folders")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            written += 1
    return written
