"""Our model, training step, schedule, loss, transforms and metrics against the reference implementation's own
code (sssegmentation 1.7.0 from the package registry, a dev dependency), run side by side on CPU.

The reference ships no configs in its package, so :func:`segmentor_cfg` builds its DeepLabV3+ config the way
its ``configs/_base_/segmentors/deeplabv3plus.py`` and ``configs/deeplabv3plus/*`` do (BatchNorm2d where it
trains with SyncBatchNorm: one process here). Weights move between the two through deeplab.reference's
explicit key map, never by position.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab import reference
from deeplab.config import load_params
from deeplab.losses import criterion, image_weights, valid_pixels
from deeplab.metrics import ConfusionMatrix
from deeplab.model import PARAMETER_COUNTS, deeplabv3plus
from deeplab.schedule import build_optimizer, build_scheduler
from deeplab.transforms import eval_size, keep_ratio_size, pad, random_flip, resize_image
from tests.train_fixtures import ROOT

ssseg = pytest.importorskip("ssseg", reason="the reference implementation (pip install sssegmentation==1.7.0)")
from ssseg.modules import BuildSegmentor  # noqa: E402
from ssseg.modules.datasets.pipelines.evaluation import Evaluation  # noqa: E402
from ssseg.modules.datasets.pipelines.transforms import Padding, RandomFlip, Resize  # noqa: E402
from ssseg.modules.models.losses import calculatelosses  # noqa: E402
from ssseg.modules.models.optimizers import BuildOptimizer  # noqa: E402
from ssseg.modules.models.schedulers import BuildScheduler  # noqa: E402
from ssseg.modules.utils import SSSegInputStructure  # noqa: E402

PARAMS = load_params(ROOT / "params")
RATES = {8: [12, 24, 36], 16: [6, 12, 18]}
REF_IGNORE = -100  # the reference's loss config ignores -100; its datasets write their void label so


def segmentor_cfg(backbone: str = "r50", output_stride: int = 16, num_classes: int = 21, dropout: float = 0.1) -> dict:
    depth = {"r50": 50, "r101": 101}[backbone]
    return {
        "type": "Deeplabv3Plus", "num_classes": num_classes, "align_corners": False, "benchmark": False,
        "norm_cfg": {"type": "BatchNorm2d"}, "act_cfg": {"type": "ReLU", "inplace": True},
        "backbone": {"type": "ResNet", "depth": depth, "structure_type": f"resnet{depth}conv3x3stem",
                     "pretrained": False, "outstride": output_stride, "use_conv3x3_stem": True,
                     "selected_indices": (0, 1, 2, 3)},
        "head": {"in_channels": [256, 2048], "feats_channels": 512, "shortcut_channels": 48,
                 "dilations": [1, *RATES[output_stride]], "dropout": dropout},
        "auxiliary": {"in_channels": 1024, "out_channels": 512, "dropout": dropout},
        "losses": {"loss_aux": {"type": "CrossEntropyLoss", "scale_factor": 0.4, "ignore_index": REF_IGNORE,
                                "reduction": "mean"},
                   "loss_cls": {"type": "CrossEntropyLoss", "scale_factor": 1.0, "ignore_index": REF_IGNORE,
                                "reduction": "mean"}},
        "inference": {"forward": {"mode": "whole", "cropsize": None, "stride": None},
                      "tta": {"multiscale": [1], "flip": False, "use_probs_before_resize": False}},
    }


def pair(backbone: str, output_stride: int, num_classes: int = 21, dropout: float = 0.1,
         seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference segmentor (random init, then randomised BN statistics) and ours with its weights."""
    torch.manual_seed(seed)
    ref = BuildSegmentor(segmentor_cfg(backbone, output_stride, num_classes, dropout), mode="TRAIN")
    with torch.no_grad():
        for name, buffer in ref.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    ours = deeplabv3plus(backbone=backbone, output_stride=output_stride, num_classes=num_classes,
                         dropout=dropout)  # its ASPP rates: our default for the output stride
    ours.load_state_dict(reference.to_ours(ref.state_dict()))  # strict: every key named by the map
    return ref, ours


def test_the_key_map_names_every_weight_once_both_ways() -> None:
    ref, ours = pair("r50", 16)
    converted = reference.to_ours(ref.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert list(reference.to_reference(converted)) == list(ref.state_dict())
    prefixes = [src for src, _ in reference.KEY_MAP]
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)  # no prefix shadows another
    assert sum(p.numel() for p in ref.parameters()) == PARAMETER_COUNTS["r50"][1] == 45_956_602


@pytest.mark.parametrize("backbone, output_stride", [("r50", 8), ("r50", 16), ("r101", 8), ("r101", 16)])
def test_same_weights_give_the_same_logits(backbone: str, output_stride: int) -> None:
    ref, ours = pair(backbone, output_stride)
    ref.eval(), ours.eval()
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = ref(SSSegInputStructure(images=images, mode="TEST")).seg_logits
        theirs = F.interpolate(theirs, size=images.shape[-2:], mode="bilinear", align_corners=False)
        mine = ours(images)["out"]
    assert torch.equal(mine, theirs), (mine - theirs).abs().max()


def _labels(shape: tuple[int, int], ignored: list[float], classes: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, classes, (len(ignored), *shape), generator=gen)
    for i, share in enumerate(ignored):
        labels[i][torch.rand(shape, generator=gen) < share] = 255
    return labels


def test_a_float64_training_step_equals_the_reference() -> None:
    """Its TRAIN-mode forward and loss config, its optimiser builder, against ours: a 2-image batch with 75 %
    and 12 % ignored pixels, dropout off; the loss, every gradient, the BN statistics, and the parameters
    after two SGD steps."""
    ref, ours = pair("r50", 16, dropout=0.0)
    ref, ours = ref.double().train(), ours.double().train()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    labels = _labels((64, 64), [0.75, 0.12], 21, gen)
    train = PARAMS.train
    ref_opt = BuildOptimizer(ref, {"type": "SGD", "lr": train.lr, "momentum": train.momentum,
                                   "weight_decay": train.weight_decay, "params_rules": {}})
    our_opt = build_optimizer(ours, train)
    before = {name: param.detach().clone() for name, param in ours.named_parameters()}
    for step in range(2):
        ref_opt.zero_grad(), our_opt.zero_grad()
        targets = torch.where(labels == 255, REF_IGNORE, labels)
        ref_loss = ref(SSSegInputStructure(images=images, seg_targets=targets, mode="TRAIN")).loss
        our_loss = criterion(ours(images), labels, aux_weight=train.aux_weight)["loss"]
        assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-12, abs=0)
        ref_loss.backward(), our_loss.backward()
        theirs = reference.to_ours({k: p.grad for k, p in ref.named_parameters()})
        for name, param in ours.named_parameters():
            scale = theirs[name].abs().max().clamp(min=1e-30)
            assert ((param.grad - theirs[name]).abs().max() / scale).item() < 1e-9, (step, name)
        ref_opt.step(), our_opt.step()
    buffers = reference.to_ours(dict(ref.named_buffers()))
    for name, buffer in ours.named_buffers():
        assert torch.allclose(buffer.double(), buffers[name].double(), rtol=1e-9, atol=1e-12), name
    params = reference.to_ours(dict(ref.named_parameters()))
    for name, param in ours.named_parameters():  # the two updates agree to 1e-9 of their size
        update = (param - before[name]).abs().max()
        assert update > 0 and (param - params[name]).abs().max() <= 1e-9 * update, name


def test_the_poly_schedule_gives_its_learning_rate_at_every_iteration() -> None:
    train = PARAMS.train
    epochs, per_epoch = 3, 7
    params = [torch.nn.Parameter(torch.zeros(1))]
    ref_opt = torch.optim.SGD(params, lr=train.lr)
    ref_sched = BuildScheduler(ref_opt, {"type": "PolyScheduler", "max_epochs": epochs, "iters_per_epoch": per_epoch,
                                         "power": train.poly_power, "lr": train.lr, "min_lr": None,
                                         "optimizer": {}})
    our_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    our_sched = build_scheduler(our_opt, epochs * per_epoch, train)
    for iteration in range(epochs * per_epoch):
        theirs = ref_sched.updatelr()  # what its training loop does before each step
        assert our_opt.param_groups[0]["lr"] == pytest.approx(theirs, rel=1e-12), iteration
        ref_sched.step(), our_opt.step(), our_sched.step()
    assert ref_sched.min_lr == train.min_lr  # its default floor, lr / 100, is ours


@pytest.mark.parametrize("micro_batch", [16, 4, 1])
def test_the_loss_is_its_mean_over_8_gpus_of_2_images(micro_batch: int) -> None:
    """DDP over the reference's 8 GPUs averages 8 per-GPU losses, each a valid-pixel mean over 2 images;
    ours over the 16-image batch, whole or in micro-batches, gives that number."""
    gen = torch.Generator().manual_seed(3)
    shape, classes = (24, 20), 21
    out = torch.randn(16, classes, *shape, generator=gen, dtype=torch.float64)
    aux = torch.randn(16, classes, *shape, generator=gen, dtype=torch.float64)
    labels = _labels(shape, [0.0, 0.9, 0.5, 0.1, 1.0, 0.3, 0.95, 0.0, 0.6, 0.2, 0.0, 0.8, 0.4, 0.4, 0.99, 0.05], classes, gen)
    losses_cfg = segmentor_cfg()["losses"]
    per_gpu = []
    for gpu in range(8):
        part = slice(2 * gpu, 2 * gpu + 2)
        targets = torch.where(labels[part] == 255, REF_IGNORE, labels[part])
        total, _ = calculatelosses(OrderedDict(loss_cls=out[part], loss_aux=aux[part]), {"seg_targets": targets},
                                   copy.deepcopy(losses_cfg))
        per_gpu.append(total)
    theirs = torch.stack(per_gpu).mean()
    groups = torch.arange(16) // 2
    counts = torch.zeros(8, dtype=torch.long).index_add_(0, groups, valid_pixels(labels))
    weights = image_weights(counts, groups, world=1, dtype=torch.float64)
    ours = sum(criterion({"out": out[i:i + micro_batch], "aux": aux[i:i + micro_batch]}, labels[i:i + micro_batch],
                         aux_weight=PARAMS.train.aux_weight, weights=weights[i:i + micro_batch])["loss"]
               for i in range(0, 16, micro_batch))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)


@pytest.mark.parametrize("size", [(300, 500), (512, 333), (17, 512), (512, 512)])
def test_padding_matches_its_centred_padding(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(3, *size, generator=gen)
    label = torch.randint(0, 21, size, generator=gen)
    theirs = Padding((512, 512), data_type="tensor", seg_target_fill_value=255)(
        {"image": image.clone(), "seg_target": label.clone()})
    mine_image, mine_label = pad(image, label, (512, 512))
    assert torch.equal(mine_image, theirs["image"]) and torch.equal(mine_label, theirs["seg_target"])


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (281, 500), (1024, 2048), (37, 91)])
def test_the_resize_to_the_test_size_matches_its_resize(size: tuple[int, int]) -> None:
    """The keep-ratio fit to (2048, 512) of its test pipeline: the same output size; pixels within the
    rounding of OpenCV's fixed-point bilinear filter (ours interpolates in float and rounds)."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    theirs = Resize(output_size=(2048, 512), keep_ratio=True, scale_range=None)({"image": image.copy()})["image"]
    height, width = eval_size(*size, (2048, 512))
    assert theirs.shape[:2] == (height, width)
    mine = resize_image(torch.from_numpy(image).permute(2, 0, 1), (height, width)).permute(1, 2, 0).numpy()
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.parametrize("ratio", [0.5, 0.75, 1.0, 1.37, 2.0])
def test_the_training_resize_gives_its_size_for_a_fixed_ratio(ratio: float) -> None:
    image = np.zeros((375, 500, 3), np.uint8)
    for base in ((2048, 512), (2048, 1024)):
        theirs = Resize(output_size=base, keep_ratio=True, scale_range=(ratio, ratio))({"image": image.copy()})["image"]
        assert theirs.shape[:2] == keep_ratio_size(375, 500, (int(base[0] * ratio), int(base[1] * ratio)))


def test_a_certain_flip_flips_as_its_flip() -> None:
    image = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    label = np.arange(10, dtype=np.uint8).reshape(2, 5)
    theirs = RandomFlip(prob=1.0)({"image": image.copy(), "seg_target": label.copy()})
    mine_image, mine_label = random_flip(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label),
                                         torch.Generator(), prob=1.0)
    assert np.array_equal(mine_image.permute(1, 2, 0).numpy(), theirs["image"])
    assert np.array_equal(mine_label.numpy(), theirs["seg_target"])


def test_its_evaluation_gives_our_metrics() -> None:
    """Random prediction and label maps with ignored pixels and a class absent from both: per-class IoU and
    accuracy, mIoU, aAcc and mAcc as its Evaluation computes them (nan-means over classes)."""
    rng = np.random.default_rng(6)
    classes = 21
    preds, targets = [], []
    for height, width in ((40, 50), (33, 61), (64, 64)):
        target = rng.integers(0, classes - 1, (height, width))  # class 20 never appears
        target[rng.random((height, width)) < 0.2] = 255
        pred = np.where(rng.random((height, width)) < 0.6, target, rng.integers(0, classes - 1, (height, width)))
        pred = np.where(pred == 255, 0, pred)
        preds.append(pred), targets.append(target)
    theirs = Evaluation(preds, targets, classes, ignore_index=255).all_metric_results
    matrix = ConfusionMatrix(classes)
    for pred, target in zip(preds, targets):
        matrix.update(torch.from_numpy(pred), torch.from_numpy(target))
    ours = matrix.compute()
    assert np.allclose(np.array(ours["iou"]) / 100, theirs["iou"], equal_nan=True, rtol=1e-12)
    assert np.allclose(np.array(ours["acc"]) / 100, theirs["accuracy"], equal_nan=True, rtol=1e-12)
    assert ours["mIoU"] / 100 == pytest.approx(np.nanmean(theirs["iou"]), rel=1e-12)
    assert ours["mAcc"] / 100 == pytest.approx(np.nanmean(theirs["accuracy"]), rel=1e-12)
    assert ours["aAcc"] / 100 == pytest.approx(float(theirs["all_accuracy"]), rel=1e-12)
