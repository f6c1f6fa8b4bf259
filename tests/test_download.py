"""The downloader against loopback servers: resume, retries, mirrors, checksums, Cityscapes login, CLI."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import deeplab.data.download as download_mod
from deeplab.data.cityscapes_login import CityscapesLoginError, Credentials
from deeplab.data.download import download_dataset
from deeplab.data.fetch import ChecksumError, DownloadError, FetchOptions, fetch, source_urls
from deeplab.data.sources import ARCHIVES, IMAGENET_WEIGHTS, ArchiveSpec
from deeplab.data.synthetic import write_archives
from pipeline import download as download_cli
from tests.data_fixtures import CityscapesState, cityscapes_server, file_server  # noqa: F401 (fixture)

FAST = FetchOptions(retries=3, backoff_s=0.0, timeout_s=10.0, progress=False)
PAYLOAD = os.urandom(300_000)  # several read chunks would be nicer, but any cut mid-body tests resume


def spec_for(data: bytes, name: str = "VOCtrainval_11-May-2012.tar", **extra: object) -> ArchiveSpec:
    return ArchiveSpec(filename=name, urls=(), size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                       md5=hashlib.md5(data).hexdigest(), **extra)  # type: ignore[arg-type]


def test_interrupted_transfer_resumes_with_range(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"] = PAYLOAD
    script.cut_after["/a.tar"], script.cuts_left["/a.tar"] = 100_000, 1
    path, sha256 = fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert path.read_bytes() == PAYLOAD and sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert [r[2] for r in script.requests] == [None, "bytes=100000-"]  # second request resumed
    assert not list(tmp_path.glob("*.part"))


def test_leftover_part_from_killed_run_is_resumed(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"] = PAYLOAD
    (tmp_path / "VOCtrainval_11-May-2012.tar.part").write_bytes(PAYLOAD[:123_456])
    path, _ = fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert path.read_bytes() == PAYLOAD
    assert script.requests == [("GET", "/a.tar", "bytes=123456-")]


def test_server_ignoring_range_restarts_from_zero(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"], script.ignore_range = PAYLOAD, True
    (tmp_path / "VOCtrainval_11-May-2012.tar.part").write_bytes(PAYLOAD[:50_000])
    path, _ = fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert path.read_bytes() == PAYLOAD  # not the 50 kB prefix twice


def test_wrong_checksum_deletes_temp_and_names_file_source_and_digests(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"] = b"not the archive" * 1000
    spec = spec_for(PAYLOAD)
    with pytest.raises(ChecksumError) as err:
        fetch(spec, tmp_path, [base + "/a.tar"], FAST)
    message = str(err.value)
    got = hashlib.sha256(script.files["/a.tar"]).hexdigest()
    assert "VOCtrainval_11-May-2012.tar" in message and f"{base}/a.tar" in message
    assert spec.sha256 in message and got in message
    assert list(tmp_path.iterdir()) == []  # neither the temp file nor a final file


def test_html_page_with_binary_content_type_is_named(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.zip"] = b"<!DOCTYPE html><html>please log in</html>"
    with pytest.raises(ChecksumError, match="HTML page, not an archive"):
        fetch(spec_for(PAYLOAD, "gtFine_trainvaltest.zip"), tmp_path, [base + "/a.zip"], FAST)


def test_404_on_first_mirror_then_second_succeeds(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/mirror2/a.tar"] = PAYLOAD
    path, _ = fetch(spec_for(PAYLOAD), tmp_path, [base + "/mirror1/a.tar", base + "/mirror2/a.tar"], FAST)
    assert path.read_bytes() == PAYLOAD
    assert [r[1] for r in script.requests] == ["/mirror1/a.tar", "/mirror2/a.tar"]  # 404: no retries


def test_transient_500_is_retried(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"], script.status["/a.tar"] = PAYLOAD, 503
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert len(script.requests) == 3


def test_verified_file_is_not_fetched_again_and_corrupt_one_is(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/a.tar"] = PAYLOAD
    fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert len(script.requests) == 1
    (tmp_path / "VOCtrainval_11-May-2012.tar").write_bytes(b"truncated")
    path, _ = fetch(spec_for(PAYLOAD), tmp_path, [base + "/a.tar"], FAST)
    assert path.read_bytes() == PAYLOAD and len(script.requests) == 2
    assert (tmp_path / "VOCtrainval_11-May-2012.tar.bad").read_bytes() == b"truncated"  # kept, not lost


def test_all_sources_failing_lists_each(file_server, tmp_path: Path) -> None:
    base, _ = file_server
    with pytest.raises(DownloadError) as err:
        fetch(spec_for(PAYLOAD), tmp_path, [base + "/x", str(tmp_path / "nowhere")], FAST)
    assert "HTTP 404" in str(err.value) and "no such file" in str(err.value)


def test_source_override_is_the_only_source(tmp_path: Path) -> None:
    spec = ARCHIVES["voc"][0]
    assert source_urls(spec, None) == list(spec.urls)
    assert source_urls(spec, "http://127.0.0.1:9/lab/") == ["http://127.0.0.1:9/lab/VOCtrainval_11-May-2012.tar"]
    assert source_urls(spec, str(tmp_path)) == [str(tmp_path / spec.filename)]
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / spec.filename).write_bytes(PAYLOAD)
    path, _ = fetch(spec_for(PAYLOAD), tmp_path / "raw", source_urls(spec, str(tmp_path / "mirror")), FAST)
    assert path.read_bytes() == PAYLOAD


def test_sha256_prefix_is_enough_for_weights(file_server, tmp_path: Path) -> None:
    base, script = file_server
    script.files["/w.pth"] = PAYLOAD
    good = ArchiveSpec("w.pth", (), sha256=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert fetch(good, tmp_path, [base + "/w.pth"], FAST)[0].read_bytes() == PAYLOAD
    bad = ArchiveSpec("v.pth", (), sha256="00000000")
    with pytest.raises(ChecksumError, match="00000000 \\(prefix\\)"):
        fetch(bad, tmp_path, [base + "/w.pth"], FAST)


def test_catalogue_has_official_names_and_weights() -> None:
    assert [s.filename for s in ARCHIVES["voc"]] == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]
    assert [s.cityscapes_package for s in ARCHIVES["cityscapes"]] == [1, 3]
    for backbone, spec in IMAGENET_WEIGHTS.items():
        assert spec.filename.split("-")[1].removesuffix(".pth") == spec.sha256  # name carries the prefix
        assert spec.urls[0].startswith("https://download.openmmlab.com/pretrain/third_party/")


# ------------------------------------------------------------------------------------------ Cityscapes
@pytest.fixture(scope="module")
def city_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    raw = tmp_path_factory.mktemp("city")
    return {p.name: p.read_bytes() for p in write_archives("cityscapes", raw)}


@pytest.fixture
def city(city_archives: dict[str, bytes], monkeypatch: pytest.MonkeyPatch):
    """The fake Cityscapes site serving the synthetic zips, and a catalogue with their checksums."""
    specs = tuple(spec_for(city_archives[s.filename], s.filename, cityscapes_package=s.cityscapes_package)
                  for s in ARCHIVES["cityscapes"])
    monkeypatch.setattr(download_mod, "ARCHIVES", {**ARCHIVES, "cityscapes": specs})
    state = CityscapesState("alice", "s3cret-pw", {1: city_archives[specs[0].filename],
                                                   3: city_archives[specs[1].filename]})
    yield from cityscapes_server(state)


def test_cityscapes_login_flow_downloads_both_packages(city, tmp_path: Path, capfd) -> None:
    server, state = city
    files = download_dataset("cityscapes", tmp_path, credentials=Credentials("alice", "s3cret-pw", "env"),
                             cityscapes_server=server, options=FAST)
    assert sorted(files) == ["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"]
    assert (tmp_path / "gtFine_trainvaltest.zip").read_bytes() == state.packages[1]
    assert ("POST", "/login") in state.requests and ("GET", "/file-handling/?packageID=3") in state.requests
    assert state.posted[0]["submit"] == ["Login"]
    assert "s3cret-pw" not in capfd.readouterr().err + json.dumps(files)


def test_cityscapes_bad_login_is_detected(city, tmp_path: Path, capfd) -> None:
    server, _ = city
    with pytest.raises(CityscapesLoginError, match="refused the credentials") as err:
        download_dataset("cityscapes", tmp_path, credentials=Credentials("alice", "wrong-pw", "env"),
                         cityscapes_server=server, options=FAST)
    assert "wrong-pw" not in str(err.value) + capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def session_lost_after_login(city, monkeypatch):
    """The server forgets the session right after a successful login (a lost or expired cookie)."""
    server, state = city
    from deeplab.data import cityscapes_login
    real_login = cityscapes_login.login

    def login_then_forget(*args, **kwargs):
        opener = real_login(*args, **kwargs)
        state.cookie = "expired-on-the-server"
        return opener
    monkeypatch.setattr(download_mod, "login", login_then_forget)
    return server, state


def test_cityscapes_html_instead_of_archive_is_refused(session_lost_after_login, tmp_path: Path, monkeypatch) -> None:
    """A session the server does not honour (the real site then sends its login page) never leaves an
    HTML file under an archive's name."""
    server, state = session_lost_after_login
    published = {1: hashlib.md5(state.packages[1]).hexdigest()}
    monkeypatch.setattr(download_mod, "package_md5", lambda _s, _u, package, _t: published[package])
    with pytest.raises(DownloadError, match="HTML page"):
        download_dataset("cityscapes", tmp_path, credentials=Credentials("alice", "s3cret-pw", "env"),
                         cityscapes_server=server, options=FAST)
    assert not list(tmp_path.glob("*.zip"))


def test_cityscapes_md5_page_check_catches_a_lost_session(session_lost_after_login, tmp_path: Path) -> None:
    server, _ = session_lost_after_login
    with pytest.raises(CityscapesLoginError, match="instead of an md5"):
        download_dataset("cityscapes", tmp_path, credentials=Credentials("alice", "s3cret-pw", "env"),
                         cityscapes_server=server, options=FAST)


def test_cityscapes_changed_upstream_package_is_refused_before_download(city, tmp_path, monkeypatch) -> None:
    server, state = city
    state.packages[1] = b"PK\x03\x04 a newer release"
    with pytest.raises(DownloadError, match="publishes md5 .* but the catalogue expects"):
        download_dataset("cityscapes", tmp_path, credentials=Credentials("alice", "s3cret-pw", "env"),
                         cityscapes_server=server, options=FAST)
    assert not any(path.startswith("/file-handling/") for _, path in state.requests)


def test_cityscapes_archives_placed_by_hand_need_no_login(city, city_archives, tmp_path: Path) -> None:
    server, state = city
    for name, data in city_archives.items():
        (tmp_path / name).write_bytes(data)
    files = download_dataset("cityscapes", tmp_path, credentials=None, cityscapes_server=server, options=FAST)
    assert {e["source"] for e in files.values()} == {"placed by hand"} and state.requests == []
    (tmp_path / "gtFine_trainvaltest.zip").write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(DownloadError, match="does not match the official archive"):
        download_dataset("cityscapes", tmp_path, credentials=None, cityscapes_server=server, options=FAST)


def test_cityscapes_without_credentials_or_archives_names_both_ways(city, tmp_path: Path) -> None:
    server, _ = city
    with pytest.raises(DownloadError) as err:
        download_dataset("cityscapes", tmp_path, credentials=None, credentials_file=Path("/x/credentials.json"),
                         cityscapes_server=server, options=FAST)
    message = str(err.value)
    assert "CITYSCAPES_USERNAME" in message and "/x/credentials.json" in message
    assert "gtFine_trainvaltest.zip" in message and str(tmp_path) in message


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_cityscapes_reads_credentials_file(city, tmp_path: Path, monkeypatch, params_dir, capfd) -> None:
    server, state = city
    data_home = tmp_path / "xdg"
    (data_home / "cityscapesscripts").mkdir(parents=True)
    (data_home / "cityscapesscripts" / "credentials.json").write_text('{"username": "alice", "password": "s3cret-pw"}')
    for key in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD", "DEEPLAB_MIRROR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.setenv("CITYSCAPES_SERVER", server)
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--dataset", "cityscapes", "--preset", "full", "--params", str(params_dir)]) == 0
    manifest = json.loads((tmp_path / "data/raw/cityscapes/manifest.json").read_text())
    assert set(manifest["files"]) == {"gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"}
    out = capfd.readouterr()
    assert "s3cret-pw" not in out.out + out.err + json.dumps(manifest)


def test_cli_weights_with_mirror_env(file_server, tmp_path: Path, monkeypatch, params_dir) -> None:
    base, script = file_server
    script.files["/lab/resnet50_v1c-2cccc1ad.pth"] = PAYLOAD
    spec = ArchiveSpec("resnet50_v1c-2cccc1ad.pth", (), sha256=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    monkeypatch.setattr(download_mod, "IMAGENET_WEIGHTS", {"r50": spec})
    monkeypatch.setenv("DEEPLAB_MIRROR", base + "/lab")
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--weights", "r50", "--preset", "full", "--params", str(params_dir)]) == 0
    weights = tmp_path / "data/raw/weights"
    assert (weights / "resnet50_v1c-2cccc1ad.pth").read_bytes() == PAYLOAD
    manifest = json.loads((weights / "manifest-r50.json").read_text())
    assert manifest["files"]["resnet50_v1c-2cccc1ad.pth"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


def test_cli_smoke_preset_writes_synthetic_archives_and_manifest(tmp_path: Path, monkeypatch, params_dir) -> None:
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--dataset", "voc", "--preset", "smoke", "--params", str(params_dir)]) == 0
    raw = tmp_path / "data/smoke/raw/voc"
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["synthetic"] is True
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == entry["sha256"]
    assert (raw / "manifest.json").stat().st_mtime_ns >= max((raw / n).stat().st_mtime_ns for n in manifest["files"])


def test_cli_rejects_unknown_preset(tmp_path: Path, monkeypatch, params_dir, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--dataset", "voc", "--preset", "nope", "--params", str(params_dir)]) == 2
    assert "known presets" in capsys.readouterr().err
