"""Class names, palettes and label mappings of the three datasets (docs/datasets.md).

Cityscapes' labelId -> trainId table is built from the official ``cityscapesscripts.helpers.labels``
rather than copied, so it cannot drift from the definition.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

# objectInfo150.txt order (first name of each line). Prepare reads the names from the archive itself;
# this copy is what the synthetic archive writes and what tests compare against.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
assert len(ADE20K_CLASSES) == 150


def voc_palette() -> list[int]:
    """The standard VOC colour map as a flat 768-entry PIL palette (bit-interleaved; 255 -> 224,224,192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def cityscapes_train_classes() -> tuple[tuple[str, ...], list[list[int]]]:
    """Names and colours of the 19 trainIds, in trainId order, from the official label table."""
    from cityscapesscripts.helpers.labels import labels
    by_train_id = {l.trainId: l for l in labels if 0 <= l.trainId < IGNORE_INDEX}
    ordered = [by_train_id[k] for k in sorted(by_train_id)]
    assert [l.trainId for l in ordered] == list(range(19)), "cityscapesscripts trainIds are not 0..18"
    return tuple(l.name for l in ordered), [list(l.color) for l in ordered]


def cityscapes_label_to_train_lut() -> np.ndarray:
    """(256,) uint8 look-up table: labelId -> trainId, 255 for ignored ids and any value not defined."""
    from cityscapesscripts.helpers.labels import labels
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label in labels:
        if 0 <= label.id < 256:
            lut[label.id] = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
    return lut


def ade20k_lut() -> np.ndarray:
    """(256,) uint8 look-up table for ADE20k annotations: 0 ('other') -> 255, k -> k - 1 for 1..150,
    anything above 150 -> 255 (flagged by the label check, since it is not a valid annotation)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    return lut

