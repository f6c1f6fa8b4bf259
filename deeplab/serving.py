"""A trained cell as an MLflow model: what ``mlflow.pytorch.load_model("runs:/<id>/<name>")``,
``models:/<name>/<version>`` and ``mlflow models predict`` give back.

Each run's model is named after the run and its preset's experiment (:func:`model_name`), so the
experiment's Models tab tells the runs apart: ``deeplabv3plus-voc-r50-os8`` in the full preset,
``deeplabv3plus-smoke-voc-r50-os8`` in the demo's, ``...-seed1`` for a further seed. In the registry a cell
is one model (:func:`registered_name`), each of its seeds a version, and the alias ``best`` names the
version of the seed that scored the highest mIoU: ``models:/deeplabv3plus-voc-r50-os8@best``.

:class:`Segmenter` wraps the network with its input handling, so the logged model takes plain pictures:
float32 (N, 3, H, W) RGB values in 0..255 (one size per batch) and returns int64 (N, H, W) class indices at
the input's size, exactly what ``pipeline.predict`` writes for the same image with the single-scale protocol
(resize to the dataset's test size, normalise, upsample the logits, argmax). It computes in fp32 on whatever
device it is moved to.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from deeplab.config import CellConfig
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict

EXAMPLE_SIDE = 64            # the input example's longer side (the example is stored as JSON)


class Segmenter(nn.Module):
    """(N, 3, H, W) float RGB 0..255 -> (N, H, W) int64 class indices, single scale."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.model = model.eval()
        self.spec = dataclasses.replace(spec, dtype=None)  # fp32: the same numbers on any device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        device = next(self.model.parameters()).device
        return torch.stack([predict(self.model, image.to(device), SINGLE_SCALE, self.spec) for image in images])


def signature() -> Any:
    """Any batch size and image size in; class indices of the same size out. The tensors are unnamed: the
    PyTorch flavour takes one array, not a dict of named inputs."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]))


def input_example(image: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) float32 from a uint8 (3, H, W) image, shrunk to EXAMPLE_SIDE on its longer side."""
    height, width = image.shape[-2:]
    scale = min(1.0, EXAMPLE_SIDE / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = torch.nn.functional.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False)
    return small.round().clamp(0, 255).numpy().astype(np.float32)


def model_name(cfg: CellConfig) -> str:
    """The run's logged model: ``<experiment>-<cell>``, ``-seed<k>`` added for a further seed."""
    return f"{cfg.preset.experiment}-{cfg.run_key.replace('/', '-')}"


BEST = "best"  # the alias of a cell's registered model that names its best seed's version


def registered_name(cfg: CellConfig) -> str | None:
    """The registered model the run's model becomes a version of: the cell's, ``<experiment>-<cell>`` (its
    seeds are versions of it); None where the preset registers nothing."""
    return f"{cfg.preset.experiment}-{cfg.cell.id}" if cfg.preset.register_models else None


def model_tags(cfg: CellConfig, doc: dict[str, Any]) -> dict[str, str]:
    """What tells one model from another in the Models tab and the registry: the cell and its recipe's
    table coordinates, the seed, and the single-scale mIoU it scored (metrics.json ``doc``)."""
    return {"cell": cfg.cell.id, "dataset": cfg.cell.dataset, "backbone": cfg.cell.backbone,
            "output_stride": str(cfg.cell.output_stride), "seed": str(cfg.train.seed), "preset": cfg.preset.name,
            "mIoU": f"{doc['mIoU']:.4f}"}


def requirements() -> list[str]:
    """What loading the pickled model needs (given, so MLflow does not infer it in a subprocess)."""
    import torchvision
    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]
