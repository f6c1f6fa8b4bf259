"""Your own data as users' folders really come: each of the commonest own-data failures (label encodings,
orientation, file formats, too few images, a fact kept twice) ends prepared exactly, pixels and counts
checked, or refused in one line naming the file and the fix, with nothing written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.folder
from deeplab.config import ParamsError, TooFewImages, load_params
from deeplab.data.folder import FolderError, FolderSpec, prepare_folder
from deeplab.datasets import read_image, read_label, read_split
from deeplab.doctor import dataset_checks
from folder_fixtures import declare, write_learnable_folder
from test_folder_dataset import CLASSES, image, mask, write_folder

PETS = {"layout": "folder", "source": "mydata/pets"}
CELLS = {"pets-r50-os16": {"dataset": "pets", "backbone": "r50", "output_stride": 16}}


def prepared(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stem -> (image pixels, label) of a prepared folder, both splits."""
    pairs = read_split(out, "train") + read_split(out, "val")
    return {label.stem: (read_image(img).permute(1, 2, 0).numpy(), read_label(label).numpy()) for img, label in pairs}


def refused(tmp_path: Path, folder: Path, spec: FolderSpec = FolderSpec(), **kwargs: int) -> list[str]:
    """The error's lines; nothing written, no build folder left."""
    out = tmp_path / "out"
    with pytest.raises(FolderError) as error:
        prepare_folder(folder, out, spec, workers=1, **kwargs)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return str(error.value).splitlines()


# 1. 0 and 255: judged over the whole folder

def test_a_background_picture_with_an_ignore_border_is_prepared_as_such(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """One mask of only 0 and a 255 border among masks holding classes: background with an ignore border,
    prepared as drawn (its 255 stays ignore, the others' classes stay), and the log names it."""
    folder = write_folder(tmp_path / "f", n=6)
    empty = np.zeros((31, 41), np.uint8)
    empty[0, :], empty[:, -1] = 255, 255
    Image.fromarray(empty, mode="L").save(folder / "labels" / "img02.png")
    prepare_folder(folder, tmp_path / "out", FolderSpec(), workers=1)
    labels = {stem: label for stem, (_, label) in prepared(tmp_path / "out").items()}
    assert np.array_equal(labels["img02"], empty)
    assert np.array_equal(labels["img03"], mask(32, 43))  # classes 1 and 2, 255 border: untouched
    assert "1 mask(s) hold only class 0 and 255 (ignore), taken as background with an ignore region: img02.png" \
        in capsys.readouterr().err


# 2. colour masks: an ignore colour; label_values refused with them

def test_colour_masks_with_a_boundary_colour_read_as_ignore(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4, encoding="color")
    white = (255, 255, 255)
    for k in range(4):
        path = folder / "labels" / f"img{k:02d}.png"
        rgb = np.array(Image.open(path))
        rgb[0, :] = white  # the boundary an annotation tool draws
        Image.fromarray(rgb).save(path)
    assert refused(tmp_path, folder, FolderSpec(encoding="color"))[0].endswith(
        "is none of classes.txt's colours; a colour that means ignore (a boundary): ignore_colors: [[255, 255, 255]]")
    meta = prepare_folder(folder, tmp_path / "out", FolderSpec(encoding="color", ignore_colors=(white,)), workers=1)
    assert meta["ignore_colors"] == [[255, 255, 255]]
    for stem, (_, label) in prepared(tmp_path / "out").items():
        k = int(stem[3:])
        assert np.array_equal(label, mask(29 + k, 37 + 2 * k))  # the white row is 255, the rest the classes


@pytest.mark.parametrize("spec, message", [
    (FolderSpec(encoding="color", label_values={0: 0, 255: 1}), "label_values with label_encoding: color"),
    (FolderSpec(encoding="index", ignore_colors=((255, 255, 255),)), "ignore_colors with label_encoding: index"),
    (FolderSpec(encoding="color", ignore_colors=((200, 0, 0),)),
     "ignore_colors: [200, 0, 0] is also the colour of class 'cat' in classes.txt"),
])
def test_colour_settings_that_cannot_be_meant_are_refused(spec: FolderSpec, message: str, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=3, encoding="color")
    [line] = refused(tmp_path, folder, spec)
    assert message in line


@pytest.mark.parametrize("entry, message", [
    ({"label_encoding": "color", "label_values": {0: 0, 255: 1}},
     "pets.label_values: maps the values of single-channel masks, and under label_encoding: color"),
    ({"ignore_colors": [[255, 255, 255]]}, "pets.ignore_colors: only colour masks (label_encoding: color)"),
    ({"label_encoding": "color", "ignore_colors": [[255, 255, 256]]}, "pets.ignore_colors: each colour is [r, g, b]"),
    ({"exif": "rotate"}, "pets.exif: 'rotate' is not one of 'apply', 'ignore'"),
])
def test_the_params_entry_refuses_them_too(entry: dict, message: str, params_dir: Path) -> None:
    declare(params_dir, "pets", {**PETS, "num_classes": 3, **entry}, CELLS)
    with pytest.raises(ParamsError) as error:
        load_params(params_dir)
    assert message in str(error.value) and "datasets.yaml:" in str(error.value)


# 3. EXIF orientation: followed where the size tells, asked where it cannot

def turned(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)  # PNG: the stored pixels stay exact


def test_a_half_turned_image_is_not_guessed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """EXIF orientation 3 (turned 180 degrees): the sizes agree either way, so prepare asks; each choice
    then gives its own exact pixels against the mask, listed in the log and meta.json."""
    folder = write_folder(tmp_path / "f", n=4)
    stored = image(32, 43, 7)
    (folder / "images" / "img03.jpg").unlink()
    turned(folder / "images" / "img03.png", stored, 3)
    [line] = refused(tmp_path, folder)
    assert line == (f"{folder / 'images' / 'img03.png'}: EXIF orientation 3 (turned 180 degrees), and its mask "
                    "img03.png has its size either way: whether the mask was drawn on the pixels as stored or as a "
                    "viewer shows them cannot be told; set exif: apply (masks follow the view) or exif: ignore "
                    "(masks follow the stored pixels) in the dataset's params entry (pipeline.folder: --exif)")
    for choice, expected in (("ignore", stored), ("apply", stored[::-1, ::-1])):
        out = tmp_path / choice
        meta = prepare_folder(folder, out, FolderSpec(exif=choice), workers=1)
        pixels, label = prepared(out)["img03"]
        assert np.array_equal(pixels, expected) and np.array_equal(label, mask(32, 43))
        assert meta["exif"] == {"setting": choice, "oriented": {  # img01's mask follows the view: its size says so
            "img01": {"orientation": 6, "applied": True, "by": "its mask"},
            "img03": {"orientation": 3, "applied": choice == "apply", "by": f"exif: {choice}"}}}
    assert "2 image(s) carry an EXIF orientation other than 1; read img01.jpg (6: as a viewer shows it, by its " \
           "mask), img03.png (3: as stored, by exif: ignore)" in capsys.readouterr().err


def test_a_quarter_turned_image_follows_its_mask(tmp_path: Path) -> None:
    """Orientation 6 turns width and height: a mask drawn on the stored pixels has the stored size, so the
    image is read as stored (the same file read as a viewer shows it, when the mask says so: fixture img01),
    whatever exif says; a mask of neither size is named with both."""
    folder = write_folder(tmp_path / "f", n=4)
    stored = image(43, 32, 7)  # 32 wide, 43 high as stored; 43 x 32 as shown
    (folder / "images" / "img03.jpg").unlink()
    turned(folder / "images" / "img03.png", stored, 6)
    Image.fromarray(mask(43, 32), mode="L").save(folder / "labels" / "img03.png")
    for spec in (FolderSpec(), FolderSpec(exif="apply")):
        meta = prepare_folder(folder, tmp_path / "ready", spec, workers=1)
        pixels, label = prepared(tmp_path / "ready")["img03"]
        assert np.array_equal(pixels, stored) and np.array_equal(label, mask(43, 32))
        assert meta["exif"]["oriented"]["img03"] == {"orientation": 6, "applied": False, "by": "its mask"}
        assert prepared(tmp_path / "ready")["img01"][0].shape[:2] == (30, 39)  # its mask follows the view
    Image.fromarray(mask(40, 40), mode="L").save(folder / "labels" / "img03.png")
    assert refused(tmp_path, folder) == [
        f"{folder / 'labels' / 'img03.png'}: 40x40 (w x h), its image img03.png 32x43 (as stored; EXIF orientation 6, "
        "a viewer shows it 43x32): a mask must have its image's size"]


# 4. each refusal names the file, what was found and the fix

def test_a_one_bit_mask_reads_0_and_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    (folder / "classes.txt").write_text("background\nforeground\n")
    drawn = {}
    for k in range(4):
        drawn[k] = mask(29 + k, 37 + 2 * k, border=False) > 0
        Image.fromarray(drawn[k]).convert("1").save(folder / "labels" / f"img{k:02d}.png")
    assert Image.open(folder / "labels" / "img00.png").mode == "1"
    prepare_folder(folder, tmp_path / "bits", FolderSpec(), workers=1)
    for stem, (_, label) in prepared(tmp_path / "bits").items():
        assert np.array_equal(label, drawn[int(stem[3:])].astype(np.uint8))
    assert "4 1-bit mask(s) read as 0 (black) and 1 (white)" in capsys.readouterr().err
    (folder / "classes.txt").write_text("background 0 0 0\nforeground 255 255 255\n")
    assert refused(tmp_path, folder, FolderSpec(encoding="color"))[0] == (
        f"{folder / 'labels' / 'img00.png'}: a 1-bit (black and white) image; label_encoding: color needs RGB masks "
        "in classes.txt's colours (masks of class indices: label_encoding: index)")


def test_a_jpeg_mask_is_refused_as_lossy_not_as_missing(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    path = folder / "labels" / "img02.png"
    Image.open(path).convert("L").save(folder / "labels" / "img02.jpg", quality=95)
    path.unlink()
    assert refused(tmp_path, folder) == [
        f"{folder / 'labels' / 'img02.jpg'}: a JPEG mask: JPEG's lossy compression changes the values along every edge, "
        "so class indices cannot be read back; export the masks as PNG"]
    (folder / "labels" / "img02.jpg").rename(path)  # JPEG bytes under a .png name
    assert refused(tmp_path, folder) == [f"{path}: a JPEG file named .png: JPEG's lossy compression changes the "
                                         "values along every edge, so class indices cannot be read back; export "
                                         "the masks as PNG"]
    Image.fromarray(mask(31, 41)).save(path)
    Image.fromarray(mask(31, 41)).save(folder / "labels" / "img03.bmp")
    assert refused(tmp_path, folder) == [f"{folder / 'labels' / 'img03.bmp'}: not a PNG mask: masks are read from "
                                         "lossless PNG files; save it as labels/img03.png"]


# 5. too few training images for the batch: refused before training, by each tool

def test_too_few_training_images_are_refused_by_prepare_the_tool_the_doctor_and_training(
        tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "f", n=10)
    [line] = refused(tmp_path, folder, batch_size=16)
    assert line == ("folder: 9 training image(s), fewer than one batch of 16 (the split drawn from the folder): add "
                    "images, or train with a batch of 9 or fewer (batch_size in its entry of params/datasets.yaml; "
                    "a dataset of your own otherwise takes VOC's)")
    assert pipeline.folder.main([str(folder), "--params", str(params_dir)]) == 2  # VOC's batch of 16 by default
    assert "f: 9 training image(s), fewer than one batch of 16" in capsys.readouterr().err
    assert pipeline.folder.main([str(folder), "--batch-size", "8"]) == 0

    monkeypatch.chdir(tmp_path)
    write_learnable_folder(tmp_path / "mydata" / "pets", n=12)
    declare(params_dir, "pets", PETS, CELLS)  # under the full preset: VOC's batch of 16
    params = load_params(params_dir)
    check = dataset_checks(params, params.preset("full"), ["pets"])[0]  # then the ImageNet weights
    assert check.status == "FAIL" and check.text.startswith("pets: 11 training image(s), fewer than one batch of 16")
    with pytest.raises(TooFewImages, match="pets: 11 training image.*fewer than one batch of 16 .preset full."):
        params.resolve("pets-r50-os16", "full").max_iters(11)
    from deeplab.budget import training_images
    assert training_images(params.resolve("pets-r50-os16", "full")) == 0  # shown as nothing to train, not a batch
    [fine] = dataset_checks(params, params.preset("smoke"), ["pets"])  # the smoke preset's small batch fits
    assert fine.status == "OK" and "12 images (11 to train on), 3 classes" in fine.text


# 6. num_classes: classes.txt owns it

def test_num_classes_comes_from_classes_txt(tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    declare(params_dir, "pets", PETS, CELLS)  # layout, source and the cell: nothing else
    with pytest.raises(ParamsError, match=re.escape("pets: no num_classes, and mydata/pets/classes.txt, which gives "
                                                    "it, is not there: put the folder there (source), or give "
                                                    "num_classes")):
        load_params(params_dir)
    write_learnable_folder(tmp_path / "mydata" / "pets", n=6)
    params = load_params(params_dir)
    assert params.datasets["pets"].num_classes == 3 == params.resolve("pets-r50-os16", "smoke").data.num_classes
    (tmp_path / "mydata" / "pets" / "classes.txt").write_text(CLASSES + "bird\n")
    assert load_params(params_dir).datasets["pets"].num_classes == 4
    meta = prepare_folder(tmp_path / "mydata" / "pets", tmp_path / "out", FolderSpec(), workers=1, num_classes=4)
    assert meta["num_classes"] == 4 and meta["classes"][-1] == "bird"
