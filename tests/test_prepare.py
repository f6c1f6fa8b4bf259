"""Prepare on synthetic archives in the official formats: split membership, label values, counts, meta."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplab.config import load_params
from deeplab.data.labels import ADE20K_CLASSES, VOC_CLASSES
from deeplab.data.prepare import PrepareError, prepare
from deeplab.data.synthetic import dataset_colours, write_archives
from pipeline import prepare as prepare_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """dataset -> (raw folder, prepared folder), built once for the module."""
    base = tmp_path_factory.mktemp("datasets")
    folders = {}
    for dataset in ("voc", "ade20k", "cityscapes"):
        write_archives(dataset, base / "raw" / dataset)
        prepare(dataset, base / "raw" / dataset, base / "prepared" / dataset, workers=1)
        folders[dataset] = (base / "raw" / dataset, base / "prepared" / dataset)
    return folders


def split_pairs(out: Path, split: str) -> list[tuple[str, str]]:
    lines = (out / "splits" / f"{split}.txt").read_text().splitlines()
    assert lines == sorted(lines), "split lists must be sorted"
    return [tuple(line.split(" ")) for line in lines]  # type: ignore[misc]


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def check_common(out: Path, raw: Path, num_classes: int) -> dict:
    """Every listed file exists, labels are single-channel uint8 with valid values and the image's size,
    and meta.json describes the folder."""
    meta = json.loads((out / "meta.json").read_text())
    for split in ("train", "val"):
        pairs = split_pairs(out, split)
        assert meta["counts"][split] == len(pairs)
        for image_rel, label_rel in pairs:
            with Image.open(out / label_rel) as label, Image.open(out / image_rel) as image:
                assert label.mode == "L" and label.size == image.size
                values = np.unique(np.asarray(label))
            assert set(values.tolist()) <= set(range(num_classes)) | {255}, label_rel
    assert meta["num_classes"] == len(meta["classes"]) == len(meta["palette"]) == num_classes
    assert meta["ignore_index"] == 255
    assert meta["sources"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(raw.iterdir())}
    assert not list(out.parent.glob(".*"))  # no scratch folders left beside the output
    return meta


# ------------------------------------------------------------------------------------------------- VOC
def voc_lists(raw: Path) -> dict[str, set[str]]:
    """The four id lists read straight from the archives (an oracle independent of the code under test)."""
    lists = {}
    with tarfile.open(raw / "VOCtrainval_11-May-2012.tar") as tar:
        for split in ("train", "val"):
            lists[f"voc_{split}"] = set(tar.extractfile(f"VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt")
                                        .read().decode().split())
    with tarfile.open(raw / "benchmark.tgz") as tar:
        for split in ("train", "val"):
            lists[f"sbd_{split}"] = set(tar.extractfile(f"benchmark_RELEASE/dataset/{split}.txt").read().decode().split())
    return lists


def test_voc_trainaug_is_the_set_arithmetic_without_val_leakage(prepared) -> None:
    raw, out = prepared["voc"]
    lists = voc_lists(raw)
    # the synthetic lists must exercise every case the real ones have
    assert lists["sbd_train"] & lists["voc_val"] and lists["sbd_val"] & lists["voc_val"]
    assert lists["sbd_train"] & lists["voc_train"] and lists["sbd_train"] & lists["sbd_val"]
    expected = (lists["voc_train"] | lists["sbd_train"] | lists["sbd_val"]) - lists["voc_val"]
    train_ids = [Path(label).stem for _, label in split_pairs(out, "train")]
    val_ids = [Path(label).stem for _, label in split_pairs(out, "val")]
    assert sorted(train_ids) == sorted(expected) and len(train_ids) == len(set(train_ids))
    assert set(val_ids) == lists["voc_val"] and not set(train_ids) & set(val_ids)
    naive = sum(len(v) for k, v in lists.items() if k != "voc_val")
    assert len(train_ids) < naive  # concatenating the lists would have duplicated and leaked


def test_voc_labels_come_from_voc_where_it_has_one_else_sbd(prepared) -> None:
    raw, out = prepared["voc"]
    lists = voc_lists(raw)
    check_common(out, raw, 21)
    with tarfile.open(raw / "VOCtrainval_11-May-2012.tar") as voc, tarfile.open(raw / "benchmark.tgz") as sbd:
        for _, label_rel in split_pairs(out, "train") + split_pairs(out, "val"):
            image_id, ours = Path(label_rel).stem, read(out / label_rel)
            if image_id in lists["voc_train"] | lists["voc_val"]:
                png = Image.open(voc.extractfile(f"VOCdevkit/VOC2012/SegmentationClass/{image_id}.png"))
                assert png.mode == "P"
                np.testing.assert_array_equal(ours, np.asarray(png))  # indices, 255 border kept
                assert (ours == 255).any()
            else:
                mat = scipy.io.loadmat(io.BytesIO(sbd.extractfile(f"benchmark_RELEASE/dataset/cls/{image_id}.mat").read()))
                np.testing.assert_array_equal(ours, mat["GTcls"][0]["Segmentation"][0])
                assert not (ours == 255).any()


def test_voc_meta(prepared) -> None:
    raw, out = prepared["voc"]
    meta = check_common(out, raw, 21)
    assert meta["classes"] == list(VOC_CLASSES)
    assert meta["palette"][1] == [128, 0, 0] and meta["palette"][15] == [192, 128, 128]  # aeroplane, person


# ---------------------------------------------------------------------------------------------- ADE20k
def test_ade20k_labels_shift_by_one_and_ignore_other(prepared) -> None:
    raw, out = prepared["ade20k"]
    meta = check_common(out, raw, 150)
    assert meta["classes"] == list(ADE20K_CLASSES) and meta["classes"][8] == "windowpane"
    assert meta["counts"] == {"train": 32, "val": 10}
    seen_other = False
    with zipfile.ZipFile(raw / "ADEChallengeData2016.zip") as zf:
        for image_rel, label_rel in split_pairs(out, "train") + split_pairs(out, "val"):
            folder, name = Path(label_rel).parts[-2:]
            original = np.asarray(Image.open(zf.open(f"ADEChallengeData2016/annotations/{folder}/{name}")))
            ours = read(out / label_rel)
            np.testing.assert_array_equal(ours[original == 0], 255)
            np.testing.assert_array_equal(ours[original > 0], original[original > 0] - 1)
            seen_other |= bool((original == 0).any())
    assert seen_other
    assert meta["grayscale_images"] > 0  # the synthetic set has grayscale JPEGs, as ADE20k does


# ------------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_train_ids_match_the_official_polygon_tool(prepared, tmp_path: Path) -> None:
    """Our look-up conversion of labelIds equals cityscapesscripts' json2labelImg on the polygons."""
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    raw, out = prepared["cityscapes"]
    meta = check_common(out, raw, 19)
    assert meta["counts"] == {"train": 24, "val": 9} and meta["classes"][0] == "road"
    assert not (out / "leftImg8bit" / "test").exists()  # train/val only
    for _, label_rel in split_pairs(out, "train") + split_pairs(out, "val"):
        polygons = out / label_rel.replace("_labelTrainIds.png", "_polygons.json")
        json2labelImg(str(polygons), str(tmp_path / "official.png"), "trainIds")
        official = read(tmp_path / "official.png")
        np.testing.assert_array_equal(read(out / label_rel), official)
    cities = {Path(image).parts[2] for image, _ in split_pairs(out, "val")}
    assert cities == {"frankfurt", "lindau", "munster"}


# -------------------------------------------------------------------------------- failure behaviour
def place_raw(raw: Path, project: Path, preset: str, dataset: str) -> Path:
    """Link the archives into a project's raw folder for ``preset``, where the prepare stage reads them."""
    paths = load_params(ROOT / "params").preset(preset).paths
    target = project / paths.raw_dir(dataset)
    target.mkdir(parents=True)
    for archive in raw.iterdir():
        (target / archive.name).symlink_to(archive)
    return project / paths.prepared_dir(dataset)


def test_the_full_preset_enforces_the_official_counts(prepared, tmp_path: Path, capsys, monkeypatch) -> None:
    """The check comes from params (presets.full.expect_official_counts), not from a flag of the DAG."""
    out = place_raw(prepared["cityscapes"][0], tmp_path, "full", "cityscapes")
    monkeypatch.chdir(tmp_path)
    code = prepare_cli.main(["--dataset", "cityscapes", "--preset", "full", "--params", str(ROOT / "params")])
    err = capsys.readouterr().err
    assert code == 1 and "'train': 24" in err and "'train': 2975" in err
    assert "\npipeline.prepare: error: cityscapes: found" in err and "Traceback" not in err
    assert not out.exists()


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace.get(info.filename, zin.read(info)))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["value", "size"])
def test_invalid_label_is_named_and_old_output_survives(prepared, tmp_path: Path, case: str) -> None:
    raw, good_out = prepared["ade20k"]
    name = "ADEChallengeData2016/annotations/training/ADE_train_00000005.png"
    with zipfile.ZipFile(raw / "ADEChallengeData2016.zip") as zf:
        original = np.asarray(Image.open(zf.open(name))).copy()
    if case == "value":
        original[0, 0] = 200  # ADE20k has 150 classes
        bad = original
    else:
        bad = original[:-3]
    (tmp_path / "raw").mkdir()
    rewrite_zip(raw / "ADEChallengeData2016.zip", tmp_path / "raw" / "ADEChallengeData2016.zip", {name: png(bad)})
    out = tmp_path / "out"
    prepare("ade20k", raw, out, workers=1)  # a finished earlier run
    before = (out / "meta.json").read_bytes()
    with pytest.raises(PrepareError) as err:
        prepare("ade20k", tmp_path / "raw", out, workers=1)
    assert "ADE_train_00000005.png" in str(err.value)
    assert ("[200]" if case == "value" else "image") in str(err.value)
    assert (out / "meta.json").read_bytes() == before  # the good folder is untouched
    assert not list(tmp_path.glob(".out.*"))


def test_rerun_after_a_crash_never_mixes_old_and_new(prepared, tmp_path: Path, monkeypatch) -> None:
    raw, reference = prepared["voc"]
    monkeypatch.setattr("deeplab.data.prepare.MIN_JOBS_FOR_POOL", 1)  # the process-pool path, too
    out = tmp_path / "voc"
    prepare("voc", raw, out, workers=1)
    (out / "stale-from-old-run.txt").write_text("old")
    crashed = tmp_path / ".voc.build-99999"  # a killed run's scratch folder
    (crashed / "labels").mkdir(parents=True)
    (crashed / "labels" / "half.png").write_bytes(b"\x89PNG")
    prepare("voc", raw, out, workers=2)
    assert not (out / "stale-from-old-run.txt").exists()
    assert (out / "splits/train.txt").read_text() == (reference / "splits/train.txt").read_text()
    for _, label in split_pairs(out, "train"):
        np.testing.assert_array_equal(read(out / label), read(reference / label))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]


def test_cli_contract_in_a_subprocess(prepared, tmp_path: Path) -> None:
    raw, reference = prepared["voc"]
    out = place_raw(raw, tmp_path, "smoke", "voc")
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--dataset", "voc", "--preset", "smoke",
                             "--params", str(ROOT / "params")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert (out / "splits/train.txt").read_text() == (reference / "splits/train.txt").read_text()
    meta, ref_meta = json.loads((out / "meta.json").read_text()), json.loads((reference / "meta.json").read_text())
    assert meta == ref_meta


# ------------------------------------------------------------------------------------ synthetic data
def test_synthetic_archives_are_reproducible(tmp_path: Path) -> None:
    for dataset in ("voc", "cityscapes"):
        first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in write_archives(dataset, tmp_path / "a")]
        second = [hashlib.sha256(p.read_bytes()).hexdigest() for p in write_archives(dataset, tmp_path / "b")]
        assert first == second


@pytest.mark.parametrize("dataset", ["voc", "ade20k", "cityscapes"])
def test_synthetic_content_is_learnable(prepared, dataset: str) -> None:
    """Pixel colour alone tells the class of every painted region (VOC's background is a grey texture):
    a network can learn these images in a short CPU run."""
    _, out = prepared[dataset]
    colours = dataset_colours(dataset).astype(np.float32)
    correct = total = 0
    for image_rel, label_rel in split_pairs(out, "val"):
        with Image.open(out / image_rel) as picture:
            if picture.mode != "RGB":
                continue  # ADE20k's grayscale images carry shapes but no colour
            image = np.asarray(picture, np.float32)
        label = read(out / label_rel)
        raw_ids = _painted_ids(dataset, out, label_rel, label)  # regions are painted by their raw id
        mask = (label != 255) & ((raw_ids != 0) if dataset == "voc" else True)
        candidates = np.unique(raw_ids[mask])
        distance = ((image[..., None, :] - colours[candidates][None, None]) ** 2).sum(-1)
        predicted = candidates[distance.argmin(-1)]
        correct += int((predicted[mask] == raw_ids[mask]).sum())
        total += int(mask.sum())
    assert total > 0 and correct / total > 0.9


def _painted_ids(dataset: str, out: Path, label_rel: str, label: np.ndarray) -> np.ndarray:
    if dataset == "cityscapes":
        return read(out / label_rel.replace("_labelTrainIds.png", "_labelIds.png")).astype(np.int64)
    if dataset == "ade20k":
        return np.where(label == 255, 0, label.astype(np.int64) + 1)
    return label.astype(np.int64)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 128), (375, 500)])
def test_label_png_writer_round_trips_through_pil_and_torchvision(shape: tuple[int, int]) -> None:
    from torchvision.io import ImageReadMode, decode_image
    import torch
    from deeplab.data.convert import encode_png
    label = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    label[: shape[0] // 2] = 7  # runs, as in real label maps
    data = encode_png(label)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), label)
    decoded = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    assert decoded.shape == (1, *shape)
    np.testing.assert_array_equal(decoded[0].numpy(), label)


def test_training_arrays_hold_the_decoded_pixels_and_give_the_same_samples(prepared, tmp_path: Path) -> None:
    """train_arrays: every training pair is also stored, in the arrays folder, as uint8 arrays equal to what
    the loader decodes (images RGB, labels class indices), the val split keeps its files only, the prepared
    folder is untouched (its identity does not depend on the storage), and the training samples read through
    the memory maps equal those from the decoded files, seed for seed. Off, the folder holds no arrays and
    the same source.json; arrays made from other pixels are not read."""
    import torch

    from deeplab.config import load_params
    from deeplab.data.arrays import store
    from deeplab.datasets import TrainDataset, array_path, manifest_hash, read_image, read_label
    from deeplab.transforms import Augmentation
    raw, _ = prepared["cityscapes"]
    out, arrays = tmp_path / "cityscapes", tmp_path / "arrays" / "cityscapes"
    prepare("cityscapes", raw, out, workers=1)
    identity = manifest_hash(out, "train")
    stored = store(out, arrays, "train", True, workers=1)
    assert stored["stored"] and stored["pairs"] == len(split_pairs(out, "train")) > 0
    assert json.loads((arrays / "stored.json").read_text()) == stored
    source = (arrays / "source.json").read_text()
    assert json.loads(source) == {"split": "train", "data_hash": identity} and manifest_hash(out, "train") == identity
    for image_rel, label_rel in split_pairs(out, "train"):
        image, label = np.load(array_path(arrays, image_rel)), np.load(array_path(arrays, label_rel))
        assert np.array_equal(image, read_image(out / image_rel).permute(1, 2, 0).numpy())
        assert np.array_equal(label, read_label(out / label_rel).numpy()) and label.dtype == np.uint8
    assert not any(array_path(arrays, image_rel).exists() for image_rel, _ in split_pairs(out, "val"))
    cfg = load_params(ROOT / "params").resolve("cityscapes-r50-os16", "smoke")
    aug = Augmentation.of(cfg)
    mapped = TrainDataset(out, "train", aug, cfg.data.num_classes, arrays)
    decoded = TrainDataset(out, "train", aug, cfg.data.num_classes)
    assert mapped.arrays and not decoded.arrays
    for k in range(40):
        item = (k % len(mapped), 1000 + k)
        a, b = mapped[item], decoded[item]
        assert all(torch.equal(a[key], b[key]) for key in a), k
    assert store(out, arrays, "train", False, workers=1)["stored"] is False
    assert (arrays / "source.json").read_text() == source and sorted(p.name for p in arrays.iterdir()) == \
        ["source.json", "stored.json"]
    assert TrainDataset(out, "train", aug, cfg.data.num_classes, arrays).why_not_arrays == "train_arrays is off"
    store(out, arrays, "train", True, workers=1)
    (out / "splits" / "train.txt").write_text((out / "splits" / "train.txt").read_text().splitlines(True)[0])
    other = TrainDataset(out, "train", aug, cfg.data.num_classes, arrays)  # the prepared split changed since
    assert not other.arrays and "made from other pixels" in other.why_not_arrays
