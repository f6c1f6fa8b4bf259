"""Which of the project's code a stage's outputs follow from: its command's modules and everything they import,
less the modules that cannot change a number it writes.

A stage runs ``python -m pipeline.<stage>``; :func:`code_closure` follows the import statements from there
(imports inside functions too, and the packages' ``__init__.py``) through every project module it reaches.
Two lists, each entry with its reason, are the only ways out:

- ``NOT_OUTPUT_CODE``: modules no stage output is written through; they are not followed either.
- ``BOOKKEEPING``: modules that name, check, file, log or schedule the work of the stages whose outputs are
  decided by a record (``RECORDED``: preparation, the stored arrays, training, evaluation, and the ONNX export,
  which depends on the evaluation's record and the trained model). What they decide
  reaches such a stage through its record file (deeplab.records), never through their code, so editing them
  (a reworded error, a new path helper, a validation rule) reruns none of those stages. They are followed (the
  numerics they import count), not listed.

DVC's code deps (pipeline.dvc_presets writes them into dvc.yaml) and the Snakefile's code inputs are both
:func:`stage_code`; tests/test_train.py traces a real training run against the training closure.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("deeplab", "pipeline")  # the project's own code; everything else is a locked dependency
NOT_OUTPUT_CODE = {
    "deeplab/tracking.py": "the MLflow mirror of a run's files: no stage output is written through it",
    "pipeline/gpu_slot.py": "chooses the GPUs a job runs on and starts it; what the job computes is its module's",
    "deeplab/validation.py": "periodic validation while training (train.val_every): an MLflow curve of the model "
                             "being trained; it changes no weight, and the evaluation stage's deps hold its code",
}
# The stages whose outputs a record decides (pipeline.<name>), and the modules that only do their bookkeeping.
RECORDED = ("prepare", "store_arrays", "train", "evaluate", "export")
BOOKKEEPING = {
    "deeplab/config.py": "validates params/ and computes the records: what it decides reaches a stage as its record "
                         "file (the records stage depends on this module)",
    "deeplab/paths.py": "file names",
    "deeplab/errors.py": "the error classes and their messages",
    "deeplab/atomic.py": "writes files under a temporary name, then renames them",
    "deeplab/jobs.py": "a job's MLflow run, its tags, and where the reference's log lies",
    "deeplab/train_job.py": "wires a training to its files and MLflow run; the numbers are the training loop's",
    "deeplab/environment.py": "describes the machine and the package versions, for provenance",
    "deeplab/device.py": "chooses the device and says why a GPU is not usable",
    "deeplab/checkpoint.py": "writes and reads the resumable state; a resume is held to the run's record",
    "deeplab/memory.py": "predicts a step's GPU memory; the images per BatchNorm statistic a run uses are kept with it",
    "deeplab/autofit.py": "tries micro-batches against the GPU's memory; the one chosen is kept with the run",
    "deeplab/reference_log.py": "compares the loss with the reference's log: it warns or stops, it changes no number",
    "deeplab/data/sources.py": "archive names, addresses and checksums; a prepared dataset's meta.json records "
                               "the archives' own sha256",
    "deeplab/data/fetch.py": "downloads and verifies files",
    "pipeline/stage.py": "parses a stage's arguments and prints its errors",
    **{f"pipeline/{name}.py": "the stage's command line; its work is the library's" for name in RECORDED},
}


def module_file(name: str, root: Path = Path(".")) -> Path | None:
    """``deeplab.data.labels`` -> deeplab/data/labels.py (or a package's __init__.py); None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / path).is_file():
            return path
    return None


def imported_modules(path: Path, root: Path = Path(".")) -> set[str]:
    """The project modules ``path`` imports anywhere in it, as dotted names (submodules named in a
    ``from package import name`` count as modules)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((root / path).read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if module_file(f"{node.module}.{alias.name}", root))
    return {name for name in found if module_file(name, root)}


def code_closure(entry_modules: list[str], root: Path = Path(".")) -> list[str]:
    """Every project file that running ``entry_modules`` executes, less ``NOT_OUTPUT_CODE``, sorted."""
    seen: set[str] = set()
    todo = [m for m in entry_modules if str(module_file(m, root)) not in NOT_OUTPUT_CODE]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            parent = ".".join(parts[:depth])
            path = module_file(parent, root)
            if path is None or str(path) in NOT_OUTPUT_CODE or parent in seen:
                continue
            seen.add(parent)
            todo.extend(imported_modules(path, root) - seen)
    return sorted(str(module_file(name, root)) for name in seen)


def stage_code(entry_modules: list[str], root: Path = Path(".")) -> list[str]:
    """The code a stage's outputs follow from: the closure of its command's modules, less ``BOOKKEEPING`` where
    the stage is one of ``RECORDED`` (its record file stands for what those modules decide)."""
    closure = code_closure(entry_modules, root)
    if any(module in (f"pipeline.{name}" for name in RECORDED) for module in entry_modules):
        return [path for path in closure if path not in BOOKKEEPING]
    return closure
