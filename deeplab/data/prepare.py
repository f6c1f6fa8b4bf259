"""The prepare stage's work: official archives in, a prepared dataset folder out.

The folder is built next to its final place (``.<name>.build-<pid>``), then swapped in with renames, so a
run killed at any point never leaves a mix of old and new output; ``meta.json`` is the last file written
and its presence marks a complete folder. Layout of a prepared folder:

- the extracted archives under their own names (images are read from there);
- converted labels: ``labels/...png`` (VOC, ADE20k) or ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``
  (Cityscapes): single-channel uint8 PNGs of class indices, 255 = ignore;
- ``splits/{train,val}.txt``: ``<image> <label>`` per line, relative to the folder, sorted;
- ``meta.json``: dataset, classes, num_classes, palette, ignore_index, counts, sources (archive -> sha256);
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from deeplab.errors import PipelineError
from deeplab import atomic
from deeplab.data.convert import Job, Result, convert
from deeplab.data.extract import extract
from deeplab.data.fetch import file_digests
from deeplab.data.labels import IGNORE_INDEX
from deeplab.data.layouts import LAYOUTS, Layout

MAX_LISTED_PROBLEMS = 20  # enough to see the pattern without flooding the terminal
MIN_JOBS_FOR_POOL = 64    # below this, starting worker processes costs more than it saves


class PrepareError(PipelineError):
    """The archives are missing, malformed or hold invalid labels; the message names the file."""

    exit_code = 1


def prepare(dataset: str, raw: Path, out: Path, *, expected_counts: Mapping[str, int] | None = None,
            workers: int | None = None) -> dict[str, Any]:
    """Build the prepared folder ``out`` from the archives in ``raw``; return its meta.json content.

    ``expected_counts`` ({'train': n, 'val': m}) makes any other count an error. ``workers`` is the
    number of conversion processes (default: all CPUs). The training pairs as arrays (``train_arrays``, a
    storage format) are the store_arrays stage's, in a folder of their own (deeplab.data.arrays).
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[dataset]
    archives = _find_archives(dataset, layout, raw)
    out = out.absolute()
    if raw.resolve() == out.resolve() or out.resolve() in raw.resolve().parents:
        raise PrepareError(f"the archives ({raw}) lie inside the output folder ({out}), which is replaced "
                           "as a whole: give prepare an output folder of its own")
    remove_leftovers(out)
    build = out.parent / f".{out.name}.build-{os.getpid()}"
    try:
        meta = _build(dataset, layout, archives, build, expected_counts, workers)
        swap_in(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return meta


def _build(dataset: str, layout: Layout, archives: list[Path], build: Path,
           expected_counts: Mapping[str, int] | None, workers: int | None) -> dict[str, Any]:
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # hashing overlaps extraction (hashlib releases the GIL)
        sums = pool.submit(lambda: {a.name: file_digests(a)["sha256"] for a in archives})
        for archive in archives:
            _log(f"extracting {archive.name}")
            extract(archive, build, layout.keep)
        sources = sums.result()  # before forking workers: no thread may run across a fork
    splits = layout.jobs(build)
    counts = {split: len(jobs) for split, jobs in splits.items()}
    _check_counts(dataset, counts, expected_counts)
    every = [job for split in ("train", "val") for job in splits[split]]
    _log(f"converting {len(every)} labels ({counts['train']} train, {counts['val']} val)")
    results = convert_all(every, workers)
    _raise_problems(dataset, results)
    classes = layout.classes(build)
    meta = {"dataset": dataset, "classes": list(classes), "num_classes": len(classes),
            "palette": layout.palette(len(classes)), "ignore_index": IGNORE_INDEX, "counts": counts,
            "sources": sources, "grayscale_images": sum(r.grayscale for r in results),
            "labels": "single-channel uint8 PNG of class indices, 255 = ignore",
            "images": "JPEG/PNG as shipped; read them as RGB (some ADE20k images are grayscale)"}
    _write_splits(build, splits)
    atomic.write_json(build / "meta.json", meta, indent=1)  # last: its presence marks a complete folder
    _log(f"prepared {dataset} in {time.monotonic() - started:.1f} s")
    return meta


def convert_all(jobs: list[Job], workers: int | None = None) -> list[Result]:
    """Convert every label, in a process pool when there are enough files to pay for it."""
    return in_pool(convert, jobs, workers)


def in_pool(work: Callable[[Any], Any], jobs: list[Any], workers: int | None) -> list[Any]:
    """``work`` over ``jobs``, in a process pool when there are enough of them to pay for it."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < MIN_JOBS_FOR_POOL:
        return [work(job) for job in jobs]
    chunk = max(1, min(64, len(jobs) // (workers * 8)))  # small chunks balance, large ones cut overhead
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(work, jobs, chunksize=chunk)


def _find_archives(dataset: str, layout: Layout, raw: Path) -> list[Path]:
    missing = [name for name in layout.archives if not (raw / name).is_file()]
    if missing:
        raise PrepareError(f"{raw}: missing {', '.join(missing)}; fetch them first with "
                           f"python -m pipeline.download --dataset {dataset} --preset <preset>")
    return [raw / name for name in layout.archives]


def _check_counts(dataset: str, counts: dict[str, int], expected: Mapping[str, int] | None) -> None:
    empty = [split for split, n in counts.items() if n == 0]
    if empty:
        raise PrepareError(f"{dataset}: no images found for split(s) {', '.join(empty)}; "
                           "the archives do not have the official layout")
    if expected is not None and dict(expected) != counts:
        raise PrepareError(f"{dataset}: found {counts}, but the official dataset has {dict(expected)} "
                           "(params/datasets.yaml expected_counts); the archives are incomplete or not the "
                           "official release")


def _raise_problems(dataset: str, results: list[Result]) -> None:
    problems = [r.problem for r in results if r.problem]
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" \
            if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise PrepareError(f"{dataset}: {len(problems)} invalid label(s):\n  {shown}{more}")


def _write_splits(build: Path, splits: dict[str, list[Job]]) -> None:
    (build / "splits").mkdir(exist_ok=True)
    for split in ("train", "val"):
        lines = sorted(f"{job.image.relative_to(build)} {job.target.relative_to(build)}\n"
                       for job in splits[split])
        (build / "splits" / f"{split}.txt").write_text("".join(lines))


def swap_in(build: Path, out: Path) -> None:
    """Replace ``out`` by ``build`` with renames; the old folder is only deleted once the new is in."""
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        build.rename(out)
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    else:
        build.rename(out)


def remove_leftovers(out: Path) -> None:
    """Scratch folders of earlier runs that were killed before they could clean up."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in list(out.parent.glob(f".{out.name}.build-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        _log(f"removing {stale.name}, left by an interrupted run")
        shutil.rmtree(stale, ignore_errors=True)


def _log(message: str) -> None:
    print(f"[prepare] {message}", file=sys.stderr, flush=True)
