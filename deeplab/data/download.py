"""The download stage's work: every archive of a dataset (or one backbone's ImageNet weights) into a
folder, verified, with a manifest of what is there. Synthetic archives replace downloads for presets
that ask for them. Paths, environment and credentials are handed in by the caller (pipeline/download.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from deeplab import atomic
from deeplab.data import synthetic
from deeplab.data.cityscapes_login import Credentials, login, package_md5, package_url
from deeplab.data.fetch import (DownloadError, FetchOptions, checksum_problem, fetch, file_digests,
                                 public_source, source_urls)
from deeplab.data.sources import ARCHIVES, CITYSCAPES_SERVER, IMAGENET_WEIGHTS, ArchiveSpec

CITYSCAPES_DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"


def download_dataset(dataset: str, raw_dir: Path, *, source: str | None = None,
                     credentials: Credentials | None = None, credentials_file: Path | None = None,
                     cityscapes_server: str = CITYSCAPES_SERVER,
                     options: FetchOptions = FetchOptions()) -> dict[str, Any]:
    """Fetch and verify every official archive of ``dataset`` into ``raw_dir``; return manifest entries
    ``{filename: {sha256, size, source}}``. ``credentials_file`` only names the file in messages."""
    if dataset not in ARCHIVES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(ARCHIVES)}")
    entries = {}
    session = None
    for spec in ARCHIVES[dataset]:
        if spec.cityscapes_package is None or source:
            path, sha256 = fetch(spec, raw_dir, source_urls(spec, source), options)
            entries[spec.filename] = _entry(path, sha256, source or "catalogue")
            continue
        placed = _placed_by_hand(spec, raw_dir, can_download=credentials is not None)
        if placed:
            entries[spec.filename] = placed
            continue
        if credentials is None:
            raise DownloadError(_no_credentials_message(raw_dir, credentials_file))
        if session is None:  # log in once, lazily: a user who placed every archive never needs it
            session = login(cityscapes_server, credentials, options.timeout_s)
        published = package_md5(session, cityscapes_server, spec.cityscapes_package, options.timeout_s)
        if spec.md5 and published != spec.md5:  # say so before an 11 GB transfer, not after it
            raise DownloadError(f"the Cityscapes server publishes md5 {published} for {spec.filename} (package "
                                f"{spec.cityscapes_package}) but the catalogue expects {spec.md5}: the package "
                                "changed upstream; check it and update deeplab/data/sources.py")
        url = package_url(cityscapes_server, spec.cityscapes_package)
        path, sha256 = fetch(spec, raw_dir, [url], options, opener=session)
        entries[spec.filename] = _entry(path, sha256, url)
    return entries


def download_weights(backbone: str, weights_dir: Path, *, source: str | None = None,
                     options: FetchOptions = FetchOptions()) -> dict[str, Any]:
    """Fetch the ImageNet checkpoint of ``backbone`` ('r50' or 'r101'); return its manifest entry."""
    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(IMAGENET_WEIGHTS)}")
    spec = IMAGENET_WEIGHTS[backbone]
    path, sha256 = fetch(spec, weights_dir, source_urls(spec, source), options)
    return {spec.filename: _entry(path, sha256, source or "catalogue")}


def write_synthetic(dataset: str, raw_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Synthetic archives under the official names instead of a download (the smoke preset)."""
    paths = synthetic.write_archives(dataset, raw_dir, seed=seed, **synthetic.DEMO_SIZES[dataset])
    return {p.name: _entry(p, file_digests(p)["sha256"], f"synthetic (seed {seed})") for p in paths}


def write_synthetic_weights(backbone: str, weights_dir: Path, *, seed: int = 0, width: int = 64) -> dict[str, Any]:
    """A randomly initialised backbone under the official checkpoint's name and format (the smoke preset):
    the V1c state-dict keys plus the unused ``fc.*`` classifier, saved with torch.save, so training loads
    it through the same strict path as the real ImageNet weights. ``width``: the preset's backbone width."""
    import torch
    from deeplab.backbone import ResNet
    spec = IMAGENET_WEIGHTS[backbone]
    torch.manual_seed(seed)
    body = ResNet(backbone, 16, "deep", width)
    state = body.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, body.channels["layer4"]), torch.zeros(1000)
    path = weights_dir / spec.filename
    with atomic.replacing(path, "wb") as f:
        torch.save(state, f)
    return {spec.filename: _entry(path, file_digests(path)["sha256"], f"synthetic (seed {seed})")}


def _placed_by_hand(spec: ArchiveSpec, raw_dir: Path, can_download: bool) -> dict[str, Any] | None:
    """The entry of an archive already in ``raw_dir`` that matches its checksum, else None. A wrong copy
    is moved aside when it can be downloaded again; otherwise the user is told what to do."""
    path = raw_dir / spec.filename
    if not path.exists():
        return None
    problem, sha256 = checksum_problem(spec, path)
    if problem is None:
        print(f"{spec.filename}: present in {raw_dir} and verified", file=sys.stderr)
        return _entry(path, sha256, "placed by hand")
    if not can_download:
        raise DownloadError(f"{path} does not match the official archive ({problem}); it is incomplete or "
                            f"a different file. Download it again from {CITYSCAPES_DOWNLOADS} and replace it.")
    path.replace(path.with_name(path.name + ".bad"))
    print(f"{path}: {problem}; moved to {path.name}.bad, downloading it again", file=sys.stderr)
    return None


def _no_credentials_message(raw_dir: Path, credentials_file: Path | None) -> str:
    names = " and ".join(spec.filename for spec in ARCHIVES["cityscapes"])
    file_hint = f", or write them to {credentials_file} as cityscapesscripts' csDownload does" \
        if credentials_file else ""
    return ("Cityscapes needs an approved account and cannot be downloaded anonymously. Either\n"
            f"  1. set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD{file_hint}, and run again; or\n"
            f"  2. download {names} yourself from {CITYSCAPES_DOWNLOADS} and place them in {raw_dir}/,"
            " then run again (they are checked against their official checksums).")


def _entry(path: Path, sha256: str, source: str) -> dict[str, Any]:
    return {"sha256": sha256, "size": path.stat().st_size, "source": public_source(source)}
