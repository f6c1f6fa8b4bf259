"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018, arXiv:1802.02611), built exactly as the reference recipe (docs/recipe.md).

    model = deeplabv3plus(backbone="r50", output_stride=8, num_classes=21)
    model(images)["out"]   # (N, classes, H, W) logits at the input's size; "aux" too in training mode
    model = build_model(cell_config, device)   # the same, with every setting from params/

Parameter counts and forward FLOPs of the reference are stored below as data and tested, and so are the
ASPP's atrous rates, which the output stride fixes; the channel widths are recipe numbers in params/model.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.backbone import ResNet, load_imagenet_weights
from deeplab.checkpoint import load_saved
from deeplab.config import TRAINING, CellConfig, record_changes
from deeplab.errors import PipelineError
from deeplab.flops import AUX_GFLOPS_512, FORWARD_GFLOPS_512, PARAMETER_COUNTS  # noqa: F401 (the model's numbers)

# The ASPP's atrous rates per output stride (the paper's: rates scale with the feature map's resolution).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


class ModelFileError(PipelineError):
    """A trained model file is missing or was trained under another recipe; the message says what to do."""


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__(conv_bn_relu(cin, cin, 3, dilation=dilation, groups=cin), conv_bn_relu(cin, cout, 1))


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, upsampled back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """1x1 branch, three separable atrous branches and image pooling, fused by a dense 3x3 conv."""

    def __init__(self, cin: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList([conv_bn_relu(cin, channels, 1)]
                                   + [SeparableConv(cin, channels, dilation=r) for r in rates]
                                   + [ASPPPooling(cin, channels)])
        self.project = conv_bn_relu(channels * len(self.convs), channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))  # (N, 512, H/OS, W/OS)


class DeepLabV3PlusHead(nn.Module):
    """ASPP on layer4, the decoder fusing it with projected layer1 features, and the classifier."""

    def __init__(self, num_classes: int, rates: Sequence[int], in_channels: int = 2048,
                 low_level_in: int = 256, aspp_channels: int = 512, low_level_channels: int = 48,
                 decoder_channels: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_channels, rates)
        self.low_level = conv_bn_relu(low_level_in, low_level_channels, 1)
        self.decoder = nn.Sequential(SeparableConv(aspp_channels + low_level_channels, decoder_channels),
                                     SeparableConv(decoder_channels, decoder_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, layer1: torch.Tensor, layer4: torch.Tensor) -> torch.Tensor:
        low = self.low_level(layer1)                                # (N, 48, H/4, W/4)
        high = F.interpolate(self.aspp(layer4), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.decoder(torch.cat([high, low], dim=1))             # (N, 512, H/4, W/4)
        return self.classifier(self.dropout(x))


class FCNHead(nn.Sequential):
    """Auxiliary head on layer3, used only in training: 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(conv_bn_relu(in_channels, channels, 3), nn.Dropout2d(dropout),
                         nn.Conv2d(channels, num_classes, 1))


class DeepLabV3Plus(nn.Module):
    """Backbone + DeepLabV3+ head (+ optional auxiliary FCN head). Forward returns a dict of logits at
    the input's size: ``"out"``, plus ``"aux"`` in training mode when the auxiliary head exists."""

    def __init__(self, backbone: ResNet, classifier: DeepLabV3PlusHead, aux_classifier: FCNHead | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = self.classifier(features["layer1"], features["layer4"])
        result = {"out": F.interpolate(out, size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_classifier is not None:
            aux = self.aux_classifier(features["layer3"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def deeplabv3plus(*, backbone: Literal["r50", "r101"] = "r50", output_stride: Literal[8, 16] = 8,
                  num_classes: int = 21, aspp_rates: Sequence[int] | None = None, aux_loss: bool = True,
                  stem: Literal["deep", "standard"] = "deep", pretrained_backbone: str | Path | None = None,
                  aspp_channels: int = 512, low_level_channels: int = 48, decoder_channels: int = 512,
                  aux_channels: int = 512, dropout: float = 0.1, backbone_width: int = 64) -> DeepLabV3Plus:
    """Build DeepLabV3+ with a dilated ResNet-50/101 backbone.

    Args:
        backbone: ``"r50"`` or ``"r101"``.
        output_stride: 8 or 16; sets the backbone's strides and dilations.
        num_classes: classes of the dataset (21 VOC, 150 ADE20k, 19 Cityscapes).
        aux_loss: build the auxiliary FCN head on layer3 (``aux_classifier``); used in training only.
        stem: ``"deep"`` (V1c, the recipe) or ``"standard"`` (7x7, for torchvision's ImageNet weights).
        pretrained_backbone: path to the ImageNet checkpoint of that backbone, loaded strictly.
        aspp_rates: the three atrous rates; default ``ASPP_RATES[output_stride]``, (12, 24, 36) at OS8 and
            (6, 12, 18) at OS16.
        backbone_width: the ResNet's base width (64 = the recipe and the ImageNet checkpoints).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    body = ResNet(backbone, output_stride, stem, backbone_width)
    if pretrained_backbone is not None:
        load_imagenet_weights(body, pretrained_backbone)
    rates = ASPP_RATES[output_stride] if aspp_rates is None else tuple(aspp_rates)
    head = DeepLabV3PlusHead(num_classes, rates, in_channels=body.channels["layer4"],
                             low_level_in=body.channels["layer1"],
                             aspp_channels=aspp_channels, low_level_channels=low_level_channels,
                             decoder_channels=decoder_channels, dropout=dropout)
    aux = FCNHead(body.channels["layer3"], aux_channels, num_classes, dropout) if aux_loss else None
    return DeepLabV3Plus(body, head, aux)


def build_model(cfg: CellConfig, device: torch.device, weights: str | Path | None = None,
                distributed: bool = False) -> DeepLabV3Plus:
    """The cell's DeepLabV3+ (with its aux head) on ``device``, channels-last if asked; SyncBatchNorm across
    GPUs (gloo on CPU has no SyncBatchNorm: each process keeps its own statistics)."""
    model = deeplabv3plus(backbone=cfg.cell.backbone, output_stride=cfg.cell.output_stride,
                          num_classes=cfg.data.num_classes, aux_loss=True, stem=cfg.model.stem,
                          pretrained_backbone=weights,
                          aspp_channels=cfg.model.aspp_channels, low_level_channels=cfg.model.low_level_channels,
                          decoder_channels=cfg.model.decoder_channels, aux_channels=cfg.model.aux_channels,
                          dropout=cfg.model.dropout, backbone_width=cfg.model.backbone_width)
    if distributed and device.type == "cuda":
        model = convert_sync_batchnorm(model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def load_trained(cfg: CellConfig, path: Path, device: torch.device, data_hash: str | None = None) -> DeepLabV3Plus:
    """A trained model of the cell, in eval mode; refused when it was trained under another training record
    than params/ gives now, or (``data_hash`` given: the prepared training split's identity now) on other data.
    The model's ``computed`` attribute is how it was trained (precision, images per BatchNorm statistic, from
    which iteration; deeplab.train.note_computing)."""
    if not path.is_file():
        raise ModelFileError(f"{path} not found: train the cell first (python -m pipeline.train --cell "
                           f"{cfg.cell.id} --preset {cfg.preset.name})")
    saved = load_saved(path)
    if saved.get("digest") != cfg.training_digest():
        differences = record_changes(saved.get("training", {}), cfg.record(TRAINING))
        raise ModelFileError(f"{path} was trained under another training record than params/ gives now ("
                             + ("; ".join(differences) or "no record in the file") + "); retrain the run (delete "
                             "the file) or restore the params it was trained with")
    if data_hash is not None and saved.get("data_hash") and saved["data_hash"] != data_hash:
        raise ModelFileError(f"{path} was trained on other data than the prepared {cfg.cell.dataset} holds now "
                             f"({cfg.prepared_dir} was re-prepared or edited since it trained: split "
                             f"{cfg.data.train_split}'s identity {saved['data_hash'][:12]} -> {data_hash[:12]}); "
                             f"retrain {cfg.run_name} (delete the file) or restore the data it was trained on")
    model = build_model(cfg, device)
    model.load_state_dict(saved["state_dict"])
    model.computed = saved.get("computed", [])
    return model.eval()


def take_trained(model: nn.Module, path: Path, cell_id: str) -> tuple[list[str], list[str]]:
    """Start ``model`` from the trained model of cell ``cell_id`` at ``path`` (its model.pt): every tensor whose
    name and shape match is taken (backbone, ASPP, decoder, and the heads when the class count is the same);
    the others keep their fresh initialisation (the classifiers of another class count). Returns the names
    taken and the names left fresh (with both shapes)."""
    if not path.is_file():
        raise ModelFileError(f"{path} not found: train cell {cell_id} first (params/cells.yaml init names it)")
    saved = load_saved(path)
    if saved.get("cell") != cell_id:
        raise ModelFileError(f"{path} holds the model of cell {saved.get('cell')}, not of {cell_id}: retrain {cell_id}")
    theirs, ours = saved["state_dict"], model.state_dict()
    taken = {name: tensor for name, tensor in theirs.items() if name in ours and ours[name].shape == tensor.shape}
    unfit = [name for name in ours if name.startswith("backbone.") and name not in taken]
    if unfit:
        raise ModelFileError(f"{path}: {len(unfit)} backbone tensor(s) of this model have no match of the same shape "
                             f"in cell {cell_id}'s (e.g. {unfit[0]}; another backbone or width): start from a cell "
                             "of the same backbone and model settings")
    model.load_state_dict(taken, strict=False)
    fresh = [name + (f" ({tuple(theirs[name].shape)} -> {tuple(ours[name].shape)})" if name in theirs else "")
             for name in ours if name not in taken]
    return sorted(taken), fresh


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm with SyncBatchNorm for multi-GPU training (statistics over the global batch)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def count_parameters(model: nn.Module, include_aux: bool = True) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if include_aux or not name.startswith("aux_classifier."))
