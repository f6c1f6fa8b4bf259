"""DeepLabV3+ as the recipe builds it: exact parameter counts, FLOPs, strides, shapes, weights, precision."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet50

from deeplab.backbone import ResNet, WeightsMismatchError, load_imagenet_weights
from deeplab.config import load_params
from deeplab.model import (AUX_GFLOPS_512, FORWARD_GFLOPS_512, PARAMETER_COUNTS, build_model, convert_sync_batchnorm,
                           count_parameters, deeplabv3plus)

VARIANTS = [(b, s) for b in ("r50", "r101") for s in (8, 16)]
PARAMS = load_params(Path(__file__).resolve().parent.parent / "params")


def build(*, output_stride: int = 8, **kwargs) -> nn.Module:
    """deeplabv3plus at ``output_stride``, every other keyword its default unless given."""
    return deeplabv3plus(output_stride=output_stride, **kwargs)


def _meta_model(backbone: str, stride: int, **kwargs) -> nn.Module:
    with torch.device("meta"):  # shapes and counts without allocating or computing anything
        return build(backbone=backbone, output_stride=stride, num_classes=21, **kwargs)


@pytest.mark.parametrize("backbone, stride", VARIANTS)
def test_parameter_counts_equal_the_reference(backbone: str, stride: int) -> None:
    model = _meta_model(backbone, stride)
    without_aux, with_aux = PARAMETER_COUNTS[backbone]
    assert count_parameters(model, include_aux=False) == without_aux
    assert count_parameters(model) == with_aux
    assert count_parameters(_meta_model(backbone, stride, aux_loss=False)) == without_aux


@pytest.mark.parametrize("backbone, stride", VARIANTS)
def test_forward_flops_at_512_within_one_percent(backbone: str, stride: int) -> None:
    model = _meta_model(backbone, stride).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.device("meta"):
        model(torch.empty(1, 3, 512, 512))
    assert counter.get_total_flops() / 1e9 == pytest.approx(FORWARD_GFLOPS_512[backbone, stride], rel=0.01)


@pytest.mark.parametrize("backbone, stride", VARIANTS)
def test_training_forward_adds_the_aux_heads_flops(backbone: str, stride: int) -> None:
    """The cost table counts the model as it trains: the auxiliary FCN head on layer3 included."""
    model = _meta_model(backbone, stride).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.device("meta"):
        model(torch.empty(2, 3, 512, 512))  # two images: training-mode BatchNorm after the image pooling
    aux = counter.get_total_flops() / 2e9 - FORWARD_GFLOPS_512[backbone, stride]
    assert aux == pytest.approx(AUX_GFLOPS_512[stride], rel=0.02)


@pytest.mark.parametrize("size", [(513, 513), (512, 1024), (97, 131)])
@pytest.mark.parametrize("backbone, stride", VARIANTS)
def test_logits_have_the_input_size(backbone: str, stride: int, size: tuple[int, int]) -> None:
    model = _meta_model(backbone, stride).train()
    with torch.device("meta"):
        out = model(torch.empty(2, 3, *size))
    assert out["out"].shape == (2, 21, *size) and out["aux"].shape == (2, 21, *size)


@pytest.mark.parametrize("stride, layer3, layer4", [(8, [1, 2, 2, 2, 2, 2], [2, 4, 4]),
                                                     (16, [1, 1, 1, 1, 1, 1], [1, 2, 2])])
def test_dilations_and_feature_strides(stride: int, layer3: list[int], layer4: list[int]) -> None:
    backbone = ResNet("r50", stride)
    assert [block.conv2.dilation[0] for block in backbone.layer3] == layer3
    assert [block.conv2.dilation[0] for block in backbone.layer4] == layer4
    with torch.device("meta"):
        backbone.to("meta")
        features = backbone(torch.empty(1, 3, 64, 128))
    assert features["layer1"].shape[-2:] == (16, 32)
    assert features["layer3"].shape[-2:] == features["layer4"].shape[-2:] == (64 // stride, 128 // stride)


@pytest.mark.parametrize("stride, rates", [(8, [12, 24, 36]), (16, [6, 12, 18])])
def test_aspp_is_separable_with_the_recipe_rates(stride: int, rates: list[int]) -> None:
    with torch.device("meta"):  # the cell's model as params/ builds it
        aspp = build_model(PARAMS.resolve(f"voc-r50-os{stride}"), torch.device("meta")).classifier.aspp
    depthwise = [branch[0][0] for branch in aspp.convs[1:4]]
    assert [conv.dilation[0] for conv in depthwise] == rates
    assert all(conv.groups == conv.in_channels == 2048 for conv in depthwise)
    assert aspp.project[0].kernel_size == (3, 3) and aspp.project[0].in_channels == 5 * 512


def test_aux_head_only_in_training_and_a_real_forward_backward() -> None:
    torch.manual_seed(0)
    model = build(backbone="r50", output_stride=16, num_classes=4)
    x = torch.randn(2, 3, 33, 47)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and torch.isfinite(out["out"]).all()
    (out["out"].mean() + 0.4 * out["aux"].mean()).backward()
    assert model.aux_classifier[0][0].weight.grad is not None
    assert set(model.eval()(x)) == {"out"}
    assert set(build(num_classes=4, aux_loss=False).train()(x)) == {"out"}


def test_channels_last_bf16_autocast_on_cpu_matches_fp32() -> None:
    torch.manual_seed(0)
    model = build(backbone="r50", output_stride=16, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)["out"]
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.to(memory_format=torch.channels_last))["out"]
    assert low.dtype == torch.bfloat16 and low.shape == reference.shape
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()


def _v1c_checkpoint(tmp_path: Path, **extra: torch.Tensor) -> Path:
    """An openmmlab-style V1c checkpoint: the backbone's keys with fresh values, plus the classifier."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ResNet("r50").state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)} | extra
    path = tmp_path / "resnet50_v1c.pth"
    torch.save(state, path)
    return path


def test_v1c_checkpoint_loads_strictly_and_drops_only_fc(tmp_path: Path) -> None:
    path = _v1c_checkpoint(tmp_path)
    expected = torch.load(path)
    assert {"stem.0.weight", "stem.1.running_mean", "stem.7.bias", "layer1.0.downsample.0.weight",
            "layer4.2.conv3.weight"} <= set(expected)
    model = build(backbone="r50", output_stride=8, num_classes=21, pretrained_backbone=path)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)


@pytest.mark.parametrize("stem", ["deep", "standard"])
def test_a_checkpoint_without_batchnorm_counters_loads(stem: str, tmp_path: Path) -> None:
    """Checkpoints saved before BatchNorm had num_batches_tracked (torchvision's original ResNet files) load;
    every weight and running statistic is taken, the counters keep the backbone's own value."""
    saved = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ResNet("r50", stem=stem).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({**saved, "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}, tmp_path / "old.pth")
    backbone = ResNet("r50", stem=stem)
    load_imagenet_weights(backbone, tmp_path / "old.pth")
    loaded = backbone.state_dict()
    assert len(saved) < len(loaded) and all(torch.equal(loaded[k], v) for k, v in saved.items())
    broken = dict(saved)
    del broken["layer1.0.bn1.running_var"]  # a real statistic missing is still refused, by name
    with pytest.raises(WeightsMismatchError, match=r"missing \(1\): layer1\.0\.bn1\.running_var"):
        load_imagenet_weights(ResNet("r50", stem=stem), broken)


def test_a_mismatched_checkpoint_is_refused_by_name_and_nothing_loads(tmp_path: Path) -> None:
    path = _v1c_checkpoint(tmp_path, **{"layer5.0.conv1.weight": torch.zeros(1)})
    backbone = ResNet("r50")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"unexpected \(1\): layer5\.0\.conv1\.weight"):
        load_imagenet_weights(backbone, path)
    with pytest.raises(WeightsMismatchError, match=r"missing \(\d+\): .*stem\.0\.weight"):
        load_imagenet_weights(backbone, resnet50().state_dict())  # torchvision's 7x7 stem into V1c
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_standard_stem_loads_torchvision_resnet_weights() -> None:
    state = resnet50().state_dict()
    backbone = ResNet("r50", 16, stem="standard")
    load_imagenet_weights(backbone, {"state_dict": state})
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"])


def test_sync_batchnorm_conversion_replaces_every_batchnorm() -> None:
    model = build(backbone="r50", output_stride=16, num_classes=4)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == count == 70  # 55 backbone, 9 ASPP, 5 decoder, 1 aux
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
