"""The confusion-matrix metrics against an independent implementation (torchmetrics)."""
from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from deeplab.metrics import ConfusionMatrix

C = 7


def random_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        target = torch.randint(0, C - 1, (2, 33, 41), generator=gen)  # class C-1 never in the ground truth
        target[torch.rand(target.shape, generator=gen) < 0.2] = 255
        prediction = torch.where(torch.rand(target.shape, generator=gen) < 0.6, target.clamp(max=C - 2),
                                 torch.randint(0, C - 1, target.shape, generator=gen))  # nor predicted
        batches.append((prediction, target))
    return batches


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics(seed: int) -> None:
    ours = ConfusionMatrix(C)
    jaccard = MulticlassJaccardIndex(C, ignore_index=255, average="none")
    micro = MulticlassAccuracy(C, ignore_index=255, average="micro")
    per_class_acc = MulticlassAccuracy(C, ignore_index=255, average="none")
    for prediction, target in random_batches(seed):
        ours.update(prediction.to(torch.uint8), target.to(torch.uint8))
        for metric in (jaccard, micro, per_class_acc):
            metric.update(prediction, target)
    result = ours.compute()
    reference_iou = jaccard.compute()[:C - 1].double() * 100
    assert torch.allclose(torch.tensor(result["iou"][:C - 1], dtype=torch.float64), reference_iou, atol=1e-4)
    assert math.isnan(result["iou"][C - 1])  # union 0: left out of the mean
    assert result["mIoU"] == pytest.approx(reference_iou.mean().item(), abs=1e-4)
    assert result["aAcc"] == pytest.approx(micro.compute().item() * 100, abs=1e-4)
    assert result["mAcc"] == pytest.approx(per_class_acc.compute()[:C - 1].double().mean().item() * 100, abs=1e-4)
    assert result["pixels"] == sum(int((t != 255).sum()) for _, t in random_batches(seed))


def test_perfect_and_merged() -> None:
    target = torch.tensor([[0, 1, 2, 255]])
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(target.clamp(max=2), target)
    b.merge(a.matrix)
    b.merge(a.matrix)
    assert a.compute()["mIoU"] == 100 and b.matrix.sum() == 6
