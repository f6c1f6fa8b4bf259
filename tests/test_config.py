"""The params loader: the 12 cells and their recipe load, and every kind of bad input names file, key and line."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from deeplab.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_MIOU = {  # the reference's model zoo (docs/recipe.md)
    "voc-r50-os8": 77.43, "voc-r50-os16": 76.92, "voc-r101-os8": 79.19, "voc-r101-os16": 78.31,
    "ade20k-r50-os8": 44.51, "ade20k-r50-os16": 43.21, "ade20k-r101-os8": 45.72, "ade20k-r101-os16": 45.22,
    "cityscapes-r50-os8": 80.38, "cityscapes-r50-os16": 79.73, "cityscapes-r101-os8": 81.09,
    "cityscapes-r101-os16": 80.20,
}


def test_the_twelve_cells_with_their_reference_miou() -> None:
    params = load_params(ROOT / "params")
    assert {cell_id: cell.reference_miou for cell_id, cell in params.cells.items()} == REFERENCE_MIOU


def test_schedules_match_the_reference_iteration_counts() -> None:
    params = load_params(ROOT / "params")
    counts = {"voc": 10582, "ade20k": 20210, "cityscapes": 2975}
    iters = {ds: params.resolve(f"{ds}-r50-os8").max_iters(n) for ds, n in counts.items()}
    assert iters == {"voc": 39_660, "ade20k": 164_190, "cityscapes": 81_840}


def test_resolve_applies_the_preset() -> None:
    params = load_params(ROOT / "params")
    full, smoke = params.resolve("voc-r101-os16", "full"), params.resolve("voc-r101-os16", "smoke")
    assert full.data.crop_size == (512, 512) and full.data.batch_size == 16
    assert smoke.data.crop_size != full.data.crop_size and smoke.model.aspp_channels < full.model.aspp_channels
    assert smoke.preset.results_dir != full.preset.results_dir
    assert full.training_digest() != smoke.training_digest()


def test_objects_are_frozen() -> None:
    config = load_params(ROOT / "params").resolve("ade20k-r50-os8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data.batch_size = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.data.expected_counts["train"] = 1  # type: ignore[index]


def test_unknown_cell_and_preset_name_the_legal_values() -> None:
    params = load_params(ROOT / "params")
    with pytest.raises(KeyError, match="voc-r50-os8"):
        params.resolve("voc-r52-os8")
    with pytest.raises(KeyError, match="smoke"):
        params.resolve("voc-r50-os8", "smok")


def _edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in ``path``; return the 1-based line of the edit."""
    text = path.read_text()
    assert old in text
    line = text[:text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1))
    return line


@pytest.mark.parametrize("file, old, new, message", [
    ("train.yaml", "  momentum: 0.9", "  momentum: 0.9\n  momentun: 0.8", r"train\.momentun: unknown key"),
    ("datasets.yaml", "  batch_size: 16", "  batch_size: sixteen", r"voc\.batch_size: expected int"),
    ("datasets.yaml", "  batch_size: 16", "  batch_size: -16", r"voc\.batch_size: must be positive"),
    ("model.yaml", "pretrained: imagenet", "pretrained: imagenet21k", r"model\.pretrained: 'imagenet21k' is not one of"),
    ("cells.yaml", "reference_miou: 77.43", "reference_miou: 177.43", r"cells\.voc-r50-os8\.reference_miou"),
    ("cells.yaml", "voc-r50-os8:  ", "voc-r50-os9:  ", r"cells\.voc-r50-os9: cell id must be 'voc-r50-os8'"),
    ("presets.yaml", "crop_size: [32, 32],", "crop_sz: [32, 32],", r"presets\.smoke\.overrides\.datasets\.voc\.crop_sz: unknown key"),
    ("presets.yaml", "train: {lr: 0.05", "train: {lr: -1", r"presets\.smoke\.overrides\.train\.lr: must be positive"),
])
def test_bad_values_name_file_key_and_line(params_dir: Path, file: str, old: str, new: str, message: str) -> None:
    line = _edit(params_dir / file, old, new)
    with pytest.raises(ParamsError, match=message) as error:
        load_params(params_dir)
    where = re.match(r"(.+):(\d+): ", str(error.value))
    assert where and where.group(1) == str(params_dir / file)
    assert int(where.group(2)) in (line, line + 1)  # the new key may sit on the line after the anchor


def test_missing_key_and_missing_file(params_dir: Path) -> None:
    _edit(params_dir / "train.yaml", "  seed: 0", "")
    with pytest.raises(ParamsError, match=r"train\.yaml:\d+: train: missing key 'seed'"):
        load_params(params_dir)
    (params_dir / "model.yaml").unlink()
    with pytest.raises(ParamsError, match=r"model\.yaml: parameter file not found"):
        load_params(params_dir)


@pytest.mark.parametrize("file, old, new", [
    ("train.yaml", "  lr: 0.01 ", "  lr: 0.01\n  lr: 10.0 "),                        # block mapping
    ("presets.yaml", "train: {", "train: {lr: 0.02, lr: 10.0, "),                       # flow mapping
])
def test_a_key_given_twice_is_refused_naming_both_lines(params_dir: Path, file: str, old: str, new: str) -> None:
    line = _edit(params_dir / file, old, new)
    with pytest.raises(ParamsError) as error:
        load_params(params_dir)
    second = line + 1 if "\n" in new else line
    assert str(error.value) == (f"{params_dir / file}:{second}: key 'lr' given twice (first on line {line}); "
                                "keep one of them")


def test_seeds_give_one_run_per_cell_and_seed(params_dir: Path) -> None:
    params = load_params(params_dir)
    assert [run.run_key for run in params.runs("full")] == list(params.cells)  # one seed: today's paths
    smoke = params.runs("smoke")
    assert [run.run_key for run in smoke if run.cell.id == "voc-r50-os16"] == ["voc-r50-os16", "voc-r50-os16/seed1"]
    first, second = params.resolve("voc-r50-os16", "smoke"), params.resolve("voc-r50-os16", "smoke", 1)
    assert (first.train.seed, second.train.seed) == (0, 1) and first.training_digest() != second.training_digest()
    assert second.files.model == "results/smoke/voc-r50-os16/seed1/model.pt" and second.run_name == "voc-r50-os16/seed1"
    with pytest.raises(KeyError, match=r"seed 5 is not one of cell voc-r50-os16's seeds under preset smoke \(\[0, 1\]; presets\.smoke\.seeds"):
        params.resolve("voc-r50-os16", "smoke", 5)
    _edit(params_dir / "presets.yaml", "seeds: {voc-r50-os16: [0, 1]}", "seeds: {voc-r50-os17: [0, 1]}")
    with pytest.raises(ParamsError, match=r"presets\.smoke\.seeds\.voc-r50-os17: unknown cell"):
        load_params(params_dir)
    _edit(params_dir / "presets.yaml", "seeds: {voc-r50-os17: [0, 1]}", "seeds: {voc-r50-os16: [1, 1]}")
    with pytest.raises(ParamsError, match=r"seeds\.voc-r50-os16: must be a non-empty list of distinct seeds"):
        load_params(params_dir)


def test_an_unquoted_off_as_dvc_exp_run_writes_it_is_still_off(params_dir: Path) -> None:
    """`dvc exp run -S 'params/train.yaml:...'` rewrites the file in YAML 1.2, where `off` needs no quotes; read
    as YAML 1.1 that is false. train.compile: off stays the setting "off" (any -S of train.yaml broke on it)."""
    _edit(params_dir / "train.yaml", 'compile: "off"', "compile: off")
    assert load_params(params_dir).train.compile == "off"
