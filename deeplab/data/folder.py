"""Your own data: a folder of images and masks, checked whole and prepared like the paper's datasets.

The folder::

    <folder>/images/<stem>.jpg | .jpeg | .png     extension in any case
    <folder>/labels/<stem>.png                    the mask, in one of the encodings below
    <folder>/classes.txt                          one class per line, in index order: "name" or "name r g b"
    <folder>/splits/train.txt, splits/val.txt     optional, both or neither: stems, one per line; without
                                                  them a seeded 90/10 split is drawn and written out

Mask encodings (``label_encoding``): ``index``, a single-channel or palette PNG whose values are class
indices 0..C-1, 255 = ignore; ``color``, an RGB PNG whose every pixel has one of classes.txt's colours;
and ``label_values``, a map from the masks' values to class indices (``{0: 0, 255: 1}`` for binary 0/255
masks; a value it maps to 255 is ignored, a value it does not list is an error).

Everything is checked before anything final is written, and each problem is one line naming the file (and
the value and pixel): unmatched images and labels, sizes, values that are neither a class nor ignore, a
mask of only 0 and 255 under ``index`` (the peers' most common silent failure: 255 is ignore there, so such
a mask teaches nothing; the line says to set ``label_values``), classes.txt, and the split lists. Images
are read as a viewer shows them (their EXIF orientation applied; the mask must match that orientation);
grayscale, alpha, palette and 16-bit images are converted to 8-bit RGB (said once, with their number). The
prepared folder then holds what the paper's datasets' do (deeplab.datasets): ``images/``, single-channel
index PNGs under ``labels/``, ``splits/{train,val}.txt`` and, last, ``meta.json``; it is built beside the
output and swapped in whole (deeplab.data.prepare).
"""
from __future__ import annotations

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
from deeplab.data.convert import write_png
from deeplab.data.labels import IGNORE_INDEX, voc_palette
from deeplab.data.prepare import in_pool, remove_leftovers, swap_in
from deeplab.errors import PipelineError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ENCODINGS = ("index", "color")
MAX_LINES = 20  # problems listed one per line, then how many more


class FolderError(PipelineError):
    """The folder cannot be prepared as it is; one line per problem, each naming the file."""


@dataclass(frozen=True)
class FolderSpec:
    """How the folder's masks are read and its split drawn (a dataset's params entry)."""

    encoding: str = "index"                        # index | color
    label_values: Mapping[int, int] | None = None  # mask value -> class index (or 255 = ignore)
    val_share: float = 0.1                         # of the images, when the folder has no split lists
    seed: int = 0                                  # of that split


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
    labels = {p.stem: p for p in sorted(labels_dir.iterdir()) if p.suffix.lower() == ".png"}
    problems += [f"{labels_dir / (stem + '.png')}: missing: image {images[stem]} has no label" for stem in images
                 if stem not in labels]
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


def read_image(path: Path) -> tuple[Image.Image, str | None, bool]:
    """The image as a viewer shows it (EXIF orientation applied), as 8-bit RGB; what was converted (None: it
    was 8-bit RGB already); and whether its EXIF orientation turned it."""
    with Image.open(path) as opened:
        rotated = opened.getexif().get(0x0112, 1) not in (1, None)
        image = ImageOps.exif_transpose(opened)
        mode = image.mode
        if mode == "RGB":
            return image.copy(), None, rotated
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(image, dtype=np.uint32)
            scale = 257 if pixels.max() > 255 else 1  # 16-bit values to 8 bits
            grey = (pixels // scale).clip(0, 255).astype(np.uint8)
            return Image.fromarray(grey).convert("RGB"), "16-bit", rotated
        kind = {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "alpha", "P": "palette", "PA": "palette",
                "1": "1-bit", "CMYK": "CMYK"}.get(mode, mode)
        return image.convert("RGB"), kind, rotated


def label_classes(path: Path, classes: Classes, spec: FolderSpec) -> tuple[np.ndarray | None, str | None]:
    """The mask as class indices (255 = ignore), or the first problem (file, value and pixel named)."""
    with Image.open(path) as opened:
        mode = opened.mode
        if spec.encoding == "color":
            if mode not in ("RGB", "RGBA", "P"):
                return None, f"{path}: a {mode} image; label_encoding: color needs RGB masks"
            rgb = np.asarray(opened.convert("RGB"))
            code = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
            lut = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(classes.colours or ())}
            values, inverse = np.unique(code, return_inverse=True)
            unknown = [v for v in values.tolist() if v not in lut]
            if unknown:
                y, x = np.argwhere(code == unknown[0])[0]
                colour = ((unknown[0] >> 16) & 255, (unknown[0] >> 8) & 255, unknown[0] & 255)
                return None, (f"{path}: colour {colour} at pixel (x={x}, y={y}) is none of classes.txt's colours"
                              + (f" ({len(unknown)} such colours)" if len(unknown) > 1 else ""))
            table = np.array([lut[v] for v in values.tolist()], np.uint8)
            return table[inverse].reshape(code.shape), None
        if mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
            return None, (f"{path}: a {mode} image; label_encoding: {spec.encoding} needs single-channel or "
                          "palette PNG masks of class indices (for RGB masks: label_encoding: color)")
        raw = np.asarray(opened).astype(np.int64)
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
    if set(present) == {0, IGNORE_INDEX} and count >= 2:
        return None, (f"{path}: holds only 0 and 255, and under label_encoding: index 255 means ignore, so this "
                      "mask would teach nothing but class 0. Binary 0/255 masks? Set label_values: {0: 0, 255: 1} "
                      "in the dataset's params entry")
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


def check_pair(job: tuple[Pair, Classes, FolderSpec, Path]) -> Checked:
    """Read and check one pair and, when it is fine, write its prepared image and label into the build
    folder ``build`` (which is swapped in only when every pair is fine)."""
    pair, classes, spec, build = job
    try:
        image, converted, rotated = read_image(pair.image)
    except (OSError, ValueError) as error:
        return Checked(pair.stem, f"{pair.image}: cannot be read as an image ({error})", None)
    try:
        label, problem = label_classes(pair.label, classes, spec)
    except (OSError, ValueError) as error:
        return Checked(pair.stem, f"{pair.label}: cannot be read as a PNG ({error})", None)
    if problem:
        return Checked(pair.stem, problem, converted)
    width, height = image.size
    if label.shape != (height, width):
        shown = " (as a viewer shows it: its EXIF orientation applied)" if rotated else ""
        return Checked(pair.stem, f"{pair.label}: {label.shape[1]}x{label.shape[0]} (w x h), its image "
                                  f"{pair.image.name} {width}x{height}{shown}: a mask must have its image's size", converted)
    as_png = bool(converted) or rotated  # re-encoded as the viewer shows it
    image_name = f"{pair.stem}.png" if as_png else f"{pair.stem}{pair.image.suffix.lower()}"
    if as_png:
        image.save(build / "images" / image_name, compress_level=1)
    else:
        shutil.copyfile(pair.image, build / "images" / image_name)
    write_png(label, build / "labels" / f"{pair.stem}.png")
    seen = tuple(int(v) for v in np.unique(label) if v != IGNORE_INDEX)
    digest = hashlib.sha256(pair.image.read_bytes() + b"\0" + pair.label.read_bytes()).hexdigest()
    return Checked(pair.stem, None, converted, seen, image_name, digest)


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
                      recipe.val_share, recipe.split_seed)


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
                   workers: int | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Check the whole folder while building the prepared dataset beside ``out`` (each file read once), and
    swap it in whole when every check passed; return meta.json. When any check fails, the build is removed
    and ``out`` untouched: the error lists every problem, one line each. ``num_classes``: the class count
    classes.txt must give (the dataset's params entry), if any."""
    if spec.encoding not in ENCODINGS:
        raise FolderError(f"label_encoding: '{spec.encoding}' is not one of {', '.join(ENCODINGS)}")
    spec = FolderSpec(spec.encoding, dict(spec.label_values) if spec.label_values else None, spec.val_share,
                      spec.seed)  # plain values: the checks run in worker processes
    given, folder, out = str(folder), folder.absolute(), out.absolute()
    if not folder.is_dir():
        raise FolderError(f"{folder}: not found or not a folder (the dataset's source in params/datasets.yaml)")
    classes = read_classes(folder / "classes.txt", spec.encoding) if num_classes is None \
        else check_classes(folder, spec.encoding, num_classes, name)
    pairs = find_pairs(folder)
    splits, drawn = read_splits(folder, [p.stem for p in pairs], spec)
    used = {stem for stems in splits.values() for stem in stems}
    pairs = [p for p in pairs if p.stem in used]
    remove_leftovers(out)
    build = out.parent / f".{out.name}.build-{os.getpid()}"  # hidden, and swapped in only when all is fine
    try:
        for sub in ("images", "labels", "splits"):
            (build / sub).mkdir(parents=True)
        checked = in_pool(check_pair, [(p, classes, spec, build) for p in pairs], workers)  # one read per file
        _raise([c.problem for c in checked if c.problem])
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
                "split": f"drawn: seed {spec.seed}, {spec.val_share:.0%} val" if drawn else "the folder's splits/",
                "converted_images": len(converted),
                "labels": "single-channel uint8 PNG of class indices, 255 = ignore",
                "images": "as given, or 8-bit RGB PNG where converted or EXIF-rotated"}
        atomic.write_json(build / "meta.json", meta, indent=1)  # last: its presence marks a complete folder
        swap_in(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _log(f"prepared {name}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
         f"{len(classes.names)} classes")
    return meta


def _raise(problems: list[str]) -> None:
    if problems:
        shown = problems[:MAX_LINES]
        more = len(problems) - len(shown)
        raise FolderError("\n".join(shown) + (f"\n... and {more} more problem(s)" if more else ""))


def _log(message: str) -> None:
    print(f"[prepare] {message}", file=sys.stderr, flush=True)
