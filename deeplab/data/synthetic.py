"""Small archives in the exact official formats: the smoke preset's data and the tests' fixtures.

Each archive has its official file name, internal layout and label encoding (docs/datasets.md):
VOC palette PNGs with 255 borders, SBD ``.mat`` structs ``GTcls``/``GTinst``, ADE20k annotations with 0 =
"other" plus ``objectInfo150.txt``, Cityscapes ``*_gtFine_{labelIds,color,instanceIds}.png`` rasterised
from ``*_gtFine_polygons.json`` with the official tool, and README/license.txt at the zip roots. The VOC
and SBD id lists overlap the way the real ones do (SBD train holds VOC val ids, VOC train ids reappear
in SBD, one id is listed twice), so the trainaug set arithmetic is exercised.

Images are class-coloured shapes on a textured grey background: the colour of a region tells its class,
so a short CPU training run learns them (mIoU far above chance). Each dataset paints a few classes of its
official label space (``PAINTED``), in hues spread evenly around the colour wheel so that the recipe's hue
jitter (+-36 degrees) never turns one into another. ``DEMO_SIZES`` are the smoke preset's archives: more,
smaller images than the test fixtures' defaults, so that every class appears in many training images.
Archives are byte-for-byte reproducible for a given seed (fixed member order and timestamps), so their
sha256 is stable across runs.
"""
from __future__ import annotations

import filecmp
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from deeplab.data.labels import (ADE20K_CLASSES, IGNORE_INDEX, VOC_CLASSES, cityscapes_label_to_train_lut,
                                 cityscapes_train_classes, voc_palette)

MTIME = 1_336_694_400  # 2012-05-11, fixed so archives are reproducible byte for byte
Member = tuple[str, bytes]  # (path inside the archive, content)
# Raw label values painted per dataset (VOC's 0 and ADE20k's 0 show the grey background instead):
# VOC background + bird, car, dog, person; ADE20k wall, floor, bed, person, chair; Cityscapes labelIds
# road, sidewalk, building, vegetation, sky, car (plus void regions: ground, static).
PAINTED = {"voc": (3, 7, 12, 15), "ade20k": (1, 4, 8, 13, 20), "cityscapes": (7, 8, 11, 21, 23, 26)}
DEMO_SIZES = {"voc": {"voc_train": 40, "voc_val": 16, "sbd_only": 80, "height": 48, "width": 64},
              "ade20k": {"train": 120, "val": 16, "height": 48, "width": 64},
              "cityscapes": {"per_city_train": 40, "per_city_val": 6, "per_city_test": 1, "height": 48,
                             "width": 96}}


def drawn_classes(dataset: str) -> list[str]:
    """The classes a synthetic dataset's labels hold, by their names in the prepared label space: what the
    demo's per-class numbers list and README names (VOC's and ADE20k's backgrounds included)."""
    if dataset == "voc":
        return [VOC_CLASSES[0], *(VOC_CLASSES[v] for v in PAINTED["voc"])]
    if dataset == "ade20k":
        return [ADE20K_CLASSES[v - 1] for v in PAINTED["ade20k"]]  # raw 1..150 -> 0..149
    names, lut = cityscapes_train_classes()[0], cityscapes_label_to_train_lut()
    return [names[lut[v]] for v in PAINTED["cityscapes"]]


def write_archives(dataset: str, raw_dir: Path, *, seed: int = 0, **size_options: int) -> list[Path]:
    """Write the official archives of ``dataset`` into ``raw_dir``; return their paths.

    ``size_options`` (all optional): VOC ``voc_train``, ``voc_val``, ``sbd_only``; ADE20k ``train``,
    ``val``; Cityscapes ``per_city_train``, ``per_city_val``, ``per_city_test``, ``detail`` (extra
    many-vertex polygons per frame, default 0); every dataset ``height``
    and ``width`` (image size; VOC and ADE20k vary it per image by up to 25% less).
    """
    writers: dict[str, Callable[..., list[Path]]] = {
        "voc": _write_voc, "ade20k": _write_ade20k, "cityscapes": _write_cityscapes}
    if dataset not in writers:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(writers)}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    return writers[dataset](raw_dir, np.random.default_rng(seed), **size_options)


# --------------------------------------------------------------------------------------------- pictures
def class_colours(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 saturated colours, one per class index, the same for every image and seed."""
    rng = np.random.default_rng(12345)
    hue = (np.arange(n) * 0.618034) % 1.0  # golden-ratio hues: neighbours in index differ most
    value = rng.uniform(0.75, 1.0, n)
    rgb = value[:, None] * _hue_rgb(hue * 6, saturation=0.8)
    return (rgb * 255).astype(np.uint8)


def _hue_rgb(h6: np.ndarray | float, saturation: float) -> np.ndarray:
    """(..., 3) RGB factors in [0, 1] of hue ``h6`` (0-6 around the wheel) at full value (HSV to RGB)."""
    k = np.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], axis=-1)
    return 1 - saturation * np.clip(np.minimum(k, 4 - k), 0, 1)


def dataset_colours(dataset: str) -> np.ndarray:
    """(256, 3) uint8 painting colours of ``dataset``: :func:`class_colours`, except that the classes it
    paints (``PAINTED``) get evenly spaced hues at full saturation."""
    colours = class_colours().copy()
    painted = PAINTED[dataset]
    for k, cls in enumerate(painted):
        colours[cls] = (230 * _hue_rgb(6 * k / len(painted), saturation=0.85)).astype(np.uint8)
    return colours


def textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 low-saturation grey texture: coarse blobs plus fine noise."""
    coarse = rng.uniform(70, 170, (h // 16 + 2, w // 16 + 2))
    smooth = np.kron(coarse, np.ones((16, 16)))[:h, :w]
    grey = smooth[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(grey, 0, 255).astype(np.uint8)


def paint(label: np.ndarray, background: np.ndarray, rng: np.random.Generator, dataset: str,
          keep: np.ndarray | None = None) -> np.ndarray:
    """RGB image for ``label``: each class in its colour with noise; ``keep`` pixels stay background."""
    colours = dataset_colours(dataset).astype(np.float64)
    image = colours[label] + rng.normal(0, 6, label.shape + (3,))
    if keep is not None:
        image[keep] = background[keep]
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_label(rng: np.random.Generator, h: int, w: int, classes: np.ndarray, fill: int,
                 count: int) -> np.ndarray:
    """(h, w) uint8 map: ``fill`` everywhere, then ``count`` rectangles and ellipses of random classes."""
    label = np.full((h, w), fill, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(count):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        label[mask] = rng.choice(classes)
    return label


def with_border(label: np.ndarray, width: int = 2, ignore: int = IGNORE_INDEX) -> np.ndarray:
    """VOC-style void border: pixels within ``width`` of a class change become ``ignore``."""
    edge = np.zeros(label.shape, bool)
    edge[:-1] |= label[:-1] != label[1:]
    edge[1:] |= label[:-1] != label[1:]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:, 1:] |= label[:, :-1] != label[:, 1:]
    for _ in range(width - 1):  # grow by one pixel per pass (4-neighbourhood)
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    out = label.copy()
    out[edge] = ignore
    return out


def encode(array: np.ndarray, fmt: str, palette: list[int] | None = None) -> bytes:
    """PNG or JPEG bytes of ``array``; ``palette`` makes a 'P' image (VOC's label encoding)."""
    if palette is not None:  # raw indices as a 'P' image: no colour quantisation may touch them
        image = Image.frombytes("P", array.shape[::-1], np.ascontiguousarray(array, np.uint8).tobytes())
        image.putpalette(palette)
    else:
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _size(rng: np.random.Generator, height: int, width: int, vary: bool) -> tuple[int, int]:
    if not vary:
        return height, width
    return int(height * rng.uniform(0.75, 1.0)), int(width * rng.uniform(0.75, 1.0))


# ---------------------------------------------------------------------------------------------- writers
def write_tar(path: Path, members: list[Member], gzip: bool = False) -> Path:
    """A tar (or tgz) with the members in the given order, fixed owners and times; atomic."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as raw:
        fileobj = raw
        if gzip:
            import gzip as gz
            fileobj = gz.GzipFile(filename="", mode="wb", fileobj=raw, mtime=MTIME)
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in _with_parent_dirs([m[0] for m in members]):
                tar.addfile(_tarinfo(name + "/", 0, tarfile.DIRTYPE))
            for name, data in members:
                tar.addfile(_tarinfo(name, len(data), tarfile.REGTYPE), io.BytesIO(data))
        if gzip:
            fileobj.close()
    return _publish(tmp, path)


def write_zip(path: Path, members: list[Member]) -> Path:
    """A zip with the members in the given order and fixed times; atomic."""
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in _with_parent_dirs([m[0] for m in members]):
            zf.writestr(zipfile.ZipInfo(name + "/", (2012, 5, 11, 0, 0, 0)), b"")
        for name, data in members:
            info = zipfile.ZipInfo(name, (2012, 5, 11, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name.endswith((".png", ".jpg")) \
                else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return _publish(tmp, path)


def _publish(tmp: Path, path: Path) -> Path:
    """Rename ``tmp`` to ``path``, unless ``path`` already has these exact bytes: then keep it, so its
    timestamp does not make Snakemake or DVC rerun everything downstream."""
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        tmp.unlink()
    else:
        tmp.replace(path)
    return path


def _tarinfo(name: str, size: int, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _with_parent_dirs(names: list[str]) -> list[str]:
    parents = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    return sorted(parents)


# -------------------------------------------------------------------------------------------------- VOC
def voc_ids(rng: np.random.Generator, voc_train: int, voc_val: int,
            sbd_only: int) -> dict[str, list[str]]:
    """Id lists shaped like the real ones: VOC train/val disjoint; SBD train holds some VOC val and VOC
    train ids; SBD val holds others; one id appears in both SBD lists. Keys: voc_train, voc_val,
    sbd_train, sbd_val, voc_other (in JPEGImages only, as VOC's detection images are)."""
    years = (2007, 2008, 2009, 2010, 2011)
    pool = sorted({f"{rng.choice(years)}_{rng.integers(0, 999999):06d}"
                   for _ in range(3 * (voc_train + voc_val + sbd_only) + 8)})
    order = list(rng.permutation(pool))
    take = lambda n: sorted(order.pop() for _ in range(n))  # noqa: E731
    train, val, extra, other = take(voc_train), take(voc_val), take(sbd_only), take(2)
    q_val, q_train, q_extra = max(1, voc_val // 3), max(1, voc_train // 3), (2 * sbd_only) // 3
    sbd_train = set(val[:q_val]) | set(train[:q_train]) | set(extra[:q_extra])
    sbd_val = set(val[q_val:q_val + 2]) | set(train[q_train:q_train + 2]) | set(extra[q_extra:])
    sbd_val.add(extra[0])  # listed in both SBD lists: must count once
    return {"voc_train": train, "voc_val": val, "sbd_train": sorted(sbd_train),
            "sbd_val": sorted(sbd_val), "voc_other": other}


def _write_voc(raw_dir: Path, rng: np.random.Generator, *, voc_train: int = 12, voc_val: int = 10,
               sbd_only: int = 24, height: int = 96, width: int = 128) -> list[Path]:
    ids = voc_ids(rng, voc_train, voc_val, sbd_only)
    every = sorted({i for key in ids for i in ids[key]})
    scenes = {i: _voc_scene(rng, *_size(rng, height, width, True)) for i in every}
    seg_ids = sorted(ids["voc_train"] + ids["voc_val"])
    root = "VOCdevkit/VOC2012"
    members = [(f"{root}/JPEGImages/{i}.jpg", encode(scenes[i][0], "JPEG")) for i in every]
    members += [(f"{root}/SegmentationClass/{i}.png", encode(with_border(scenes[i][1]), "PNG", voc_palette()))
                for i in seg_ids]
    members += [(f"{root}/ImageSets/Segmentation/{name}.txt", _lines(lst)) for name, lst in
                (("train", ids["voc_train"]), ("val", ids["voc_val"]), ("trainval", seg_ids))]
    sbd = sorted(set(ids["sbd_train"]) | set(ids["sbd_val"]))
    base = "benchmark_RELEASE/dataset"
    sbd_members = [(f"{base}/img/{i}.jpg", encode(scenes[i][0], "JPEG")) for i in sbd]
    sbd_members += [(f"{base}/cls/{i}.mat", _sbd_mat("GTcls", scenes[i][1])) for i in sbd]
    sbd_members += [(f"{base}/inst/{i}.mat", _sbd_mat("GTinst", scenes[i][1])) for i in sbd]
    sbd_members += [(f"{base}/train.txt", _lines(ids["sbd_train"])), (f"{base}/val.txt", _lines(ids["sbd_val"]))]
    return [write_tar(raw_dir / "VOCtrainval_11-May-2012.tar", members),
            write_tar(raw_dir / "benchmark.tgz", sbd_members, gzip=True)]


def _voc_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    label = shapes_label(rng, h, w, np.array(PAINTED["voc"]), fill=0, count=int(rng.integers(1, 4)))
    return paint(label, textured_background(rng, h, w), rng, "voc", keep=label == 0), label


def _sbd_mat(struct: str, label: np.ndarray) -> bytes:
    """SBD's MATLAB struct: Segmentation (uint8 class map, no border), Boundaries (cell of 20 sparse
    edge maps), CategoriesPresent (GTcls) or Categories (GTinst)."""
    edges = with_border(label, 1) == IGNORE_INDEX
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(edges & (label == k + 1))
    present = np.array([[c] for c in np.unique(label) if c > 0], dtype=np.uint8)
    key = "CategoriesPresent" if struct == "GTcls" else "Categories"
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {struct: {"Segmentation": label.astype(np.uint8), "Boundaries": boundaries,
                                       key: present}}, do_compression=True)
    data = buffer.getvalue()
    # the 116-byte text header carries a creation time: fix it so the archive's sha256 is reproducible
    header = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: deeplab.data.synthetic"
    return header.ljust(116, b" ") + data[116:]


def _lines(ids: list[str]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


# ----------------------------------------------------------------------------------------------- ADE20k
def _write_ade20k(raw_dir: Path, rng: np.random.Generator, *, train: int = 32, val: int = 10,
                  height: int = 96, width: int = 128) -> list[Path]:
    root = "ADEChallengeData2016"
    members: list[Member] = []
    scenes = []
    for split, folder, prefix, n in (("train", "training", "ADE_train", train),
                                     ("val", "validation", "ADE_val", val)):
        for k in range(1, n + 1):
            image, label = _ade_scene(rng, *_size(rng, height, width, True), grey=k % 11 == 5)
            members.append((f"{root}/images/{folder}/{prefix}_{k:08d}.jpg", encode(image, "JPEG")))
            members.append((f"{root}/annotations/{folder}/{prefix}_{k:08d}.png", encode(label, "PNG")))
            scenes.append(f"{prefix}_{k:08d} {('bathroom', 'street', 'kitchen')[k % 3]}")
    header = "Idx\tRatio\tTrain\tVal\tName\n"
    info = "".join(f"{k}\t{0.1 / k:.4f}\t{train}\t{val}\t{_ade_synonyms(name)}\n"
                   for k, name in enumerate(ADE20K_CLASSES, start=1))
    members += [(f"{root}/objectInfo150.txt", (header + info).encode()),
                (f"{root}/sceneCategories.txt", "\n".join(scenes).encode() + b"\n")]
    return [write_zip(raw_dir / "ADEChallengeData2016.zip", members)]


def _ade_synonyms(name: str) -> str:
    """objectInfo150.txt lists synonyms after the name ('windowpane, window'); a few lines do here too."""
    return {"windowpane": "windowpane, window", "person": "person, individual, someone",
            "car": "car, auto, automobile"}.get(name, name)


def _ade_scene(rng: np.random.Generator, h: int, w: int, grey: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw ADE values: 1..150 classes (a learnable subset), 0 'other' on some patches; some images grey."""
    label = shapes_label(rng, h, w, np.array(PAINTED["ade20k"][2:]), fill=1, count=int(rng.integers(2, 5)))
    label[int(0.8 * h):] = 4  # a floor band, as indoor scenes have
    if rng.random() < 0.7:
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        label[y:y + 8, x:x + 8] = 0  # 'other': not evaluated
    image = paint(label, textured_background(rng, h, w), rng, "ade20k", keep=label == 0)
    if grey:  # ADE20k has grayscale JPEGs among the colour ones
        image = np.asarray(Image.fromarray(image).convert("L"))
    return image, label


# ------------------------------------------------------------------------------------------- Cityscapes
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"),
          "test": ("berlin", "bielefeld")}
README = b"The Cityscapes Dataset (synthetic stand-in with the official layout; not the real data)\n"
LICENSE = b"Synthetic archive generated by deeplab.data.synthetic; no Cityscapes data is included.\n"


def _write_cityscapes(raw_dir: Path, rng: np.random.Generator, *, per_city_train: int = 8,
                      per_city_val: int = 3, per_city_test: int = 1, height: int = 64,
                      width: int = 128, detail: int = 0) -> list[Path]:
    counts = {"train": per_city_train, "val": per_city_val, "test": per_city_test}
    gt: list[Member] = [("README", README), ("license.txt", LICENSE)]
    images: list[Member] = [("README", README), ("license.txt", LICENSE)]
    for split, cities in CITIES.items():
        for city in cities:
            for k in range(counts[split]):
                stem = f"{city}_{k:06d}_{19 + 10 * k:06d}"
                files = cityscapes_sample(rng, height, width, dummy=split == "test", detail=detail)
                gt += [(f"gtFine/{split}/{city}/{stem}_gtFine_{kind}", data) for kind, data in files[1:]]
                images.append((f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", files[0][1]))
    return [write_zip(raw_dir / "gtFine_trainvaltest.zip", gt),
            write_zip(raw_dir / "leftImg8bit_trainvaltest.zip", images)]


def cityscapes_polygons(rng: np.random.Generator, h: int, w: int, detail: int = 0) -> dict:
    """A street scene as Cityscapes polygon JSON: sky, buildings, road, sidewalk, then objects on top;
    ``detail`` adds that many many-vertex outlines (the benchmark's realistic annotation load)."""
    def box(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
        pts = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        return {"label": label, "polygon": [[int(round(x * w)), int(round(y * h))] for x, y in pts]}
    horizon = rng.uniform(0.4, 0.55)
    objects = [box("sky", 0, 0, 1, horizon), box("ground", 0, horizon, 1, 1)]
    objects += [box(rng.choice(["building", "vegetation"]), x, rng.uniform(0.1, 0.3), x + 0.2, horizon)
                for x in np.arange(0, 1, 0.2) if rng.random() < 0.8]
    top = int(horizon * h)
    objects.append({"label": "road", "polygon": [[int(0.35 * w), top], [int(0.65 * w), top], [w, h], [0, h]]})
    objects.append(box("sidewalk", 0, 0.85, 0.2, 1))
    for label in rng.choice(["car", "car", "static"], size=3):
        x, y = rng.uniform(0.05, 0.8), rng.uniform(horizon - 0.1, 0.8)
        objects.append(box(str(label), x, y, x + rng.uniform(0.05, 0.15), y + rng.uniform(0.1, 0.2)))
    objects += [_jagged(rng, h, w, horizon) for _ in range(detail)]
    return {"imgHeight": h, "imgWidth": w, "objects": objects}


def _jagged(rng: np.random.Generator, h: int, w: int, horizon: float) -> dict:
    """A detailed outline (10 to 400 vertices) like the real annotations' trees, people and cars."""
    label = str(rng.choice(["vegetation", "car", "person", "building", "pole", "traffic sign", "terrain"]))
    n = int(rng.choice([rng.integers(10, 40), rng.integers(40, 400)], p=[0.7, 0.3]))
    cx, cy = rng.uniform(0, w), rng.uniform(horizon * h * 0.5, h)
    radius = rng.uniform(0.01, 0.12) * w * rng.uniform(0.7, 1.0, n)
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    points = np.stack([cx + radius * np.cos(angle), cy + 0.6 * radius * np.sin(angle)], 1)
    return {"label": label, "polygon": np.clip(points, 0, [w - 1, h - 1]).round().astype(int).tolist()}


def cityscapes_sample(rng: np.random.Generator, h: int, w: int, dummy: bool = False,
                      detail: int = 0) -> list[Member]:
    """[(kind, bytes)] for one frame: leftImg8bit PNG, then gtFine polygons.json, labelIds, color,
    instanceIds. The test split's ground truth is dummy (unlabelled), as in the real archive."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    polygons = cityscapes_polygons(rng, h, w, detail)
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(polygons))
    ids = np.asarray(createLabelImage(annotation, "ids"), np.uint8)  # the official rasteriser
    image = paint(ids, textured_background(rng, h, w), rng, "cityscapes")
    if dummy:
        ids = np.zeros_like(ids)
        polygons["objects"] = []
    colour = createLabelImage(annotation, "color") if not dummy else Image.new("RGBA", (w, h), (0, 0, 0, 255))
    buffer = io.BytesIO()
    colour.save(buffer, format="PNG")
    return [("leftImg8bit.png", encode(image, "PNG")), ("polygons.json", json.dumps(polygons, indent=1).encode()),
            ("labelIds.png", encode(ids, "PNG")), ("color.png", buffer.getvalue()),
            ("instanceIds.png", encode(ids.astype(np.uint16), "PNG"))]  # 16-bit; a plain labelId is
    # what the real files hold for regions without separate instances (groups, stuff classes)
