"""The optimiser and learning-rate schedule of the recipe: SGD on every parameter, poly decay per iteration."""
from __future__ import annotations

import torch
from torch import nn

from deeplab.config import TrainSettings


def poly_lr(iteration: int, max_iters: int, *, lr: float, min_lr: float, power: float) -> float:
    """lr = (lr - min_lr) * (1 - it / max_it)^power + min_lr."""
    progress = min(iteration, max_iters) / max_iters
    return (lr - min_lr) * (1 - progress) ** power + min_lr


def build_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.SGD:
    """SGD with the same lr and weight decay on every parameter (BN and biases included)."""
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, max_iters: int,
                    train: TrainSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay stepped once per iteration; its state (the step count) goes into checkpoints."""
    def factor(iteration: int) -> float:
        return poly_lr(iteration, max_iters, lr=train.lr, min_lr=train.min_lr, power=train.poly_power) / train.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
