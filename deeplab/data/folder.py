"""Your own data: a folder of images and masks, checked whole and prepared like the paper's datasets.

The folder::

    <folder>/images/<stem>.jpg | .jpeg | .png     extension in any case
    <folder>/labels/<stem>.png                    the mask, in one of the encodings below (PNG: lossless)
    <folder>/classes.txt                          one class per line, in index order: "name" or "name r g b"
    <folder>/splits/train.txt, splits/val.txt     optional, both or neither: stems, one per line; without
                                                  them a seeded 90/10 split is drawn and written out

Mask encodings (``label_encoding``): ``index``, a single-channel, palette or 1-bit PNG whose values are class
indices 0..C-1, 255 = ignore (a 1-bit mask reads 0 and 1); ``color``, an RGB PNG whose every pixel has one of
classes.txt's colours or one of ``ignore_colors`` (read as ignore: the boundary colour annotation tools draw);
and ``label_values``, under ``index``, a map from the masks' values to class indices (``{0: 0, 255: 1}`` for
binary 0/255 masks; a value it maps to 255 is ignored, a value it does not list is an error).

Everything is checked before anything final is written, and each problem is one line naming the file (and
the value and pixel) and the fix: unmatched images and labels, masks that are not PNG (JPEG's compression
changes values along every edge), sizes, values that are neither a class nor ignore, classes.txt, the split
lists, and a training split smaller than one batch. Two checks judge the folder as a whole:

- 0 and 255 under ``index``: a mask of only 0 and a 255 border is a picture of background, common in
  VOC-style data; but when no mask holds any class 1..C-1, the masks are binary 0/255 ones whose 255 would
  be read as ignore (the peers' commonest silent failure): refused, naming them and ``label_values``.
- EXIF orientation: an image is read as stored or as a viewer shows it (its orientation applied), whichever
  its mask follows. Its size tells where the orientation swaps width and height; where it cannot (a
  180-degree turn, a mirror, a square image) the entry's ``exif: apply | ignore`` decides, and without it
  prepare stops and asks. Every oriented image is listed in the log and in meta.json.

Grayscale, alpha, palette and 16-bit images are converted to 8-bit RGB (said once, with their number). The
prepared folder then holds what the paper's datasets' do (deeplab.datasets): ``images/``, single-channel
index PNGs under ``labels/``, ``splits/{train,val}.txt`` and, last, ``meta.json``; it is built beside the
output and swapped in whole (deeplab.data.prepare).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageOps

from deeplab import atomic
from deeplab.config import too_few_to_train
from deeplab.data.convert import write_png
from deeplab.data.labels import IGNORE_INDEX, voc_palette
from deeplab.data.prepare import in_pool, remove_leftovers, swap_in
from deeplab.errors import PipelineError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ENCODINGS = ("index", "color")
EXIF_CHOICES = ("apply", "ignore")
MAX_LINES = 20  # problems listed one per line, then how many more
EXAMPLES = 5    # files named where a line speaks of many
ORIENTATION_TAG = 0x0112
ORIENTATIONS = {2: "mirrored left to right", 3: "turned 180 degrees", 4: "mirrored top to bottom",
                5: "mirrored and turned", 6: "turned 90 degrees", 7: "mirrored and turned", 8: "turned 90 degrees"}
SWAPS_SIDES = frozenset((5, 6, 7, 8))  # orientations that swap width and height
MODE_NAMES = {"1": "1-bit (black and white)", "L": "grayscale", "LA": "grayscale with alpha", "P": "palette",
              "PA": "palette with alpha", "RGB": "RGB", "RGBA": "RGB with alpha", "CMYK": "CMYK", "YCbCr": "YCbCr",
              "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "floating-point"}
INDEX_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I")


class FolderError(PipelineError):
    """The folder cannot be prepared as it is; one line per problem, each naming the file."""


@dataclass(frozen=True)
class FolderSpec:
    """How the folder's masks are read and its split drawn (a dataset's params entry)."""

    encoding: str = "index"                        # index | color
    label_values: Mapping[int, int] | None = None  # mask value -> class index (or 255 = ignore); index masks
    val_share: float = 0.1                         # of the images, when the folder has no split lists
    seed: int = 0                                  # of that split
    ignore_colors: tuple[tuple[int, int, int], ...] = ()  # color masks: colours read as ignore (255)
    exif: str | None = None                        # apply | ignore: whether masks follow EXIF orientation;
                                                   # None: each image's size decides, and prepare asks where
                                                   # it cannot

    def check(self, classes: "Classes | None" = None) -> None:
        """The combinations that cannot be meant, refused naming the keys."""
        if self.encoding not in ENCODINGS:
            raise FolderError(f"label_encoding: '{self.encoding}' is not one of {', '.join(ENCODINGS)}")
        if self.exif is not None and self.exif not in EXIF_CHOICES:
            raise FolderError(f"exif: '{self.exif}' is not one of {', '.join(EXIF_CHOICES)}")
        if self.encoding == "color" and self.label_values:
            raise FolderError("label_values with label_encoding: color: label_values maps the values of "
                              "single-channel masks, and a colour mask's classes are classes.txt's colours; remove "
                              "label_values (a colour that means ignore goes in ignore_colors)")
        if self.encoding != "color" and self.ignore_colors:
            raise FolderError("ignore_colors with label_encoding: index: only colour masks have colours (255 is "
                              "ignore in an index mask); remove ignore_colors or set label_encoding: color")
        if classes is not None and classes.colours:
            shared = [c for c in self.ignore_colors if c in classes.colours]
            if shared:
                raise FolderError(f"ignore_colors: {list(shared[0])} is also the colour of class "
                                  f"'{classes.names[classes.colours.index(shared[0])]}' in classes.txt: a colour "
                                  "is a class or ignore, not both")


@dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None  # None when classes.txt gives none


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    label: Path


def read_classes(path: Path, encoding: str) -> Classes:
    """classes.txt: one class per line, "name" or "name r g b"; refused whole, naming each bad line."""
    if not path.is_file():
        raise FolderError(f"{path}: not found: list your classes there, one per line in index order "
                          "(\"name\" or \"name r g b\")")
    names, colours, problems = [], [], []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            name, rgb = " ".join(parts[:-3]), tuple(int(p) for p in parts[-3:])
            if max(rgb) > 255:
                problems.append(f"{path}:{number}: colour {rgb} of '{name}': each of r g b must be in 0..255")
            colours.append(rgb)
        else:
            name = line
            colours.append(None)
        if name in names:
            problems.append(f"{path}:{number}: class '{name}' is listed twice (first on line "
                            f"{names.index(name) + 1} of the classes)")
        names.append(name)
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        problems.append(f"{path}: give a colour on every line or on none ({len(given)} of {len(colours)} have one)")
    if len(set(given)) != len(given):
        problems.append(f"{path}: two classes share a colour: every colour must name one class")
    if encoding == "color" and not given:
        problems.append(f"{path}: label_encoding: color needs a colour per class (\"name r g b\")")
    if not 2 <= len(names) <= 254:
        problems.append(f"{path}: {len(names)} classes; 2 to 254 are possible (255 is the ignore index)")
    _raise(problems)
    return Classes(tuple(names), tuple(colours) if given else None)  # type: ignore[arg-type]


def find_pairs(folder: Path) -> list[Pair]:
    """Each image with its label, by stem; every unmatched file (and a stem with two images) named."""
    images_dir, labels_dir = folder / "images", folder / "labels"
    problems = [f"{d}: not found (the layout: images/, labels/, classes.txt)" for d in (images_dir, labels_dir)
                if not d.is_dir()]
    _raise(problems)
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.is_file() and not path.name.startswith("."):
                problems.append(f"{path}: not an image this reads ({', '.join(IMAGE_SUFFIXES)}, in any case)")
            continue
        if path.stem in images:
            problems.append(f"{path}: a second image of stem '{path.stem}' (also {images[path.stem].name}); keep one")
        images[path.stem] = path
    labels, other = {}, set()
    for path in sorted(labels_dir.iterdir()):
        if path.suffix.lower() == ".png":
            labels[path.stem] = path
        elif path.is_file() and not path.name.startswith("."):
            other.add(path.stem)
            problems.append(f"{path}: a JPEG mask: JPEG's lossy compression changes the values along every edge, "
                            "so class indices cannot be read back; export the masks as PNG"
                            if path.suffix.lower() in (".jpg", ".jpeg") else
                            f"{path}: not a PNG mask: masks are read from lossless PNG files; save it as "
                            f"labels/{path.stem}.png")
    problems += [f"{labels_dir / (stem + '.png')}: missing: image {images[stem]} has no label" for stem in images
                 if stem not in labels and stem not in other]
    problems += [f"{labels[stem]}: label without an image (no images/{stem}.jpg, .jpeg or .png)" for stem in labels
                 if stem not in images]
    if not images and not problems:
        problems.append(f"{images_dir}: no images")
    _raise(problems)
    return [Pair(stem, images[stem], labels[stem]) for stem in sorted(images)]


def read_splits(folder: Path, stems: list[str], spec: FolderSpec) -> tuple[dict[str, list[str]], bool]:
    """{train, val} -> stems: the folder's lists, checked, or a seeded split; and whether it was drawn."""
    files = {split: folder / "splits" / f"{split}.txt" for split in ("train", "val")}
    present = [split for split, path in files.items() if path.is_file()]
    if not present:
        order = sorted(stems)
        random.Random(spec.seed).shuffle(order)
        count = max(1, round(len(order) * spec.val_share)) if len(order) > 1 else 0
        if count == 0 or count >= len(order):
            raise FolderError(f"{folder}: {len(order)} image(s): too few to split into train and val; add images "
                              "or give splits/train.txt and splits/val.txt")
        return {"train": sorted(order[count:]), "val": sorted(order[:count])}, True
    if len(present) == 1:
        missing = "val" if present == ["train"] else "train"
        raise FolderError(f"{files[missing]}: missing: give both split lists or neither (then a seeded "
                          f"{1 - spec.val_share:.0%}/{spec.val_share:.0%} split is drawn)")
    known, splits, problems, seen = set(stems), {}, [], {}
    for split, path in files.items():
        listed = []
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            stem = raw.strip()
            if not stem:
                continue
            stem = Path(stem).stem if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem
            if stem not in known:
                problems.append(f"{path}:{number}: '{stem}' is not an image of images/")
            elif stem in seen:
                where = seen[stem]
                problems.append(f"{path}:{number}: '{stem}' is listed twice" if where[0] == split else
                                f"{path}:{number}: '{stem}' is in both splits (also {files[where[0]]}:{where[1]})")
            else:
                seen[stem] = (split, number)
                listed.append(stem)
        if not listed:
            problems.append(f"{path}: lists no image")
        splits[split] = listed
    _raise(problems)
    return splits, False


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation (1..8; 1, the pixels as stored, where none or an invalid one is given)."""
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def follows_exif(pair: Pair, orientation: int, stored: tuple[int, int], mask: tuple[int, int],
                 choice: str | None) -> tuple[bool, str | None]:
    """Whether the image is read with its EXIF orientation applied (its mask drawn on the view), or the
    problem. Sizes (w, h) decide where the orientation swaps them; where it does not (a 180-degree turn, a
    mirror, a square image) ``choice`` (exif: apply | ignore) decides, and without it the user is asked."""
    if mask != stored and (orientation not in SWAPS_SIDES or mask != (stored[1], stored[0])):
        shown = "" if orientation == 1 else (f" (as stored; EXIF orientation {orientation}, a viewer shows it "
                                             f"{stored[1]}x{stored[0]})" if orientation in SWAPS_SIDES else
                                             f" (EXIF orientation {orientation})")
        return False, (f"{pair.label}: {mask[0]}x{mask[1]} (w x h), its image {pair.image.name} "
                       f"{stored[0]}x{stored[1]}{shown}: a mask must have its image's size")
    if orientation == 1:
        return False, None
    if stored[0] != stored[1] and orientation in SWAPS_SIDES:
        return mask != stored, None
    if choice is None:
        return False, (f"{pair.image}: EXIF orientation {orientation} ({ORIENTATIONS[orientation]}), and its "
                       f"mask {pair.label.name} has its size either way: whether the mask was drawn on the pixels "
                       "as stored or as a viewer shows them cannot be told; set exif: apply (masks follow the view) "
                       "or exif: ignore (masks follow the stored pixels) in the dataset's params entry "
                       "(pipeline.folder: --exif)")
    return choice == "apply", None


def as_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """``image`` as 8-bit RGB, and what it was converted from (None: it was 8-bit RGB)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy(), None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.uint32)
        scale = 257 if pixels.max() > 255 else 1  # 16-bit values to 8 bits
        grey = (pixels // scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), "16-bit"
    kind = {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "alpha", "P": "palette", "PA": "palette",
            "1": "1-bit", "CMYK": "CMYK"}.get(mode, mode)
    return image.convert("RGB"), kind


def mode_name(mode: str) -> str:
    name = MODE_NAMES.get(mode, mode)
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def label_classes(path: Path, classes: Classes, spec: FolderSpec) -> tuple[np.ndarray | None, str | None, str]:
    """The mask as class indices (255 = ignore), or the first problem (file, what was found, the fix); and
    the mask's image mode (its file is opened once)."""
    with Image.open(path) as opened:
        mode = opened.mode
        label, problem = _label_classes(path, opened, classes, spec)
    return label, problem, mode


def _label_classes(path: Path, opened: Image.Image, classes: Classes,
                   spec: FolderSpec) -> tuple[np.ndarray | None, str | None]:
    """:func:`label_classes` of an opened mask."""
    mode = opened.mode
    if opened.format == "JPEG":
        return None, (f"{path}: a JPEG file named .png: JPEG's lossy compression changes the values along every "
                      "edge, so class indices cannot be read back; export the masks as PNG")
    if spec.encoding == "color":
        if mode not in ("RGB", "RGBA", "P"):
            return None, (f"{path}: {mode_name(mode)} image; label_encoding: color needs RGB masks in "
                          "classes.txt's colours (masks of class indices: label_encoding: index)")
        rgb = np.asarray(opened.convert("RGB"))
        code = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        lut = {(r << 16) | (g << 8) | b: IGNORE_INDEX for r, g, b in spec.ignore_colors}
        lut.update({(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(classes.colours or ())})
        values, inverse = np.unique(code, return_inverse=True)
        unknown = [v for v in values.tolist() if v not in lut]
        if unknown:
            y, x = np.argwhere(code == unknown[0])[0]
            colour = ((unknown[0] >> 16) & 255, (unknown[0] >> 8) & 255, unknown[0] & 255)
            return None, (f"{path}: colour {colour} at pixel (x={x}, y={y}) is none of classes.txt's colours"
                          + (" nor ignore_colors" if spec.ignore_colors else "")
                          + (f" ({len(unknown)} such colours)" if len(unknown) > 1 else "")
                          + ("" if spec.ignore_colors else
                             f"; a colour that means ignore (a boundary): ignore_colors: [{list(colour)}]"))
        table = np.array([lut[v] for v in values.tolist()], np.uint8)
        return table[inverse].reshape(code.shape), None
    if mode not in INDEX_MODES:
        return None, (f"{path}: {mode_name(mode)} image; label_encoding: {spec.encoding} needs single-channel, "
                      "palette or 1-bit PNG masks of class indices"
                      + (" (RGB masks in classes.txt's colours: label_encoding: color)"
                         if mode in ("RGB", "RGBA") else ""))
    raw = np.asarray(opened).astype(np.int64)  # a 1-bit mask reads 0 and 1
    present = np.unique(raw).tolist()
    if spec.label_values:
        mapping = {int(k): int(v) for k, v in spec.label_values.items()}
        bad = [v for v in present if v not in mapping]
        if bad:
            y, x = np.argwhere(raw == bad[0])[0]
            return None, (f"{path}: value {bad[0]} at pixel (x={x}, y={y}) is not in label_values "
                          f"({', '.join(map(str, sorted(mapping)))})")
        table = np.full(max(present) + 1, IGNORE_INDEX, np.int64)
        for raw_value, target in mapping.items():
            if raw_value < len(table):
                table[raw_value] = target
        return table[raw].astype(np.uint8), None
    count = len(classes.names)
    bad = [v for v in present if not (0 <= v < count or v == IGNORE_INDEX)]
    if bad:
        y, x = np.argwhere(raw == bad[0])[0]
        return None, (f"{path}: value {bad[0]} at pixel (x={x}, y={y}) is neither a class (0..{count - 1}, "
                      f"classes.txt) nor 255 (ignore)")
    return raw.astype(np.uint8), None


@dataclass(frozen=True)
class Checked:
    stem: str
    problem: str | None
    converted: str | None      # what the image was converted from, or None
    classes_seen: tuple[int, ...] = ()
    image_name: str = ""       # its name in the prepared images/
    sha256: str = ""           # of the image's and the label's bytes: which pixels were prepared
    orientation: int = 1       # the image's EXIF orientation
    exif_applied: bool = False
    exif_by: str = ""          # what decided it: "its mask" (its size) or "exif: <choice>"
    zero_and_ignore: bool = False  # the mask holds 0 and 255 and nothing else (under index, no label_values)
    one_bit_mask: bool = False


def check_pair(job: tuple[Pair, Classes, FolderSpec, Path]) -> Checked:
    """Read and check one pair and, when it is fine, write its prepared image and label into the build
    folder ``build`` (which is swapped in only when every pair is fine)."""
    pair, classes, spec, build = job
    try:
        label, problem, mode = label_classes(pair.label, classes, spec)
    except (OSError, ValueError) as error:
        return Checked(pair.stem, f"{pair.label}: cannot be read as a PNG ({error})", None)
    if problem:
        return Checked(pair.stem, problem, None)
    try:
        with Image.open(pair.image) as opened:
            orientation = orientation_of(opened)
            applied, problem = follows_exif(pair, orientation, opened.size, (label.shape[1], label.shape[0]),
                                            spec.exif)
            if problem:
                return Checked(pair.stem, problem, None)
            by = "its mask" if orientation in SWAPS_SIDES and opened.width != opened.height else f"exif: {spec.exif}"
            image, converted = as_rgb(ImageOps.exif_transpose(opened) if applied else opened)
    except (OSError, ValueError) as error:
        return Checked(pair.stem, f"{pair.image}: cannot be read as an image ({error})", None)
    as_png = bool(converted) or orientation != 1  # re-encoded as read, without the orientation tag
    image_name = f"{pair.stem}.png" if as_png else f"{pair.stem}{pair.image.suffix.lower()}"
    if as_png:
        image.save(build / "images" / image_name, compress_level=1)
    else:
        shutil.copyfile(pair.image, build / "images" / image_name)
    write_png(label, build / "labels" / f"{pair.stem}.png")
    values = set(np.unique(label).tolist())
    seen = tuple(sorted(int(v) for v in values if v != IGNORE_INDEX))
    digest = hashlib.sha256(pair.image.read_bytes() + b"\0" + pair.label.read_bytes()).hexdigest()
    plain_index = spec.encoding == "index" and not spec.label_values
    return Checked(pair.stem, None, converted, seen, image_name, digest, orientation, applied and orientation != 1,
                   by if orientation != 1 else "", plain_index and values == {0, IGNORE_INDEX}, mode == "1")


def source_files(folder: str | Path) -> list[str]:
    """Every file prepare reads from ``folder`` (classes.txt, images/, labels/, splits/), sorted: what the DAG
    watches for edits. Empty when the folder is not there (prepare then says so)."""
    root = Path(folder)
    found = [root / "classes.txt"] if (root / "classes.txt").is_file() else []
    for sub in ("images", "labels", "splits"):
        if (root / sub).is_dir():
            found += [path for path in (root / sub).iterdir() if path.is_file() and not path.name.startswith(".")]
    return sorted(map(str, found))


def image_count(files: list[str]) -> int:
    """How many of ``files`` (as :func:`source_files` lists them) are under images/."""
    return sum(Path(path).parent.name == "images" for path in files)


def spec_of(recipe: Any) -> FolderSpec:
    """The FolderSpec of a dataset's params entry (deeplab.config.DatasetRecipe of layout folder)."""
    return FolderSpec(recipe.label_encoding, dict(recipe.label_values) if recipe.label_values else None,
                      recipe.val_share, recipe.split_seed, tuple(tuple(c) for c in recipe.ignore_colors or ()),
                      recipe.exif)


def check_classes(folder: Path, encoding: str, num_classes: int, name: str) -> Classes:
    """classes.txt read, and its class count the one params give (the model's output width)."""
    if not folder.is_dir():
        raise FolderError(f"{folder}: not found or not a folder (params/datasets.yaml {name}.source)")
    classes = read_classes(folder / "classes.txt", encoding)
    if len(classes.names) != num_classes:
        raise FolderError(f"{folder / 'classes.txt'}: {len(classes.names)} classes, but params/datasets.yaml "
                          f"{name}.num_classes says {num_classes}: make them agree")
    return classes


def prepare_folder(folder: Path, out: Path, spec: FolderSpec, name: str = "folder",
                   workers: int | None = None, num_classes: int | None = None,
                   batch_size: int | None = None) -> dict[str, Any]:
    """Check the whole folder while building the prepared dataset beside ``out`` (each file read once), and
    swap it in whole when every check passed; return meta.json. When any check fails, the build is removed
    and ``out`` untouched: the error lists every problem, one line each. ``num_classes``: the class count
    classes.txt must give (the dataset's params entry), if any; ``batch_size``: the batch it will be trained
    with, which the training split must fill (None: not checked)."""
    spec.check()
    spec = dataclasses.replace(spec, label_values=dict(spec.label_values) if spec.label_values else None,
                               ignore_colors=tuple(tuple(c) for c in spec.ignore_colors))  # plain: worker processes
    given, folder, out = str(folder), folder.absolute(), out.absolute()
    if not folder.is_dir():
        raise FolderError(f"{folder}: not found or not a folder (the dataset's source in params/datasets.yaml)")
    classes = read_classes(folder / "classes.txt", spec.encoding) if num_classes is None \
        else check_classes(folder, spec.encoding, num_classes, name)
    spec.check(classes)
    pairs = find_pairs(folder)
    splits, drawn = read_splits(folder, [p.stem for p in pairs], spec)
    if batch_size and len(splits["train"]) < batch_size:
        raise FolderError(too_few_to_train(name, len(splits["train"]), batch_size,
                                           "the split drawn from the folder" if drawn else "splits/train.txt"))
    used = {stem for stems in splits.values() for stem in stems}
    pairs = [p for p in pairs if p.stem in used]
    remove_leftovers(out)
    build = out.parent / f".{out.name}.build-{os.getpid()}"  # hidden, and swapped in only when all is fine
    try:
        for sub in ("images", "labels", "splits"):
            (build / sub).mkdir(parents=True)
        checked = in_pool(check_pair, [(p, classes, spec, build) for p in pairs], workers)  # one read per file
        _raise([c.problem for c in checked if c.problem])
        binary = [c for c in checked if c.zero_and_ignore]
        if binary and not any(k > 0 for c in checked for k in c.classes_seen):
            raise FolderError(f"{folder / 'labels'}: no mask holds a class other than 0, and {len(binary)} hold "
                              f"only the values 0 and 255 ({examples(f'{c.stem}.png' for c in binary)}): under "
                              "label_encoding: index 255 means ignore, so nothing but class 0 would be learned. "
                              "Binary masks written 0/255? Set label_values: {0: 0, 255: 1} in the dataset's entry "
                              "of params/datasets.yaml (pipeline.folder: --label-values 0:0,255:1)")
        if binary:
            _log(f"{len(binary)} mask(s) hold only class 0 and 255 (ignore), taken as background with an ignore "
                 f"region: {examples(f'{c.stem}.png' for c in binary)}")
        one_bit = [c.stem for c in checked if c.one_bit_mask]
        if one_bit:
            _log(f"{len(one_bit)} 1-bit mask(s) read as 0 (black) and 1 (white): {examples(one_bit)}")
        oriented = [c for c in checked if c.orientation != 1]
        sources = {p.stem: p.image.name for p in pairs}
        if oriented:
            _log(f"{len(oriented)} image(s) carry an EXIF orientation other than 1; read "
                 + ", ".join(f"{sources[c.stem]} ({c.orientation}: "
                             f"{'as a viewer shows it' if c.exif_applied else 'as stored'}, by {c.exif_by})"
                             for c in oriented[:MAX_LINES])
                 + (f", and {len(oriented) - MAX_LINES} more" if len(oriented) > MAX_LINES else ""))
        converted = [c.converted for c in checked if c.converted]
        if converted:
            kinds = {kind: converted.count(kind) for kind in sorted(set(converted))}
            _log(f"converting {len(converted)} image(s) to 8-bit RGB ("
                 + ", ".join(f"{kind} {n}" for kind, n in kinds.items()) + ")")
        trained = {k for c in checked if c.stem in set(splits["train"]) for k in c.classes_seen}
        absent = [classes.names[k] for k in range(len(classes.names)) if k not in trained]
        if absent:
            _log(f"warning: no training mask contains class(es) {', '.join(absent)}: the model cannot learn them")
        written = {c.stem: c.image_name for c in checked}
        for split, stems in splits.items():
            lines = [f"images/{written[s]} labels/{s}.png\n" for s in stems]
            (build / "splits" / f"{split}.txt").write_text("".join(lines))
        palette = [list(c) for c in classes.colours] if classes.colours else \
            [voc_palette()[3 * k:3 * k + 3] for k in range(len(classes.names))]
        meta = {"dataset": name, "classes": list(classes.names), "num_classes": len(classes.names),
                "palette": palette, "ignore_index": IGNORE_INDEX,
                "counts": {split: len(stems) for split, stems in splits.items()},
                "sources": {"folder": given, "files_sha256": hashlib.sha256(
                    "".join(f"{c.stem} {c.sha256}\n" for c in sorted(checked, key=lambda c: c.stem)).encode()).hexdigest()},
                "label_encoding": spec.encoding, "label_values": dict(spec.label_values or {}) or None,
                "ignore_colors": [list(c) for c in spec.ignore_colors] or None,
                "exif": {"setting": spec.exif, "oriented": {
                    c.stem: {"orientation": c.orientation, "applied": c.exif_applied, "by": c.exif_by}
                    for c in oriented}},
                "split": f"drawn: seed {spec.seed}, {spec.val_share:.0%} val" if drawn else "the folder's splits/",
                "converted_images": len(converted),
                "labels": "single-channel uint8 PNG of class indices, 255 = ignore",
                "images": "as given, or 8-bit RGB PNG where converted or carrying an EXIF orientation (written as read)"}
        atomic.write_json(build / "meta.json", meta, indent=1)  # last: its presence marks a complete folder
        swap_in(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _log(f"prepared {name}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
         f"{len(classes.names)} classes")
    return meta


def examples(names: Any) -> str:
    """The first few of ``names``, and how many more."""
    names = list(names)
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


def _raise(problems: list[str]) -> None:
    if problems:
        shown = problems[:MAX_LINES]
        more = len(problems) - len(shown)
        raise FolderError("\n".join(shown) + (f"\n... and {more} more problem(s)" if more else ""))


def _log(message: str) -> None:
    print(f"[prepare] {message}", file=sys.stderr, flush=True)
