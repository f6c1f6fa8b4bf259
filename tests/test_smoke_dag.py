"""The whole smoke DAG, end to end, through Snakemake, in a fresh copy of the checkout (DVC's run of it:
tests/test_smoke_dvc.py, a module of its own so that the two run on both workers at once).

Marked slow (minutes each) but part of the default run: this is the test that the stages fit together.
Each run gets its own MLflow SQLite store; afterwards it must hold 13 FINISHED runs with their metrics, and
results/smoke/table.md 12 measured mIoU values. The full preset's files must be untouched. Snakemake runs
the demo exactly as `make demo` does, and its numbers must meet what README.md promises; DVC, which runs
one stage at a time, runs the same DAG with one epoch per cell (a reduced configuration).
"""
from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from deeplab import serving
from deeplab.config import load_params
from deeplab.data.synthetic import drawn_classes
from deeplab.datasets import manifest_hash
from tests.dag_fixtures import BIN, ROOT, copy_checkout, free_port, run_tool, tool_env

DAG_TIMEOUT_S = 1500  # one whole DAG; the per-test limit below covers the module fixture that runs it
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DAG_TIMEOUT_S + 600)]
PARAMS = load_params(ROOT / "params")
CELLS = list(PARAMS.cells)
RUNS = PARAMS.runs("smoke")  # 12 cells, voc-r50-os16 with two seeds: 13 training runs


def _run_dag(tmp_path_factory: pytest.TempPathFactory, name: str, command: list[str],
             epochs: int | None = None, cells: tuple[str, ...] | None = None) -> tuple[Path, str]:
    checkout = copy_checkout(tmp_path_factory.mktemp(name))
    if cells is not None:  # a reduced configuration: these cells alone (the pipeline regenerated, as a user would)
        path = checkout / "params" / "cells.yaml"
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not re.match(r"  [\w-]+:", line) or line.split(":")[0].strip() in cells))
        reference = checkout / "reference" / "dvc.yaml"  # its table's hand-written inputs: the paper's cells kept
        reference.write_text("".join(line for line in reference.read_text().splitlines(keepends=True)
                                     if not (m := re.search(r"/reference/([\w-]+)/metrics\.json", line))
                                     or m[1] in cells))
        run_tool(["python", "-m", "pipeline.dvc_presets"], checkout, timeout=120)
        subprocess.run(["git", "commit", "-qam", "the reduced configuration"], cwd=checkout, check=True,
                       capture_output=True, env=tool_env())
    if epochs is not None:  # a reduced configuration: the same DAG, fewer training steps per cell
        presets = checkout / "params" / "presets.yaml"
        text = presets.read_text()
        assert text.count("epochs: 10,") == 3, "the smoke preset's epochs moved: update this test"
        presets.write_text(text.replace("epochs: 10,", f"epochs: {epochs},"))
    uri = f"sqlite:///{tmp_path_factory.mktemp(f'{name}-mlflow') / 'mlflow.db'}"
    result = run_tool(command, checkout, timeout=DAG_TIMEOUT_S, MLFLOW_TRACKING_URI=uri)
    (checkout.parent / f"{checkout.name}-output.txt").write_text(result.stdout + result.stderr)
    return checkout, uri


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _run_dag(tmp_path_factory, "snakemake", ["snakemake", "--cores", "2", "--config", "preset=smoke"])


def _check_outcome(checkout: Path, uri: str, learned: bool = True) -> None:
    """The runs of the checkout's params (the smoke DAG's 13, or a reduced configuration's) all finished,
    logged, registered and in the table."""
    from mlflow import MlflowClient
    params = load_params(checkout / "params")
    expected, cells = params.runs("smoke"), list(params.cells)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(load_params(checkout / "params").preset("smoke").experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == sorted(r.run_name for r in expected)
    by_name = {run.run_name: run for run in expected}
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert {"mIoU", "aAcc", "mAcc"} <= set(run.data.metrics), run.info.run_name
        assert run.data.tags.get("preset") == "smoke"
        cfg = by_name[run.info.run_name]
        # the runs table's Dataset column: the splits it was trained and scored on, by manifest hash
        prepared = checkout / cfg.prepared_dir
        assert {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs} == {
            f"{cfg.cell.dataset}/{split}": manifest_hash(prepared, split)[:36]
            for split in (cfg.data.train_split, cfg.data.val_split)}, run.info.run_name
        # one chart per label space: a class's IoU is keyed by its dataset
        classes = [key for key in run.data.metrics if key.startswith("iou/")]
        assert classes and all(key.startswith(f"iou/{cfg.cell.dataset}/") for key in classes), run.info.run_name
    # the Models tab and the registry: a model per run, named after it; the demo registers its own names
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    run_names = {run.info.run_id: run.info.run_name for run in runs}
    assert sorted(m.name for m in models) == sorted(serving.model_name(cfg) for cfg in expected)
    assert all(serving.model_name(by_name[run_names[m.source_run_id]]) == m.name for m in models)
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {serving.registered_name(cfg) for cfg in expected} and len(registered) == len(cells)  # a model per cell
    versions = [v for name in registered for v in client.search_model_versions(f"name='{name}'")]
    assert len(versions) == len(expected) and all(v.tags["preset"] == "smoke" and float(v.tags["mIoU"]) > 0 for v in versions)
    for name in registered:  # the alias names the best seed's version
        mine = [v for v in versions if v.name == name]
        best = client.get_model_version_by_alias(name, serving.BEST)
        assert best.version == max(mine, key=lambda v: float(v.tags["mIoU"])).version, name
    assert len([v for v in versions if v.name.endswith("voc-r50-os16")]) == 2  # its two seeds
    paths = load_params(checkout / "params").preset("smoke").paths
    table = (checkout / paths.table()).read_text()
    measured = re.findall(r"\|\s*(\d+\.\d\d)(?: ± \d+\.\d\d)?%(?: \(n=2\))?\s*\|\s*\d+\.\d\d%\s*\|"
                          r"\s*[+-]\d+\.\d\d(?: ± \d+\.\d\d)?\s*\|", table)
    assert len(measured) == len(cells) and re.search(r"± \d+\.\d\d% \(n=2\)", table), table
    assert table.count("Measured on: ") == len({params.cells[cell].dataset for cell in cells}), table
    for run in expected:  # CPU: each run's whole batch at once, as the reference's BatchNorm sees it; fp32 scoring
        doc = json.loads((checkout / run.files.metrics).read_text())
        assert doc["batchnorm_images"] == doc["reference_batchnorm_images"] == 8, run.run_name
        assert doc["precision"] == "fp32 (TF32 off)", run.run_name
    assert "†" not in table and "‡" not in table, table
    with (checkout / paths.summary()).open() as f:
        summary = {row["cell"]: row for row in csv.DictReader(f)}
    for cell in cells:
        seeds = params.seeds(cell, "smoke")
        mious = [json.loads((checkout / paths.cell(cell, None if k == seeds[0] else k).metrics).read_text())["mIoU"]
                 for k in seeds]
        mean = sum(mious) / len(mious)
        assert f"{mean:.2f}" in table
        assert float(summary[cell]["mIoU"]) == pytest.approx(mean, abs=1e-4)
        assert summary[cell]["seeds"] == str(len(seeds)) and float(summary[cell]["gpu_hours"]) > 0
    # the demo learns: every cell and the 12-cell mean at least what README.md tells a new user to expect
    if learned:
        floor, mean_floor = demo_expectations()
        mious = {cell: float(summary[cell]["mIoU"]) for cell in cells}
        assert min(mious.values()) >= floor and sum(mious.values()) / len(mious) >= mean_floor, mious
    # the full preset's data, results and README tables are untouched
    assert not (checkout / "data" / "raw").exists() and not (checkout / "data" / "prepared").exists()
    assert not any((checkout / "results" / cell).exists() for cell in PARAMS.cells)
    changed = subprocess.run(["git", "status", "--porcelain", "--", "README.md", "results/table.md",
                              "results/summary.csv", "results/per_class_iou.csv"], cwd=checkout,
                             capture_output=True, text=True, check=True).stdout
    assert changed == "", changed


def demo_expectations() -> tuple[float, float]:
    """(each cell's floor, the mean's floor) of the smoke mIoU, as README.md states them."""
    found = re.search(r"every cell reaches at least \*\*(\d+)% mIoU\*\* and the 12 cells a mean of at least "
                      r"\*\*(\d+)%\*\*", (ROOT / "README.md").read_text().replace("\n", " "))
    assert found, "README.md no longer states what the demo's numbers should be"
    return float(found[1]), float(found[2])


def test_snakemake_runs_the_smoke_dag(snakemake_run: tuple[Path, str]) -> None:
    _check_outcome(*snakemake_run)
    output = (snakemake_run[0].parent / f"{snakemake_run[0].name}-output.txt").read_text()
    assert "pipeline.doctor: nothing blocks preset smoke" in output, output[-3000:]  # onstart ran it first


def test_the_demo_draws_the_classes_readme_names(snakemake_run: tuple[Path, str]) -> None:
    """README's list of each synthetic dataset's classes, the generator's, and the classes the demo's val
    labels hold (each run's class_iou.csv; a class no label holds appears there only with IoU 0, where the
    model predicted it) are one list."""
    checkout, _ = snakemake_run
    text = " ".join((ROOT / "README.md").read_text().split())
    named = re.search(r"official label space \(VOC: (.*?); ADE20k: (.*?); Cityscapes: (.*?)\)", text)
    assert named, "README's sentence naming the demo's classes moved: update this test"
    for dataset, listed in zip(("voc", "ade20k", "cityscapes"), named.groups()):
        assert listed.split(", ") == drawn_classes(dataset)
        for run in (r for r in RUNS if r.cell.dataset == dataset):
            with open(checkout / run.files.class_iou, newline="") as scored:
                iou = {row["class"]: float(row["IoU"]) for row in csv.DictReader(scored)}
            assert set(drawn_classes(dataset)) <= set(iou), run.run_key  # every drawn class is in the val labels
            assert all(iou[name] == 0 for name in set(iou) - set(drawn_classes(dataset))), run.run_key  # others
            # only where the model predicted a class no label holds


def test_readme_loads_a_demo_model_from_the_registry(snakemake_run: tuple[Path, str]) -> None:
    """README's Python lines, run against the demo's store: the demo's registered name loads and predicts."""
    checkout, uri = snakemake_run
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                 if "models:/deeplabv3plus-smoke-" in b)
    lines = [line for line in block.splitlines()  # not the lines that need a run id or the full preset
             if "<run id>" not in line and not ("models:/" in line and "models:/deeplabv3plus-smoke-" not in line)]
    code = "\n".join(lines).replace('"sqlite:///mlflow.db"', repr(uri)) + "\nprint(classes.shape, classes.dtype)"
    result = run_tool(["python", "-c", code], checkout, timeout=300)
    shape = re.search(r"\((\d+), (\d+), (\d+)\) int64", result.stdout)
    images = re.search(r"np\.zeros\(\((\d+), 3, (\d+), (\d+)\)", block)
    assert shape and images and shape.groups() == images.groups(), (result.stdout, result.stderr)


def test_the_snakemake_report_is_one_self_contained_page(snakemake_run: tuple[Path, str]) -> None:
    checkout, uri = snakemake_run
    run_tool(["snakemake", "--report", "report.html", "--config", "preset=smoke"], checkout, timeout=600,
             MLFLOW_TRACKING_URI=uri)
    page = (checkout / "report.html").read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']https?://", page)  # nothing loaded from outside
    for expected in ("voc-r50-os16/seed1", "cityscapes-r101-os16", "per-class IoU", "learning curves", "table.md"):
        assert expected in page, expected
    # the home page: what the workflow did, then the results table and summary.csv as HTML tables
    home = json.loads(re.search(r"var workflow_desc = (.*);\n", page)[1])
    assert "preset <tt class=\"docutils literal\">smoke</tt>" in home or "preset <code>smoke</code>" in home, home[:500]
    tables = html_tables(home)
    paths = PARAMS.preset("smoke").paths
    markdown = (checkout / paths.table()).read_text()
    measured = re.findall(r"\|\s*(\d+\.\d\d(?: ± \d+\.\d\d)?%(?: \(n=2\))?)\s*\|\s*\d+\.\d\d%\s*\|", markdown)
    shown = [cell for table in tables for row in table for cell in row]
    assert len(measured) == 12 and all(value in shown for value in measured), (measured, tables)
    with (checkout / paths.summary()).open() as f:
        summary = list(csv.reader(f))
    assert summary in tables, tables  # every row and field of summary.csv, as one table


def html_tables(page: str) -> list[list[list[str]]]:
    """Each ``<table>`` of ``page`` as its rows of cell texts (header rows included)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    parser = Tables()
    parser.feed(page)
    return parser.tables


def test_snakemake_results_can_be_adopted_by_dvc(snakemake_run: tuple[Path, str]) -> None:
    """README's recipe: `dvc commit -f` records Snakemake's outputs (the record files too: Snakemake wrote the
    same ones); DVC then has nothing to rerun, and a VOC training setting, once the records stage has run
    (seconds), marks only the VOC runs' stages (and the table) as changed: their training, and their
    evaluation, whose record holds the training record (deeplab.config.RECORDS)."""
    checkout, uri = snakemake_run
    run_tool(["dvc", "commit", "-f", "smoke/dvc.yaml"], checkout, timeout=300, MLFLOW_TRACKING_URI=uri)
    status = run_tool(["dvc", "status", "smoke/dvc.yaml"], checkout, timeout=300).stdout
    assert "up to date" in status, status
    datasets = checkout / "params" / "datasets.yaml"
    datasets.write_text(datasets.read_text().replace("  cat_max_ratio: 0.75", "  cat_max_ratio: 0.7", 1))
    run_tool(["dvc", "repro", "--single-item", "smoke/dvc.yaml:records"], checkout, timeout=300)
    status = run_tool(["dvc", "status", "smoke/dvc.yaml", "--json"], checkout, timeout=300).stdout
    changed = {name.split(":")[-1] for name in json.loads(status)}
    voc_runs = {run.run_key.replace("/", "-") for run in RUNS if run.cell.dataset == "voc"}  # seed1 too
    assert changed == {f"{stage}@{run}" for run in voc_runs for stage in ("train_cell", "evaluate_cell")} \
        | {"make_table"}, changed


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOWS = [(1600, 1000), (1280, 720)]


@contextlib.contextmanager
def chromium_pages() -> Iterator[Any]:
    """A headless Chromium (the system's binary, driven by playwright) for the browser tests."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on the PATH (README: the browser tests)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.browser
def test_the_report_opens_at_its_title_and_its_links_resolve(snakemake_run: tuple[Path, str]) -> None:
    """README's report, as a person opens it: the title in the window at scroll 0 at both window sizes (the
    report's layout centres a page vertically, which put a tall home page's top out of reach), and every link
    of the results tables pointing at a file of the run (links from the project root, where it is written)."""
    checkout, uri = snakemake_run
    report = checkout / "report.html"
    if not report.is_file():
        run_tool(["snakemake", "--report", "report.html", "--config", "preset=smoke"], checkout, timeout=600,
                 MLFLOW_TRACKING_URI=uri)
    assert "report.html" not in subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True,
                                               text=True, check=True).stdout  # README's command leaves git clean
    with chromium_pages() as browser:
        for width, height in WINDOWS:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(report.as_uri())
            title = page.get_by_role("heading", name=re.compile(r"DeepLabV3\+ on PASCAL VOC"))
            title.wait_for(timeout=60_000)
            box = title.bounding_box()
            assert box and 0 <= box["y"] and box["y"] + box["height"] <= height, (width, height, box)
            assert page.evaluate("window.scrollY") == 0
            links = page.locator(".results-table a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            assert len(links) == 3 * len(CELLS), links  # cfg | model | log of each cell
            assert [link for link in links if not (checkout / link).is_file()] == []
            page.close()


@pytest.mark.browser
def test_the_mlflow_ui_shows_every_runs_miou_at_the_readme_link(snakemake_run: tuple[Path, str]) -> None:
    """README's `mlflow ui` command and link, in a fresh browser (its assistant panel open): every run's mIoU
    is in view beside its name, left of the panel; at 1600x1000 all 13 rows fit without scrolling."""
    from deeplab.tracking import ui_link
    checkout, uri = snakemake_run
    marker = json.loads((checkout / PARAMS.preset("smoke").paths.tracking_marker()).read_text())
    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=tool_env())
    try:
        for line in server.stdout:  # README's sign that it answers (its workers' first start-up is complete)
            if "Application startup complete" in line:
                break
        else:
            raise AssertionError(f"mlflow ui exited with {server.wait()}")
        with chromium_pages() as browser:
            for width, height in WINDOWS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(ui_link(f"http://127.0.0.1:{port}", marker["experiment_id"]))
                cells = page.locator('[role="gridcell"][col-id="metrics.`mIoU`"]')
                cells.nth(len(RUNS) - 1).wait_for(timeout=120_000)
                panel = page.get_by_text("MLflow Assistant", exact=True)
                right = min(width, panel.bounding_box()["x"]) if panel.count() and panel.is_visible() else width
                boxes = [cells.nth(k).bounding_box() for k in range(cells.count())]
                assert len(boxes) == len(RUNS) and all(float(cells.nth(k).inner_text()) > 0 for k in range(len(RUNS)))
                assert all(0 <= box["x"] and box["x"] + box["width"] <= right for box in boxes), (width, right, boxes)
                if height >= 1000:
                    assert all(box["y"] + box["height"] <= height for box in boxes), boxes
                page.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
