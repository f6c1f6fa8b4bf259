"""Your own data: a folder of images and masks in any of the supported encodings is prepared like the
paper's datasets, and every malformed input is refused before anything is written, one line naming the file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.data.folder import FolderError, FolderSpec, prepare_folder
from deeplab.datasets import read_image, read_label, read_split
from folder_fixtures import save_index_mask

CLASSES = "background\ncat\ndog\n"
COLOURS = {0: (0, 0, 0), 1: (200, 0, 0), 2: (0, 0, 200)}


def mask(h: int, w: int, border: bool = True) -> np.ndarray:
    """Class blocks (0, 1, 2) with a 255 border: what a user's index mask looks like."""
    label = np.zeros((h, w), np.uint8)
    label[h // 4:h // 2, w // 4:w // 2] = 1
    label[h // 2:, w // 2:] = 2
    if border:
        label[0, :] = 255
    return label


def image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_folder(root: Path, n: int = 10, encoding: str = "index") -> Path:
    """n pairs of odd sizes: JPEGs in every case of the extension, PNGs, one grayscale, one EXIF-rotated
    JPEG whose mask is in the orientation a viewer shows; masks as palette and plain single-channel PNGs
    (index) or RGB (color)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"{name} {' '.join(map(str, COLOURS[k]))}\n" for k, name in
                                              enumerate(CLASSES.split())) if encoding == "color" else CLASSES)
    for k in range(n):
        h, w = 29 + k, 37 + 2 * k
        label = mask(h, w)
        pixels = image(h, w, k)
        stem = f"img{k:02d}"
        if k == 0:  # grayscale
            Image.fromarray(pixels[..., 0]).save(root / "images" / f"{stem}.png")
        elif k == 1:  # stored w high and h wide; EXIF orientation 6 (turn 90 degrees) shows it h high, w wide
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(image(w, h, k)).save(root / "images" / f"{stem}.jpg", exif=exif, quality=95)
        else:
            suffix = (".jpg", ".JPEG", ".png")[k % 3]
            Image.fromarray(pixels).save(root / "images" / f"{stem}{suffix}", **({"quality": 95} if suffix != ".png" else {}))
        if encoding == "color":
            rgb = np.zeros((*label.shape, 3), np.uint8)
            for value, colour in COLOURS.items():
                rgb[label == value] = colour
            rgb[label == 255] = COLOURS[0]
            Image.fromarray(rgb).save(root / "labels" / f"{stem}.png")
        else:
            save_index_mask(label, root / "labels" / f"{stem}.png", paletted=k % 2 == 0)
    return root


def prepared_labels(out: Path, split: str) -> dict[str, np.ndarray]:
    return {label.stem: read_label(label).numpy() for _, label in read_split(out, split)}


def test_a_folder_of_palette_and_plain_masks_is_prepared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """index masks (palette and single-channel, a 255 border, odd sizes), a grayscale image, an EXIF-rotated
    one: labels as class indices, a seeded 90/10 split written out, images readable as RGB at their masks'
    size (the rotated one as a viewer shows it), the conversion said once."""
    folder = write_folder(tmp_path / "mine")
    out = tmp_path / "prepared" / "mine"
    meta = prepare_folder(folder, out, FolderSpec(), name="mine", workers=1)
    assert meta["classes"] == ["background", "cat", "dog"] and meta["counts"] == {"train": 9, "val": 1}
    assert json.loads((out / "meta.json").read_text())["sources"]["files_sha256"] == meta["sources"]["files_sha256"]
    labels = {**prepared_labels(out, "train"), **prepared_labels(out, "val")}
    assert len(labels) == 10
    for k in range(10):
        assert np.array_equal(labels[f"img{k:02d}"], mask(29 + k, 37 + 2 * k)), k
    for image_path, label_path in read_split(out, "train") + read_split(out, "val"):
        pixels = read_image(image_path)
        assert pixels.shape == (3, *read_label(label_path).shape), image_path
    assert (out / "images" / "img00.png").is_file() and (out / "images" / "img01.png").is_file()  # converted, rotated
    assert (out / "images" / "img03.jpg").is_file() and (out / "images" / "img04.jpeg").is_file()  # copied as given
    assert capsys.readouterr().err.count("converting 1 image(s) to 8-bit RGB (grayscale 1)") == 1
    again = prepare_folder(folder, tmp_path / "again", FolderSpec(), name="mine", workers=1)
    assert read_split(tmp_path / "again", "val")[0][0].name == read_split(out, "val")[0][0].name  # seeded
    assert again["sources"] == meta["sources"]


def test_colour_masks_and_binary_masks_with_label_values(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "colour", n=4, encoding="color")
    out = tmp_path / "out-colour"
    meta = prepare_folder(folder, out, FolderSpec(encoding="color"), workers=1)
    assert meta["palette"] == [list(COLOURS[k]) for k in range(3)]
    expected = {f"img{k:02d}": np.where(mask(29 + k, 37 + 2 * k) == 255, 0, mask(29 + k, 37 + 2 * k)) for k in range(4)}
    for stem, label in {**prepared_labels(out, "train"), **prepared_labels(out, "val")}.items():
        assert np.array_equal(label, expected[stem])
    binary = write_folder(tmp_path / "binary", n=4)
    (binary / "classes.txt").write_text("background\nforeground\n")
    for path in (binary / "labels").iterdir():
        raw = np.where(read_label(path).numpy() == 2, 255, 0).astype(np.uint8)
        Image.fromarray(raw, mode="L").save(path)
    with pytest.raises(FolderError, match=r"no mask holds a class other than 0, and 4 hold only the values 0 and "
                                          r"255 \(img00.png, img01.png, img02.png, img03.png\).*"
                                          r"label_values: \{0: 0, 255: 1\}"):
        prepare_folder(binary, tmp_path / "refused", FolderSpec(), workers=1)
    assert not (tmp_path / "refused").exists()
    prepare_folder(binary, tmp_path / "out-binary", FolderSpec(label_values={0: 0, 255: 1}), workers=1)
    for stem, label in prepared_labels(tmp_path / "out-binary", "train").items():
        k = int(stem[3:])
        assert np.array_equal(label, (mask(29 + k, 37 + 2 * k) == 2).astype(np.uint8))


def refused(tmp_path: Path, folder: Path, spec: FolderSpec = FolderSpec()) -> str:
    """The one-line-per-problem error, and nothing written."""
    out = tmp_path / "out"
    with pytest.raises(FolderError) as error:
        prepare_folder(folder, out, spec, workers=1)
    assert not out.exists() and not list(out.parent.glob(".out.*"))
    return str(error.value)


def test_unmatched_images_and_labels_are_named(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    (folder / "labels" / "img02.png").unlink()
    Image.fromarray(mask(5, 5)).save(folder / "labels" / "stray.png")
    lines = refused(tmp_path, folder).splitlines()
    assert lines == [f"{folder / 'labels' / 'img02.png'}: missing: image {folder / 'images' / 'img02.png'} has no label",
                     f"{folder / 'labels' / 'stray.png'}: label without an image (no images/stray.jpg, .jpeg or .png)"]


def test_a_mask_of_another_size_is_refused_also_against_the_exif_orientation(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    Image.fromarray(mask(31, 40), mode="L").save(folder / "labels" / "img01.png")  # neither 39x30 nor 30x39
    assert refused(tmp_path, folder) == (
        f"{folder / 'labels' / 'img01.png'}: 40x31 (w x h), its image img01.jpg 30x39 (as stored; EXIF orientation 6, "
        "a viewer shows it 39x30): a mask must have its image's size")
    Image.fromarray(mask(31, 40), mode="L").save(folder / "labels" / "img02.png")
    assert f"{folder / 'labels' / 'img02.png'}: 40x31 (w x h), its image img02.png 41x31: a mask must have its " \
        "image's size" in refused(tmp_path, folder).splitlines()


def test_a_value_that_is_no_class_is_named_with_its_pixel(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    label = mask(31, 41)
    label[7, 11] = 3
    Image.fromarray(label, mode="L").save(folder / "labels" / "img02.png")
    assert refused(tmp_path, folder) == (f"{folder / 'labels' / 'img02.png'}: value 3 at pixel (x=11, y=7) is "
                                         "neither a class (0..2, classes.txt) nor 255 (ignore)")
    assert "value 2 at pixel (x=20, y=15) is not in label_values (0, 1, 255)" in \
        refused(tmp_path, folder, FolderSpec(label_values={0: 0, 1: 1, 255: 255}))


def test_a_colour_that_is_no_class_is_named_with_its_pixel(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4, encoding="color")
    rgb = np.array(Image.open(folder / "labels" / "img03.png"))
    rgb[2, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(folder / "labels" / "img03.png")
    assert refused(tmp_path, folder, FolderSpec(encoding="color")) == (
        f"{folder / 'labels' / 'img03.png'}: colour (1, 2, 3) at pixel (x=5, y=2) is none of classes.txt's colours; "
        "a colour that means ignore (a boundary): ignore_colors: [[1, 2, 3]]")


@pytest.mark.parametrize("text, encoding, expected", [
    ("background\ncat\ncat\n", "index", r"classes.txt:3: class 'cat' is listed twice \(first on line 2"),
    ("background 0 0 0\ncat\n", "index", r"give a colour on every line or on none \(1 of 2 have one\)"),
    ("background\ncat\n", "color", r"label_encoding: color needs a colour per class"),
    ("background 0 0 0\ncat 0 0 0\n", "color", r"two classes share a colour"),
    ("background 0 0 300\ncat 1 1 1\n", "color", r"classes.txt:1: colour \(0, 0, 300\) of 'background'"),
    ("only\n", "index", r"1 classes; 2 to 254 are possible"),
])
def test_a_malformed_classes_file_is_refused(text: str, encoding: str, expected: str, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=3, encoding="color" if encoding == "color" else "index")
    (folder / "classes.txt").write_text(text)
    assert __import__("re").search(expected, refused(tmp_path, folder, FolderSpec(encoding=encoding)))


@pytest.mark.parametrize("train, val, expected", [
    ("img00\nimg01\n", "img02\nnope\n", r"val.txt:2: 'nope' is not an image of images/"),
    ("img00\nimg00\n", "img02\n", r"train.txt:2: 'img00' is listed twice"),
    ("img00\nimg01\n", "img01.jpg\n", r"val.txt:1: 'img01' is in both splits \(also .*train.txt:2\)"),
    ("img00\n", None, r"splits/val.txt: missing: give both split lists or neither"),
])
def test_split_lists_are_checked(train: str, val: str | None, expected: str, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    (folder / "splits").mkdir()
    (folder / "splits" / "train.txt").write_text(train)
    if val is not None:
        (folder / "splits" / "val.txt").write_text(val)
    assert __import__("re").search(expected, refused(tmp_path, folder))


def test_given_splits_are_used_and_a_class_no_training_mask_holds_is_warned(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "f", n=4)
    (folder / "classes.txt").write_text(CLASSES + "bird\n")
    (folder / "splits").mkdir()
    (folder / "splits" / "train.txt").write_text("img00\nimg01\nimg02\n")
    (folder / "splits" / "val.txt").write_text("img03.png\n")
    meta = prepare_folder(folder, tmp_path / "out", FolderSpec(), workers=1)
    assert meta["counts"] == {"train": 3, "val": 1} and meta["split"] == "the folder's splits/"
    assert "warning: no training mask contains class(es) bird" in capsys.readouterr().err


def test_the_tool_checks_a_folder_in_one_line_per_problem_and_prepares_it(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import pipeline.folder
    folder = write_folder(tmp_path / "mine", n=4)
    assert pipeline.folder.main([str(folder), "--batch-size", "3"]) == 0
    assert f"pipeline.folder: {folder}: fine: 3 train, 1 val, 3 classes" in capsys.readouterr().out
    assert pipeline.folder.main([str(folder), "--out", str(tmp_path / "ready"), "--batch-size", "3"]) == 0
    assert (tmp_path / "ready" / "meta.json").is_file()
    capsys.readouterr()
    (folder / "labels" / "img00.png").unlink()
    assert pipeline.folder.main([str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pipeline.folder: error: {folder / 'labels' / 'img00.png'}: missing: image "
                   f"{folder / 'images' / 'img00.png'} has no label"]
    assert pipeline.folder.main([str(folder), "--label-values", "0-0"]) == 2
    assert "--label-values: '0-0' is not a list of value:class pairs" in capsys.readouterr().err
