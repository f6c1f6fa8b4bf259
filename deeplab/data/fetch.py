"""Download archives: stream to a temp name, resume with HTTP Range, retry with backoff, try mirrors in
order, verify every known checksum, then rename. A verified file already in place is never fetched again.

Sources are full URLs (``http(s)://``, ``file://``) or local folders holding the file under its official
name. Credentials never pass through here except as an opaque ``opener`` (the Cityscapes session).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from deeplab.errors import PipelineError
from deeplab.data.sources import ArchiveSpec

CHUNK = 1 << 20  # bytes per read; large enough that Python overhead is negligible next to the network


class DownloadError(PipelineError):
    """No source delivered a file with the expected checksum; the message lists every attempt."""

    exit_code = 1


class ChecksumError(DownloadError):
    """A file's content does not match its catalogue checksum."""


@dataclass(frozen=True)
class FetchOptions:
    retries: int = 4          # attempts per source for transient errors (connection reset, timeout, 5xx)
    backoff_s: float = 2.0    # first wait between attempts; doubles each time
    timeout_s: float = 60.0   # socket timeout of one request
    progress: bool = True     # progress lines on stderr


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each hashlib algorithm, computed in one pass over the file."""
    hashers = {algo: hashlib.new(algo) for algo in set(algorithms) | {"sha256"}}
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(block)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def checksum_problem(spec: ArchiveSpec, path: Path) -> tuple[str | None, str]:
    """(None, sha256) when ``path`` matches every checksum of ``spec``, else (a description, sha256)."""
    expected = spec.checksums()
    got = file_digests(path, expected)
    for algo, digest in expected.items():
        if not got[algo].startswith(digest) or (algo != "sha256" and got[algo] != digest):
            prefix = " (prefix)" if algo == "sha256" and len(digest) < 64 else ""
            return f"{algo} expected {digest}{prefix}, got {got[algo]}", got["sha256"]
    if spec.size is not None and path.stat().st_size != spec.size:
        return f"size expected {spec.size} bytes, got {path.stat().st_size}", got["sha256"]
    return None, got["sha256"]


def source_urls(spec: ArchiveSpec, override: str | None) -> list[str]:
    """Where to look for ``spec``: only the override when one is given (a lab mirror or a test server
    must never silently fall back to the internet), else the catalogue's URLs in order."""
    if not override:
        return list(spec.urls)
    if "://" in override:
        return [override.rstrip("/") + "/" + urllib.parse.quote(spec.filename)]
    return [str(Path(override).expanduser().resolve() / spec.filename)]


def fetch(spec: ArchiveSpec, dest_dir: Path, sources: list[str], options: FetchOptions = FetchOptions(),
          opener: urllib.request.OpenerDirector | None = None) -> tuple[Path, str]:
    """Place a verified copy of ``spec`` in ``dest_dir``; return (its path, its sha256).

    Each source is tried in order; transient failures are retried with backoff and resume where the
    transfer stopped. Raises :class:`DownloadError` naming every source and what went wrong there.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.filename
    if final.exists():
        problem, sha256 = checksum_problem(spec, final)
        if problem is None:
            _say(options, f"{spec.filename}: already present and verified, not fetched again")
            return final, sha256
        bad = final.with_name(final.name + ".bad")
        _say(options, f"{final}: {problem}; moved to {bad.name}, fetching again")
        final.replace(bad)
    part = dest_dir / (spec.filename + ".part")
    failures = []
    for source in sources:
        # a leftover part (an earlier run, another mirror) may be what is wrong: then one clean retry
        for fresh_start in ((False, True) if part.exists() else (True,)):
            try:
                _fetch_one(spec, source, part, options, opener)
            except (OSError, http.client.HTTPException, DownloadError) as err:
                failures.append(f"  {public_source(source)}: {err}")
                break
            problem, sha256 = checksum_problem(spec, part)
            if problem is None:
                part.replace(final)
                return final, sha256
            problem += _html_hint(part)
            part.unlink()  # never resume onto bytes that are known to be wrong
            if fresh_start:
                failures.append(f"  {public_source(source)}: checksum mismatch for {spec.filename}: {problem}")
    if not sources:
        failures.append("  (no source configured)")
    kind = ChecksumError if failures and all("checksum mismatch" in f for f in failures) else DownloadError
    raise kind(f"could not obtain {spec.filename}; tried:\n" + "\n".join(failures)
               + "\nPoint --source (or DEEPLAB_MIRROR) at a folder or URL base that holds it.")


def _fetch_one(spec: ArchiveSpec, source: str, part: Path, options: FetchOptions,
               opener: urllib.request.OpenerDirector | None) -> None:
    """Fill ``part`` from one source, retrying transient errors; 4xx and missing files fail at once."""
    if "://" not in source or source.startswith("file://"):
        local = Path(urllib.parse.unquote(urllib.parse.urlparse(source).path) if "://" in source else source)
        if not local.is_file():
            raise DownloadError(f"no such file {local}")
        _copy(local, part, spec.filename, options)
        return
    for attempt in range(options.retries):
        try:
            _stream(source, part, spec, options, opener)
            return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise DownloadError(f"HTTP {err.code} {err.reason}") from None
            last: Exception = err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout) as err:
            last = err
        if attempt + 1 < options.retries:
            wait = options.backoff_s * 2 ** attempt
            _say(options, f"{spec.filename}: {last!r} from {public_source(source)}; retrying in {wait:.0f} s")
            time.sleep(wait)
    raise DownloadError(f"gave up after {options.retries} attempts, last error {last!r}")


def _stream(url: str, part: Path, spec: ArchiveSpec, options: FetchOptions,
            opener: urllib.request.OpenerDirector | None) -> None:
    """One HTTP request appending to ``part`` from where it stops (Range); restarts if Range is ignored."""
    have = part.stat().st_size if part.exists() else 0
    if spec.size is not None and have >= spec.size:
        if have == spec.size:
            return  # complete from an earlier attempt; the checksum decides
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = (opener or urllib.request.build_opener()).open(request, timeout=options.timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part is complete
            return
        raise
    with response:
        resumed = have and response.status == 206
        if resumed and not response.headers.get("Content-Range", f"bytes {have}-").startswith(f"bytes {have}-"):
            part.unlink()  # the server sent another piece than asked: start clean rather than splice
            raise DownloadError(f"asked for bytes {have}- but got {response.headers['Content-Range']}")
        if have and not resumed:
            _say(options, f"{spec.filename}: server ignored the Range request, starting over")
        length = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(length) if length else spec.size
        _check_not_html(response, spec, have if resumed else 0)
        with open(part, "ab" if resumed else "wb") as out:
            _pump(response, out, spec.filename, total, options)
        if length is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _check_not_html(response: http.client.HTTPResponse, spec: ArchiveSpec, offset: int) -> None:
    """A login page or error page served with status 200 instead of the archive (Cityscapes does this
    after a failed login) is refused before it is written anywhere."""
    kind = response.headers.get("Content-Type", "")
    if offset == 0 and kind.startswith("text/html") and not spec.filename.endswith((".html", ".htm")):
        raise DownloadError(f"the server sent an HTML page (Content-Type {kind}) instead of "
                            f"{spec.filename}: a login or error page, not the archive")


def _pump(src, out, name: str, total: int | None, options: FetchOptions) -> None:
    """Copy ``src`` to ``out`` in chunks, printing progress at most every 2 seconds."""
    progress = _Progress(name, out.tell(), total, options.progress)
    while block := src.read(CHUNK):
        out.write(block)
        progress.advance(len(block))
    out.flush()
    os.fsync(out.fileno())
    progress.done()


def _copy(local: Path, part: Path, name: str, options: FetchOptions) -> None:
    with open(local, "rb") as src, open(part, "wb") as out:
        _pump(src, out, name, local.stat().st_size, options)


class _Progress:
    """Plain progress lines on stderr (works in logs and terminals alike, no extra dependency)."""

    def __init__(self, name: str, start: int, total: int | None, enabled: bool) -> None:
        self.name, self.done_bytes, self.total, self.enabled = name, start, total, enabled
        self.start, self.t0, self.last = start, time.monotonic(), 0.0

    def advance(self, n: int) -> None:
        self.done_bytes += n
        if self.enabled and time.monotonic() - self.last >= 2.0:
            self.last = time.monotonic()
            self._line()

    def done(self) -> None:
        if self.enabled:
            self._line()

    def _line(self) -> None:
        mib = self.done_bytes / 2**20
        rate = (self.done_bytes - self.start) / 2**20 / max(time.monotonic() - self.t0, 1e-6)
        share = f"/{self.total / 2**20:.1f} MiB ({100 * self.done_bytes / self.total:.0f}%)" \
            if self.total else " MiB"
        print(f"  {self.name}: {mib:.1f}{share} {rate:.1f} MiB/s", file=sys.stderr, flush=True)


def _html_hint(path: Path) -> str:
    """Name the usual cause when a 'download' is really a web page (failed login, error page)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return " (the file is an HTML page, not an archive: a login or error page)"
    return ""


def public_source(source: str) -> str:
    """A source without any user:password@ part, for messages."""
    parts = urllib.parse.urlsplit(source)
    if parts.password or parts.username:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urllib.parse.urlunsplit(parts) if "://" in source else source


def _say(options: FetchOptions, message: str) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)
