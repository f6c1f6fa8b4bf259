"""Safe extraction: hostile tar and zip members are refused and nothing lands outside the destination."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from deeplab.data.extract import UnsafeArchiveError, extract
from deeplab.data.prepare import PrepareError, prepare


def make_tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """members: (name, kind, data or link target); kind in file, dir, sym, hard, chr, fifo."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
             "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(data)
                tar.addfile(info)
            elif kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))  # type: ignore[arg-type]
            else:
                tar.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """members: (name, data, unix mode bits or 0)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """(destination, a sibling folder that must stay untouched)."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "dest", tmp_path / "outside"


HOSTILE_TARS = {
    "absolute path": [("/tmp/evil.txt", "file", b"x")],
    "dot-dot": [("ok/../../outside/evil.txt", "file", b"x")],
    "symlink to absolute path": [("link", "sym", "/etc")],
    "symlink climbing out": [("a/link", "sym", "../../outside")],
    "write through a symlink": [("link", "sym", "../outside"), ("link/evil.txt", "file", b"x")],
    "hard link outside": [("hl", "hard", "../outside/secret")],
    "character device": [("dev/null", "chr", b"")],
    "fifo": [("pipe", "fifo", b"")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_members_are_refused(case: str, arena: tuple[Path, Path], tmp_path: Path) -> None:
    dest, outside = arena
    archive = make_tar(tmp_path / "evil.tar", [("fine.txt", "file", b"ok")] + HOSTILE_TARS[case])
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, dest)
    bad_member = HOSTILE_TARS[case][0][0]
    assert str(archive) in str(err.value) and repr(bad_member)[1:-1] in str(err.value)
    assert list(outside.iterdir()) == [] and not Path("/tmp/evil.txt").exists()


HOSTILE_ZIPS = {
    "absolute path": [("/tmp/evil.txt", b"x", 0)],
    "dot-dot": [("a/../../outside/evil.txt", b"x", 0)],
    "windows dot-dot": [("a\\..\\..\\outside\\evil.txt", b"x", 0)],
    "drive letter": [("C:/evil.txt", b"x", 0)],
    "symlink entry": [("link", b"../outside", stat.S_IFLNK | 0o777)],
    "device entry": [("dev", b"", stat.S_IFCHR | 0o600)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_members_are_refused(case: str, arena: tuple[Path, Path], tmp_path: Path) -> None:
    dest, outside = arena
    archive = make_zip(tmp_path / "evil.zip", [("fine.txt", b"ok", 0)] + HOSTILE_ZIPS[case])
    with pytest.raises(UnsafeArchiveError, match="refusing|links or special|link or special"):
        extract(archive, dest)
    assert list(outside.iterdir()) == [] and not Path("/tmp/evil.txt").exists()


def test_benign_archives_extract_with_inner_links(arena: tuple[Path, Path], tmp_path: Path) -> None:
    dest, _ = arena
    archive = make_tar(tmp_path / "ok.tar", [("d", "dir", b""), ("d/a.txt", "file", b"hello"),
                                             ("d/same", "sym", "a.txt"), ("d/hard", "hard", "d/a.txt")])
    assert extract(archive, dest) == 1
    assert (dest / "d/same").read_text() == "hello" and (dest / "d/hard").read_text() == "hello"
    zipped = make_zip(tmp_path / "ok.zip", [("z/b.txt", b"world", stat.S_IFREG | 0o644)])
    assert extract(zipped, dest / "z2") == 1 and (dest / "z2/z/b.txt").read_text() == "world"


def test_not_an_archive_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"<html>login</html>")
    with pytest.raises(UnsafeArchiveError, match="neither a tar nor a zip"):
        extract(tmp_path / "x.zip", tmp_path / "d")


def test_prepare_refuses_a_hostile_archive_and_leaves_no_output(tmp_path: Path) -> None:
    """A malicious archive under an official name: prepare stops, OUT is not created, no scratch left."""
    raw = tmp_path / "raw"
    raw.mkdir()
    make_zip(raw / "ADEChallengeData2016.zip", [("ADEChallengeData2016/../../../escape.txt", b"x", 0)])
    with pytest.raises(UnsafeArchiveError):
        prepare("ade20k", raw, tmp_path / "prepared" / "ade20k", workers=1)
    assert not (tmp_path / "escape.txt").exists() and not Path(tmp_path.parent / "escape.txt").exists()
    assert list((tmp_path / "prepared").iterdir()) == []


def test_prepare_names_missing_archives(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="benchmark.tgz.*pipeline.download --dataset voc"):
        (tmp_path / "VOCtrainval_11-May-2012.tar").write_bytes(b"")
        prepare("voc", tmp_path, tmp_path / "out")


def test_prepare_refuses_an_output_folder_holding_the_archives(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    for name in ("VOCtrainval_11-May-2012.tar", "benchmark.tgz"):
        (tmp_path / "raw" / name).write_bytes(b"archive")
    with pytest.raises(PrepareError, match="output folder of its own"):
        prepare("voc", tmp_path / "raw", tmp_path)
    assert (tmp_path / "raw" / "benchmark.tgz").exists()
