"""ResNet-50/101 backbones for DeepLabV3+: the V1c deep stem by default, dilated to output stride 8 or 16.

Module names follow the openmmlab V1c ImageNet checkpoints (``stem.{0,1,3,4,6,7}``, ``layer{1..4}.{i}.*``,
``layer{k}.0.downsample.{0,1}``), so those files load with a strict key check and no renaming table. The
``standard`` stem (``conv1``/``bn1``, 7x7) follows torchvision's ResNet and loads its ImageNet weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from deeplab.errors import PipelineError

DEPTHS = {"r50": (3, 4, 6, 3), "r101": (3, 4, 23, 3)}
# (strides, dilations) of layer1..layer4 per output stride (docs/recipe.md)
STRIDES_DILATIONS = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2))}


class ResNet(nn.Module):
    """Dilated ResNet returning the feature maps the decoder needs: layer1, layer3 and layer4."""

    def __init__(self, depth: Literal["r50", "r101"] = "r50", output_stride: Literal[8, 16] = 8,
                 stem: Literal["deep", "standard"] = "deep", width: int = 64) -> None:
        """``width``: channels of the stem's output and of layer1's bottlenecks (64 = ResNet and every
        ImageNet checkpoint; the stages have width, 2, 4 and 8 times it, times 4 at their outputs)."""
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(DEPTHS)}, got {depth!r}")
        if output_stride not in STRIDES_DILATIONS:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        if stem not in ("deep", "standard"):
            raise ValueError(f"stem must be 'deep' or 'standard', got {stem!r}")
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even number of channels, got {width!r}")
        self.stem_type = stem
        self.channels = {"layer1": 4 * width, "layer3": 16 * width, "layer4": 32 * width}
        half = width // 2
        if stem == "deep":  # V1c: three 3x3 convs (32, 32, 64 channels at width 64), the first with stride 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:  # torchvision's 7x7 stem
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides, dilations = STRIDES_DILATIONS[output_stride]
        inplanes = width
        for i, (blocks, planes) in enumerate(zip(DEPTHS[depth], (width, 2 * width, 4 * width, 8 * width)), start=1):
            layer = _make_layer(inplanes, planes, blocks, strides[i - 1], dilations[i - 1])
            self.add_module(f"layer{i}", layer)
            inplanes = planes * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x) if self.stem_type == "deep" else self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(x))  # (N, 256, H/4, W/4) at width 64
        c3 = self.layer3(self.layer2(c1))  # (N, 1024, H/OS, W/OS)
        c4 = self.layer4(c3)               # (N, 2048, H/OS, W/OS)
        return {"layer1": c1, "layer3": c3, "layer4": c4}


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """One ResNet stage; in a dilated stage the first block uses half the dilation (no multi-grid)."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion))
    first_dilation = max(dilation // 2, 1)
    layers = [Bottleneck(inplanes, planes, stride, downsample, dilation=first_dilation)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class WeightsMismatchError(PipelineError):
    """A checkpoint's keys or shapes do not match the backbone; the message lists them by name."""


def load_imagenet_weights(backbone: ResNet, checkpoint: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load ImageNet weights into ``backbone`` with a strict check; only the classifier ``fc.*`` is dropped.

    Accepts a path to an openmmlab V1c / torchvision ResNet checkpoint, or a state dict. A checkpoint
    wrapped as ``{"state_dict": ...}`` is unwrapped. BatchNorm's ``num_batches_tracked`` counters may be
    absent (checkpoints saved before BatchNorm had them, such as torchvision's original ResNet files): they
    keep the backbone's own value. Any other missing, unexpected or mis-shaped key raises
    :class:`WeightsMismatchError` naming the keys, and the backbone is left untouched.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "the given state dict"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True) \
        if isinstance(checkpoint, (str, Path)) else checkpoint
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    counters = {k: own[k] for k in own if k.endswith(".num_batches_tracked") and k not in state}
    state = {**state, **counters}  # counters only: a checkpoint without them still fits
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong_shape)) if keys]
        raise WeightsMismatchError(
            f"{source} does not fit the {backbone.stem_type}-stem backbone: " + "; ".join(parts)
            + ". Use the V1c checkpoint with stem 'deep' or torchvision's with stem 'standard'.")
    backbone.load_state_dict(state, strict=True)
