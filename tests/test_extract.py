"""Safe extraction: hostile tar and zip members are refused and nothing lands outside the destination."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from deeplab.data.extract import ArchiveError, UnsafeArchiveError, extract
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


CHAINED_LINKS = {  # each link lexically inside, but the chain leaves once followed on disk
    "chain through an inner link": [("a/b/c/up", "sym", "../../.."), ("esc", "sym", "a/b/c/up/../../../outside")],
    "same name, another folder": [("d", "sym", "a/b"), ("a/b", "dir", b""), ("d/l", "sym", "../../../outside")],
}


@pytest.mark.parametrize("case", sorted(CHAINED_LINKS))
def test_links_are_resolved_through_what_is_already_extracted(case: str, arena: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    dest, outside = arena
    archive = make_tar(tmp_path / "chain.tar", CHAINED_LINKS[case])
    with pytest.raises(UnsafeArchiveError, match="outside the destination"):
        extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_a_link_changed_after_the_fact_is_caught_at_the_end(arena: tuple[Path, Path], tmp_path: Path) -> None:
    """'esc' points into 'a/b' (inside); later 'a/b' becomes a link that leaves: the final check refuses."""
    dest, _ = arena
    archive = make_tar(tmp_path / "late.tar", [("a", "dir", b""), ("esc", "sym", "a/b/x"),
                                               ("a/b", "sym", "../../outside")])
    with pytest.raises(UnsafeArchiveError, match="outside the destination"):
        extract(archive, dest)


def truncated_tar(path: Path) -> Path:
    """A tar whose header declares 4096 bytes of data of which only 1000 follow."""
    info = tarfile.TarInfo("big.bin")
    info.size = 4096
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + b"x" * 1000)
    return path


def zip_missing_data(path: Path) -> Path:
    """A zip whose central directory declares a member size its data lacks."""
    make_zip(path, [("ok.txt", b"fine", 0), ("big.bin", b"y" * 5000, 0)])
    data = path.read_bytes()
    cut = data.index(b"y" * 100) + 100  # keep the local header and 100 bytes of the member's data
    directory = data[data.index(b"PK\x01\x02"):]
    shift = len(data) - len(directory) - cut
    end = bytearray(directory[directory.index(b"PK\x05\x06"):])
    offset = int.from_bytes(end[16:20], "little") - shift
    end[16:20] = offset.to_bytes(4, "little")
    path.write_bytes(data[:cut] + directory[:directory.index(b"PK\x05\x06")] + bytes(end))
    return path


DAMAGED = {
    "tar: a file, then a folder of the same name": lambda p: make_tar(p.with_suffix(".tar"), [
        ("x", "file", b"1"), ("x/y", "file", b"2")]),
    "tar: a folder, then a file of the same name": lambda p: make_tar(p.with_suffix(".tar"), [
        ("x", "dir", b""), ("x", "file", b"2")]),
    "zip: a file, then a folder of the same name": lambda p: make_zip(p.with_suffix(".zip"), [
        ("x", b"1", 0), ("x/y", b"2", 0)]),
    "zip: a folder, then a file of the same name": lambda p: make_zip(p.with_suffix(".zip"), [
        ("x/", b"", 0), ("x", b"2", 0)]),
    "tar: header declares more bytes than follow": lambda p: truncated_tar(p.with_suffix(".tar")),
    "zip: directory declares data that is missing": lambda p: zip_missing_data(p.with_suffix(".zip")),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_archive_ends_with_one_line_naming_it_and_the_fix(case: str, tmp_path: Path) -> None:
    archive = DAMAGED[case](tmp_path / "damaged")
    with pytest.raises(ArchiveError) as err:
        extract(archive, tmp_path / "dest")
    message = str(err.value)
    assert str(archive) in message and "run the download stage again" in message and "\n" not in message


def test_prepare_leaves_no_output_for_a_damaged_archive(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    make_zip(raw / "ADEChallengeData2016.zip", [("ADEChallengeData2016/x", b"1", 0),
                                                ("ADEChallengeData2016/x/y", b"2", 0)])
    with pytest.raises(ArchiveError, match="ADEChallengeData2016/x/y"):
        prepare("ade20k", raw, tmp_path / "prepared" / "ade20k", workers=1)
    assert list((tmp_path / "prepared").iterdir()) == []


def test_an_archive_expanding_far_beyond_its_size_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A bomb: 10 MB of zeros deflate to a few KB. The bound is 4x the archive + a slack (shrunk here)."""
    import deeplab.data.extract as extract_module
    monkeypatch.setattr(extract_module, "SLACK_BYTES", 1 << 20)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (10 << 20))
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(ArchiveError, match="bomb.zip: expands to more than 1 MiB.*zeros.bin"):
        extract(tmp_path / "bomb.zip", tmp_path / "dest")
    stored = make_zip(tmp_path / "images.zip", [("img.png", bytes(range(256)) * 4000, 0)])  # ~1x: fine
    assert extract(stored, tmp_path / "ok") == 1


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
    with pytest.raises(ArchiveError, match="neither a tar nor a zip"):
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
