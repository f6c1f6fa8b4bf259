"""A trained cell as an MLflow model: what ``mlflow.pytorch.load_model("runs:/<id>/model")`` and
``mlflow models predict`` give back.

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

MODEL_NAME = "model"         # the logged model's name: runs:/<run id>/model
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


def registered_name(cfg: CellConfig) -> str | None:
    """The full preset's models go to the registry as ``deeplabv3plus-<cell>``; other presets' do not."""
    return f"deeplabv3plus-{cfg.cell.id}" if cfg.preset.register_models else None


def requirements() -> list[str]:
    """What loading the pickled model needs (given, so MLflow does not infer it in a subprocess)."""
    import torchvision
    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]
