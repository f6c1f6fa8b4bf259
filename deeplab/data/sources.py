"""The catalogue of every archive the pipeline downloads: official names, URLs, sizes and checksums.

Facts from docs/datasets.md and docs/recipe.md. URLs are tried in order; any copy whose checksum
matches is accepted, so a mirror can never substitute different data.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

CITYSCAPES_SERVER = "https://www.cityscapes-dataset.com"  # login API host of the official client
OPENMMLAB_PRETRAIN = "https://download.openmmlab.com/pretrain/third_party/"


@dataclass(frozen=True)
class ArchiveSpec:
    """One file to download.

    ``sha256`` may be a prefix (the openmmlab weights only publish the first 8 hex digits); every
    checksum given is verified. ``cityscapes_package`` is the package id of the Cityscapes login API
    (``None`` for plain HTTP downloads).
    """

    filename: str
    urls: tuple[str, ...]            # official first, then mirrors, each a full URL
    size: int | None = None          # bytes; None where no primary source confirmed it
    sha256: str | None = None        # full digest or a prefix of it
    md5: str | None = None
    sha1: str | None = None
    cityscapes_package: int | None = None

    def checksums(self) -> dict[str, str]:
        """The known digests by hashlib algorithm name, e.g. {'sha256': '...', 'md5': '...'}."""
        known = {"sha256": self.sha256, "md5": self.md5, "sha1": self.sha1}
        return {algo: digest.lower() for algo, digest in known.items() if digest}


_VOC = ArchiveSpec(
    filename="VOCtrainval_11-May-2012.tar",
    urls=("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
          "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
          "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar"),
    size=1_999_639_040,
    sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
)
_SBD = ArchiveSpec(
    filename="benchmark.tgz",
    urls=("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
          "benchmark.tgz",),
    size=1_419_539_633,
    sha256="6a5a2918d5c73ce032fdeba876574d150d9d04113ab87540a1304cbcc715be53",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
)
_ADE = ArchiveSpec(
    filename="ADEChallengeData2016.zip",
    urls=("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",),
    size=None,  # 967,382,037 is unverified: not enforced, the checksums are
    md5="7328b3957e407ddae1d3cbf487f149ef",
    sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
)
_GTFINE = ArchiveSpec(
    filename="gtFine_trainvaltest.zip",
    urls=(),  # login required: fetched through the Cityscapes API, never a plain URL
    sha256="40461a50097844f400fef147ecaf58b18fd99e14e4917fb7c3bf9c0d87d95884",
    md5="4237c19de34c8a376e9ba46b495d6f66",
    cityscapes_package=1,
)
_LEFTIMG = ArchiveSpec(
    filename="leftImg8bit_trainvaltest.zip",
    urls=(),
    sha256="3ccff9ac1fa1d80a6a064407e589d747ed0657aac7dc495a4403ae1235a37525",
    md5="0a6e97e94b616a514066c9e2adb0c97f",
    cityscapes_package=3,
)

# dataset -> its archives, in the order they are fetched
ARCHIVES: Mapping[str, tuple[ArchiveSpec, ...]] = MappingProxyType({
    "voc": (_VOC, _SBD),
    "ade20k": (_ADE,),
    "cityscapes": (_GTFINE, _LEFTIMG),
})

# dataset -> disk it takes, in GiB, for `pipeline.doctor`'s free-space check: its archives as published
# (the sizes above; ADE20k's 0.9 and Cityscapes' 0.24 + 11 from the download pages, approximate), and the
# prepared copy, at most what the archives hold (images are copied or converted, labels re-encoded).
DISK_GIB: Mapping[str, float] = MappingProxyType({"voc": 3.2, "ade20k": 0.9, "cityscapes": 11.3})
PREPARED_SHARE = 1.0      # prepared copy / archives, an upper bound
SYNTHETIC_GIB = 0.01      # a synthetic preset's archives and prepared copy, per dataset
RUN_GIB = 1.5             # one training run's results: model, checkpoint (weights + momentum), MLflow's model copy
# a dataset's usual image (h x w), for the disk its training pairs take as uint8 arrays (train_arrays): 4 bytes a pixel
TYPICAL_PIXELS: Mapping[str, int] = MappingProxyType({"voc": 375 * 500, "ade20k": 512 * 683, "cityscapes": 1024 * 2048})


def arrays_gib(dataset: str, train_images: int) -> float:
    """GiB that ``train_images`` training pairs of ``dataset`` take as uint8 arrays (RGB + label: 4 bytes a pixel)."""
    return train_images * TYPICAL_PIXELS[dataset] * 4 / 2**30

# backbone -> ImageNet checkpoint (ResNet V1c, openmmlab); the 8 hex digits in the name start its sha256
IMAGENET_WEIGHTS: Mapping[str, ArchiveSpec] = MappingProxyType({
    "r50": ArchiveSpec(filename="resnet50_v1c-2cccc1ad.pth",
                       urls=(OPENMMLAB_PRETRAIN + "resnet50_v1c-2cccc1ad.pth",), sha256="2cccc1ad"),
    "r101": ArchiveSpec(filename="resnet101_v1c-e67eebb6.pth",
                        urls=(OPENMMLAB_PRETRAIN + "resnet101_v1c-e67eebb6.pth",), sha256="e67eebb6"),
})
