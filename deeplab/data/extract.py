"""Safe extraction of tar (plain or gzip) and zip archives.

Every member is checked before it is written: absolute paths, drive letters, ``..`` components, links
whose target leaves the destination (resolved through the links already extracted, as the kernel would
follow them, the rule of PEP 706's ``data`` filter), writes through links, and device files, FIFOs or
sockets are refused with :class:`UnsafeArchiveError` naming the archive and the member. Files are written
by this code (never ``extractall``), so nothing lands outside the destination and no permission bits,
owners or timestamps from the archive are applied. A damaged archive (truncated data, a member that is
both a file and a folder) ends with :class:`ArchiveError` naming the archive, the member and the fix, and
so does an archive that expands to more than ``MAX_RATIO`` x its size + ``SLACK_BYTES`` (a decompression
bomb: the official archives hold JPEG/PNG images and expand to about their own size). Callers extract
into a scratch folder they throw away on error.
"""
from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable

from deeplab.errors import PipelineError

Keep = Callable[[str], bool]  # member name -> extract it?
MAX_RATIO = 4                 # expanded bytes allowed per byte of archive ...
SLACK_BYTES = 64 << 20        # ... plus this much, so tiny archives are not refused for their headers
CHUNK = 1 << 20
FIX = "delete it and run the download stage again"


class ArchiveError(PipelineError):
    """An archive is damaged or not what it claims; the message names the archive, the member and the fix."""

    exit_code = 1


class UnsafeArchiveError(ArchiveError, ValueError):
    """An archive member would escape the destination or is not a plain file, folder or inner link."""


def extract(archive: Path, dest: Path, keep: Keep | None = None) -> int:
    """Extract ``archive`` (.tar, .tgz, .tar.gz, .zip) into ``dest``; return the number of files written.
    ``keep`` selects members by name (e.g. to skip a split that is never used)."""
    dest.mkdir(parents=True, exist_ok=True)
    budget = Budget(archive, MAX_RATIO * archive.stat().st_size + SLACK_BYTES)
    if zipfile.is_zipfile(archive):
        written = _guarded(archive, lambda: _extract_zip(archive, dest, keep, budget))
    elif tarfile.is_tarfile(archive):
        written = _guarded(archive, lambda: _extract_tar(archive, dest, keep, budget))
    else:
        raise ArchiveError(f"{archive}: neither a tar nor a zip archive (corrupt or wrong file?); {FIX}")
    _check_links(archive, dest)
    return written


class Budget:
    """Counts the bytes written and stops an extraction that expands beyond its bound."""

    def __init__(self, archive: Path, limit: int) -> None:
        self.archive, self.limit, self.used = archive, limit, 0

    def copy(self, src: IO[bytes], out: IO[bytes], name: str) -> None:
        while chunk := src.read(CHUNK):
            self.used += len(chunk)
            if self.used > self.limit:
                raise ArchiveError(f"{self.archive}: expands to more than {self.limit >> 20} MiB (at member "
                                   f"{name!r}), over {MAX_RATIO}x its size: a decompression bomb or not the "
                                   f"official archive; {FIX}")
            out.write(chunk)


def _guarded(archive: Path, work: Callable[[], int]) -> int:
    """Run an extraction, turning the readers' low-level errors into one line naming the archive."""
    try:
        return work()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ArchiveError(f"{archive}: damaged or truncated ({type(error).__name__}: {error}); {FIX}") from error


def safe_target(dest: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` goes: its folder resolved through the links already extracted, its last
    component not followed. Raises when the name is absolute, climbs with ``..`` or lands outside ``dest``."""
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} climbs out with '..'; refusing the archive")
    root = os.path.realpath(dest)
    folder = os.path.realpath(os.path.join(root, *parts[:-1]))
    if not _inside(folder, root):
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves to {folder}, outside the destination"
                                 " (through a link); refusing the archive")
    return Path(folder, parts[-1]) if parts else Path(root)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _member(archive: Path, name: str, write: Callable[[], None]) -> None:
    """Write one member; a clash with what is already there (a file where a folder is, a second link of
    the same name, ...) is named instead of surfacing as a raw OSError."""
    try:
        write()
    except OSError as error:
        raise ArchiveError(f"{archive}: member {name!r} cannot be written ({error.strerror}: a file and a "
                           f"folder of the same name, or a member repeated); the archive is damaged, {FIX}") from error


def _write_file(src: IO[bytes], target: Path, name: str, budget: Budget) -> None:
    """A regular file at ``target``, never through a link standing there (O_NOFOLLOW)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        budget.copy(src, out, name)


def _extract_tar(archive: Path, dest: Path, keep: Keep | None, budget: Budget) -> int:
    written = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streamed: one pass, even for a gzip-compressed archive
            if keep is not None and not keep(member.name):
                continue
            target = safe_target(dest, member.name, archive)
            if member.isdir():
                _member(archive, member.name, lambda: target.mkdir(parents=True, exist_ok=True))
            elif member.isfile():
                with tar.extractfile(member) as src:
                    _member(archive, member.name, lambda: _write_file(src, target, member.name, budget))
                written += 1
            elif member.issym() or member.islnk():
                _link(archive, dest, member, target)
            else:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, FIFO or other "
                                         "special file; refusing the archive")
    return written


def _link(archive: Path, dest: Path, member: tarfile.TarInfo, target: Path) -> None:
    """Create a symlink or hard link whose target, resolved on disk from where the link is created,
    stays inside ``dest``."""
    root = os.path.realpath(dest)
    if os.path.isabs(member.linkname):
        raise UnsafeArchiveError(f"{archive}: link {member.name!r} points to the absolute path "
                                 f"{member.linkname!r}; refusing the archive")
    base = target.parent if member.issym() else Path(root)  # hard links name another member
    resolved = os.path.realpath(os.path.join(base, member.linkname))
    if not _inside(resolved, root):
        raise UnsafeArchiveError(f"{archive}: link {member.name!r} -> {member.linkname!r} resolves to "
                                 f"{resolved}, outside the destination; refusing the archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        _member(archive, member.name, lambda: os.symlink(member.linkname, target))
    else:
        _member(archive, member.name, lambda: os.link(resolved, target, follow_symlinks=False))


def _check_links(archive: Path, dest: Path) -> None:
    """After the last member: every link must still resolve inside ``dest`` (a later link can change where
    an earlier one leads)."""
    root = os.path.realpath(dest)
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(os.path.realpath(path), root):
                raise UnsafeArchiveError(f"{archive}: link {os.path.relpath(path, dest)!r} resolves to "
                                         f"{os.path.realpath(path)}, outside the destination; refusing the archive")


def _extract_zip(archive: Path, dest: Path, keep: Keep | None, budget: Budget) -> int:
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
                _member(archive, info.filename, lambda: target.mkdir(parents=True, exist_ok=True))
                continue
            with zf.open(info) as src:
                _member(archive, info.filename, lambda: _write_file(src, target, info.filename, budget))
            written += 1
    return written
