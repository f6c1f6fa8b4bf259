"""The loss is normalised as the reference's 8 GPUs normalise it, checked against a direct computation:
torch's own valid-pixel mean per group of images, averaged over the groups, whatever the micro-batches
and (simulated) ranks of this run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplab.config import load_params
from deeplab.distributed import Context
from deeplab.train import device_batch, train_iteration
from deeplab.transforms import Photometric

BATCH, REPLICAS, CLASSES, SIZE = 8, 4, 3, 6  # groups of 2 images, as the reference's 2 images per GPU
BASE = load_params(Path(__file__).resolve().parent.parent / "params").resolve("voc-r50-os16", "smoke")
CFG = dataclasses.replace(BASE, data=dataclasses.replace(BASE.data, batch_size=BATCH),
                          train=dataclasses.replace(BASE.train, reference_replicas=REPLICAS, channels_last=False))


class Heads(nn.Module):
    """Main and aux logits from two 1x1 convolutions: enough parameters to compare gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.out, self.aux = nn.Conv2d(3, CLASSES, 1), nn.Conv2d(3, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.out(x), "aux": self.aux(x)}


def samples() -> list[dict[str, torch.Tensor]]:
    """8 images whose valid-pixel counts differ wildly: 1, 36, 5, 30, 36, 2, 18, 36 of 36."""
    gen = torch.Generator().manual_seed(1)
    items = []
    for k, valid in enumerate((1, 36, 5, 30, 36, 2, 18, 36)):
        label = torch.randint(0, CLASSES, (SIZE * SIZE,), dtype=torch.uint8, generator=gen)
        label[valid:] = 255
        items.append({"image": torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=gen),
                      "label": label.view(SIZE, SIZE), "valid": torch.tensor([0, 0, SIZE, SIZE]),
                      "photometric": Photometric().as_tensor()})
    return items


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def reference_gradients() -> list[torch.Tensor]:
    """The reference: each pair of images is one GPU's batch, its loss torch's mean over valid pixels
    (main + 0.4 aux); DDP averages the 4 GPUs' gradients."""
    model = Heads()
    images, labels = device_batch(collate(samples()), torch.device("cpu"), CFG)
    losses = []
    for g in range(REPLICAS):
        part = slice(2 * g, 2 * g + 2)
        out = model(images[part])
        losses.append(F.cross_entropy(out["out"], labels[part].long(), ignore_index=255)
                      + 0.4 * F.cross_entropy(out["aux"], labels[part].long(), ignore_index=255))
    torch.stack(losses).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def our_gradients(world: int, micro: int) -> list[torch.Tensor]:
    """train_iteration on each simulated rank (its share cut into micro-batches), gradients averaged over
    the ranks as DDP averages them."""
    items, share = samples(), BATCH // world
    total = None
    for rank in range(world):
        model = Heads()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        mine = items[rank * share:(rank + 1) * share]
        batches = [collate(mine[i:i + micro]) for i in range(0, share, micro)]
        ctx = Context(rank=rank, world=world, local_rank=rank, device=torch.device("cpu"))
        train_iteration(model, batches, optimizer, torch.amp.GradScaler("cpu", enabled=False), CFG, ctx, None)
        grads = [p.grad / world for p in model.parameters()]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    return total


@pytest.mark.parametrize("world, micro", [(1, 8), (1, 4), (1, 2), (1, 1), (2, 4), (2, 1), (4, 2)])
def test_gradient_equals_the_reference_per_gpu_mean(world: int, micro: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # ranks are simulated in one process: no group spans two ranks here, so summing the group counts over
    # ranks (an all-reduce under DDP) is the identity
    monkeypatch.setattr("deeplab.train.sum_tensor", lambda ctx, value: value)
    for ours, reference in zip(our_gradients(world, micro), reference_gradients()):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_the_plain_batch_mean_would_differ() -> None:
    """The difference is real for these images: one valid-pixel mean over the whole batch is not it."""
    model = Heads()
    images, labels = device_batch(collate(samples()), torch.device("cpu"), CFG)
    out = model(images)
    (F.cross_entropy(out["out"], labels.long(), ignore_index=255)
     + 0.4 * F.cross_entropy(out["aux"], labels.long(), ignore_index=255)).backward()
    assert not torch.allclose(model.out.weight.grad, reference_gradients()[0], rtol=1e-3)
