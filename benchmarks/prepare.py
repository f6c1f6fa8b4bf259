"""Label conversion speed of the prepare stage, and Cityscapes against the official tool.

    python benchmarks/prepare.py [--quick] [--workers N]

For each dataset: synthetic archives at the real image sizes (VOC ~500x375, ADE20k ~683x512, Cityscapes
2048x1024 with detailed polygons) are prepared; printed are labels/s of the label conversion (all
workers and one) and of the whole stage (extraction included). For Cityscapes the same frames are also
converted by the official tool, cityscapesscripts' json2labelImg (what createTrainIdLabelImgs runs per
file: it rasterises *_gtFine_polygons.json), serially as that script does; both outputs are compared
pixel for pixel. Ratios (ours / official, both labels/s) are printed last. Absolute numbers depend on
the machine and its load; the ratios are measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from deeplab.data.convert import Job, convert  # noqa: E402
from deeplab.data.layouts import LAYOUTS  # noqa: E402
from deeplab.data.prepare import convert_all, prepare  # noqa: E402
from deeplab.data.synthetic import write_archives  # noqa: E402

# (quick, full) synthetic archive options at the real datasets' image sizes. Cityscapes' detail=40 gives
# polygon files of ~110 KiB, about what the real gtFine ones weigh (241 MB zipped for 5000 frames of
# four files each); heavier polygons would flatter us, since only the official tool reads them.
SIZES = {
    "voc": ({"voc_train": 12, "voc_val": 12, "sbd_only": 48, "height": 375, "width": 500},
            {"voc_train": 60, "voc_val": 60, "sbd_only": 240, "height": 375, "width": 500}),
    "ade20k": ({"train": 60, "val": 12, "height": 512, "width": 683},
               {"train": 300, "val": 60, "height": 512, "width": 683}),
    "cityscapes": ({"per_city_train": 6, "per_city_val": 2, "per_city_test": 0, "height": 1024,
                    "width": 2048, "detail": 40},
                   {"per_city_train": 20, "per_city_val": 6, "per_city_test": 0, "height": 1024,
                    "width": 2048, "detail": 40}),
}


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def all_jobs(dataset: str, out: Path) -> list[Job]:
    splits = LAYOUTS[dataset].jobs(out)
    return splits["train"] + splits["val"]


def bench_dataset(dataset: str, work: Path, quick: bool, workers: int) -> dict[str, float]:
    """labels/s of the conversion with ``workers`` processes and with one, and of the whole stage."""
    raw, out = work / "raw" / dataset, work / "prepared" / dataset
    write_archives(dataset, raw, **SIZES[dataset][0 if quick else 1])
    stage_s, meta = timed(prepare, dataset, raw, out, workers=workers)
    jobs = all_jobs(dataset, out)
    many_s, results = timed(convert_all, jobs, workers)
    one_s, _ = timed(lambda: [convert(job) for job in jobs])
    assert not any(r.problem for r in results), [r.problem for r in results if r.problem][:3]
    n = len(jobs)
    print(f"{dataset:10s} {n:4d} labels  conversion {n / many_s:7.1f} labels/s ({workers} workers), "
          f"{n / one_s:6.1f} labels/s (1 process); whole stage {n / stage_s:6.1f} labels/s")
    return {"labels": n, "many": n / many_s, "one": n / one_s}


def bench_official(work: Path) -> float:
    """labels/s of cityscapesscripts' json2labelImg on the prepared Cityscapes frames; checks equality."""
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    out = work / "prepared" / "cityscapes"
    jobs = all_jobs("cityscapes", out)
    official = work / "official"
    official.mkdir()
    sizes = [Path(str(j.source).replace("_labelIds.png", "_polygons.json")).stat().st_size for j in jobs]
    start = time.perf_counter()
    for k, job in enumerate(jobs):
        polygons = str(job.source).replace("_labelIds.png", "_polygons.json")
        json2labelImg(polygons, str(official / f"{k}.png"), "trainIds")
    rate = len(jobs) / (time.perf_counter() - start)
    for k, job in enumerate(jobs):
        if not np.array_equal(np.asarray(Image.open(official / f"{k}.png")), np.asarray(Image.open(job.target))):
            raise AssertionError(f"{job.target} differs from the official tool's output")
    print(f"{'official':10s} {len(jobs):4d} labels  json2labelImg trainIds {rate:7.1f} labels/s (1 process, "
          f"as createTrainIdLabelImgs runs); polygons.json {np.mean(sizes) / 1024:.0f} KiB on average; "
          "outputs identical")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (under 2 minutes on 2 cores)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPU cores; conversion workers: {args.workers}")
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        work = Path(tmp)
        rates = {d: bench_dataset(d, work, args.quick, args.workers) for d in ("voc", "ade20k", "cityscapes")}
        official = bench_official(work)
    ours = rates["cityscapes"]
    print(f"ratio cityscapes trainIds, ours ({args.workers} workers) / official tool: {ours['many'] / official:.1f}x")
    print(f"ratio cityscapes trainIds, ours (1 process) / official tool (1 process): {ours['one'] / official:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
