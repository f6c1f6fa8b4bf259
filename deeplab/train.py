"""Training of one table cell, per the recipe (docs/recipe.md), resumable and preemption-safe.

The verbs: :func:`make_loader`, :func:`device_batch`, :func:`train_iteration`,
:func:`save_checkpoint` / :func:`resume`, and :func:`train`, which runs them. Every random choice is a
function of (seed, iteration): the data order and augmentation through the sampler, dropout through a
per-iteration reseed, so a run killed and resumed from a checkpoint ends bit-identical on CPU.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from deeplab import atomic
from deeplab.autofit import CudaMemory, Memory, OutOfMemory, choose, smaller
from deeplab.checkpoint import FolderLock, atomic_save, load_checkpoint, load_saved, rng_state, set_rng_state
from deeplab.config import TRAINING, CellConfig
from deeplab.datasets import GlobalBatchSampler, TrainDataset, worker_init
from deeplab.distributed import Context, any_rank, barrier, sum_tensor
from deeplab.environment import versions
from deeplab.errors import PipelineError
from deeplab.losses import criterion, image_weights, valid_pixels
from deeplab.memory import GIB, ModelShape, accumulation_steps, gpus_for_whole_batch, predicted_line
from deeplab.model import build_model, take_trained
from deeplab.paths import CellFiles
from deeplab.precision import configure_backends, resolve_precision
from deeplab.schedule import build_optimizer, build_scheduler
from deeplab.transforms import Augmentation, normalize, photometric_distortion, sample_seed

LOG_FIELDS = ("iteration", "loss", "main_loss", "aux_loss", "lr", "images", "images_per_s", "peak_memory_mb",
              "micro_batch", "batchnorm_images")
DROPOUT_SLOT = 1 << 20  # sample_seed slot of the per-iteration dropout seed, apart from the sample slots


class NonFiniteLoss(PipelineError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""

    exit_code = 1


class Diverging(PipelineError):
    """``train.stop_when_diverging``: the loss stayed above the reference's band; a checkpoint was written."""

    exit_code = 1


class Interrupted(PipelineError):
    """SIGTERM / SIGINT arrived; a checkpoint was written and the job stopped (exit 128 + signal)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def batchnorm_images(micro_batch: int, ctx: Context) -> int:
    """Images each BatchNorm statistic is computed over: the micro-batch, times the processes where
    SyncBatchNorm joins them (DDP on GPUs; gloo on the CPU keeps one statistic per process)."""
    return micro_batch * (ctx.world if ctx.distributed and ctx.device.type == "cuda" else 1)


def micro_batch_for(cfg: CellConfig, ctx: Context, model: nn.Module, dtype: torch.dtype | None,
                    memory: Memory | None = None) -> int:
    """Images per forward pass on this rank: from ``train.max_micro_batch``, or found by auto-fit (a GPU,
    or the ``memory`` a test pretends); on a CPU ``auto`` is the whole share. Warns once when BatchNorm
    then sees fewer images than the reference's."""
    share = cfg.share(ctx.world)
    setting = cfg.train.max_micro_batch
    if setting != "auto":
        micro = share // accumulation_steps(share, setting)
        warn_if_batchnorm_below_reference(cfg, ctx, micro, f"set train.max_micro_batch (now {setting}) to 0 or auto "
                                                           "where the whole share fits")
        return micro
    if memory is None and ctx.device.type != "cuda":
        return share
    memory = memory or CudaMemory(model, cfg, ctx.device, dtype)
    line = predicted_line(ModelShape.of(cfg, "fp32" if dtype is None else "bf16"), cfg.train)
    gpu_gib = memory.free_bytes() / GIB
    micro = choose(share, memory, line, log=print if ctx.is_main else lambda text: None)
    gpus = gpus_for_whole_batch(line, cfg.data.batch_size, gpu_gib)
    warn_if_batchnorm_below_reference(cfg, ctx, micro, (
        f"train on {gpus} such GPUs (params/cells.yaml: gpus: {gpus}; SyncBatchNorm joins them)"
        if gpus and gpus > cfg.cell.gpus else "train on more GPUs (params/cells.yaml: gpus; SyncBatchNorm joins them)")
        + " or on a GPU with more memory")
    return micro


def warn_if_batchnorm_below_reference(cfg: CellConfig, ctx: Context, micro_batch: int, alternative: str) -> None:
    """One warning (from the main process) when BatchNorm's statistics cover fewer images than the
    reference's: gradient accumulation keeps the loss's gradient, not the statistics."""
    images, reference = batchnorm_images(micro_batch, ctx), cfg.reference_batchnorm_images
    if images >= reference or not ctx.is_main:
        return
    steps = cfg.share(ctx.world) // micro_batch
    warnings.warn(f"{cfg.run_name}: BatchNorm normalises over {images} images per statistic (micro-batch "
                  f"{micro_batch} x {steps} accumulation steps{f' on {ctx.world} processes' if ctx.distributed else ''}), "
                  f"the reference over {reference} (its whole batch, SyncBatchNorm across its GPUs). Accumulation "
                  "keeps the loss's gradient, not BatchNorm's statistics: such runs can land below the reference's "
                  f"mIoU (the table marks them). To keep the reference's statistics, {alternative}.",
                  RuntimeWarning, stacklevel=2)


def make_loader(cfg: CellConfig, ctx: Context, start: int, stop: int, micro_batch: int) -> DataLoader:
    """This rank's micro-batches of ``micro_batch`` images for iterations start..stop-1, decoded and
    augmented by the workers."""
    data = cfg.data
    dataset = TrainDataset(cfg.prepared_dir, data.train_split, Augmentation.of(cfg), data.num_classes,
                           cfg.preset.paths.arrays_dir(cfg.cell.dataset))
    accumulation = cfg.share(ctx.world) // micro_batch
    sampler = GlobalBatchSampler(len(dataset), data.batch_size, seed=cfg.train.seed, start=start, stop=stop,
                                 rank=ctx.rank, world=ctx.world, accumulation=accumulation)
    workers = cfg.train.workers
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=ctx.device.type == "cuda",
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None, worker_init_fn=worker_init,
                      generator=torch.Generator().manual_seed(cfg.train.seed))  # never touches the global RNG


def device_batch(batch: dict[str, torch.Tensor], device: torch.device,
                 cfg: CellConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 worker output -> normalised float images (N, 3, H, W) and uint8 labels (N, H, W) on the
    device; the photometric distortion and normalisation run here, on the whole batch."""
    images = batch["image"].to(device, non_blocking=True).float()
    images = normalize(photometric_distortion(images, batch["photometric"]), cfg.train.mean, cfg.train.std,
                       batch["valid"])
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["label"].to(device, non_blocking=True)


def reference_groups(cfg: CellConfig, ctx: Context) -> tuple[int, torch.Tensor]:
    """The reference's split of the global batch into ``G`` per-GPU groups of consecutive images, and the
    group of each image of this rank's share (in the sampler's slot order)."""
    batch, share = cfg.data.batch_size, cfg.share(ctx.world)
    count = math.gcd(batch, cfg.train.reference_replicas)
    return count, torch.arange(ctx.rank * share, (ctx.rank + 1) * share) // (batch // count)


def train_iteration(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, cfg: CellConfig, ctx: Context,
                    dtype: torch.dtype | None) -> torch.Tensor:
    """One optimiser step over this rank's share of the global batch; returns (loss, main, aux) on the
    device (no host sync). Images are weighted as the reference's per-GPU valid-pixel means weigh them
    (deeplab.losses), so any number of GPUs and micro-batches gives the reference's gradient."""
    optimizer.zero_grad(set_to_none=True)
    device = ctx.device
    batches = [device_batch(b, device, cfg) for b in micro_batches]
    count, groups = reference_groups(cfg, ctx)
    groups = groups.to(device)
    valid = torch.cat([valid_pixels(labels) for _, labels in batches])
    group_valid = sum_tensor(ctx, torch.zeros(count, dtype=valid.dtype, device=device).index_add_(0, groups, valid))
    weights = image_weights(group_valid, groups, ctx.world).split([len(labels) for _, labels in batches])
    totals = torch.zeros(3, device=device)
    for k, (images, labels) in enumerate(batches):
        sync = k == len(batches) - 1 or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                outputs = model(images)
            losses = criterion(outputs, labels, aux_weight=cfg.train.aux_weight, weights=weights[k])
            scaler.scale(losses["loss"]).backward()
        totals += torch.stack([losses["loss"], losses["main"], losses["aux"]]).detach()
    scaler.step(optimizer)
    scaler.update()
    return totals


@dataclass
class State:
    """What a checkpoint restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    iteration: int = 0
    micro_batch: int = 0  # images per forward pass now (auto-fit, halved after an out-of-memory step)

    def bare_model(self) -> nn.Module:
        """The model itself, without torch.compile's and DDP's wrappers (what checkpoints hold)."""
        model = getattr(self.model, "_orig_mod", self.model)
        return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(state: State, cfg: CellConfig, path: Path) -> None:
    atomic_save({"model": state.bare_model().state_dict(), "optimizer": state.optimizer.state_dict(),
                 "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                 "rng": rng_state(), "iteration": state.iteration, "environment": versions(),
                 "digest": cfg.training_digest(), "config": cfg.record(TRAINING)}, path)


def resume(state: State, cfg: CellConfig, path: Path) -> bool:
    """Restore ``state`` from ``path`` if it exists (refused when made under another config)."""
    if not path.is_file():
        return False
    saved = load_checkpoint(path, cfg.training_digest(), cfg.record(TRAINING))
    before, now = saved.get("environment"), versions()
    if before is not None and before != now:
        warnings.warn(f"{path} was written under {before} and is resumed under {now}: training goes on, but "
                      "a run resumed on other versions is not promised to equal an uninterrupted one",
                      RuntimeWarning, stacklevel=2)
    state.bare_model().load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state.iteration = saved["iteration"]
    return True


@dataclass
class TrainLog:
    """``train_log.csv``: one row per logged iteration; rows past the resumed checkpoint are dropped."""

    path: Path
    enabled: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)

    def open(self, start: int) -> None:
        if self.enabled and self.path.is_file():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
            self._write()

    def append(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.rows.append(row)
            self._write()

    def _write(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_text(self.path, text.getvalue())


class StopSignals:
    """SIGTERM / SIGINT set a flag the loop checks between iterations (never mid-step)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class Window:
    """Loss sums and timing between two log points, kept on the device until the log sync."""

    device: torch.device
    sums: torch.Tensor = None  # type: ignore[assignment]
    first_bad: torch.Tensor = None  # type: ignore[assignment]
    count: int = 0
    images: int = 0  # images this rank trained on in the window (known on the host, no sync)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.sums = torch.zeros(3, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)

    def add(self, losses: torch.Tensor, iteration: int, images: int) -> None:
        self.images += images
        bad = ~torch.isfinite(losses[0])
        self.first_bad = torch.where(bad & (self.first_bad < 0), iteration, self.first_bad)
        self.sums += losses
        self.count += 1


def check_finite(window: Window, checkpoint: Path, ctx: Context) -> None:
    """Raise :class:`NonFiniteLoss` (on every rank) if any rank saw a non-finite loss in the window."""
    first_bad = int(window.first_bad.item())
    if any_rank(ctx, first_bad >= 0):
        good = load_saved(checkpoint)["iteration"] \
            if checkpoint.is_file() else None
        where = f"{checkpoint} (iteration {good})" if good is not None else "none (no checkpoint written yet)"
        raise NonFiniteLoss(f"loss became NaN/inf at iteration {first_bad + 1 if first_bad >= 0 else '?'} "
                            f"(on rank {ctx.rank if first_bad >= 0 else 'other'}); last good checkpoint: {where}. "
                            "Lower the learning rate or use precision fp32, then rerun to resume from it.")


Logger = Callable[[dict[str, float], int], None]


def log_window(window: Window, state: State, cfg: CellConfig, ctx: Context, log: TrainLog,
               on_metrics: Logger) -> None:
    """Write one train_log.csv row (averaged over the window) and mirror it to the tracker."""
    elapsed = time.perf_counter() - window.started
    sums = (window.sums / max(window.count, 1)).tolist()  # the one host sync of the window
    images = int(sum_tensor(ctx, torch.tensor([window.images], device=ctx.device)).item())  # all ranks' images
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else 0.0
    row = {"iteration": state.iteration, "loss": sums[0], "main_loss": sums[1], "aux_loss": sums[2],
           "lr": state.optimizer.param_groups[0]["lr"], "images": images, "images_per_s": images / elapsed,
           "peak_memory_mb": peak, "micro_batch": state.micro_batch,
           "batchnorm_images": batchnorm_images(state.micro_batch, ctx)}
    log.append(row)
    on_metrics({k: v for k, v in row.items() if k != "iteration"}, state.iteration)


def _stop_requested(signals: StopSignals, ctx: Context, at_log: bool) -> bool:
    """Single process: every iteration (a Python flag). DDP: agreed at log points (a collective)."""
    if not ctx.distributed:
        return signals.signum is not None
    return at_log and any_rank(ctx, signals.signum is not None)


def _write_checkpoint(state: State, cfg: CellConfig, path: Path, ctx: Context) -> None:
    if ctx.is_main:
        save_checkpoint(state, cfg, path)
    barrier(ctx)


class BufferBackup:
    """A copy of the model's buffers (BatchNorm statistics) taken before each step, so a step that ran out
    of memory half-way can be retried from the same state."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for b in model.buffers() if b.is_floating_point() or b.dtype == torch.int64]
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        torch._foreach_copy_(self.buffers, self.saved)


def _after_oom(state: State, cfg: CellConfig, ctx: Context) -> int:
    """The micro-batch to retry with after running out of memory (single-GPU jobs only)."""
    retry = smaller(cfg.share(ctx.world), state.micro_batch)
    if ctx.distributed or retry is None:
        raise OutOfMemory(f"out of memory at iteration {state.iteration + 1} with a micro-batch of "
                          f"{state.micro_batch} images{' under DDP' if ctx.distributed else ''}; set "
                          "train.max_micro_batch lower (or auto) and rerun: training resumes from its checkpoint")
    warnings.warn(f"out of memory at iteration {state.iteration + 1} with a micro-batch of {state.micro_batch} "
                  f"images; retrying it and going on with {retry}", RuntimeWarning, stacklevel=2)
    warn_if_batchnorm_below_reference(cfg, ctx, retry, "set train.max_micro_batch to auto on a GPU with more free "
                                                       "memory, or train on more GPUs (params/cells.yaml: gpus)")
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return retry


def run_iterations(state: State, loader_for: Callable[[int, int], DataLoader], cfg: CellConfig, ctx: Context,
                   max_iters: int, checkpoint: Path, log: TrainLog, on_metrics: Logger,
                   on_validate: Callable[[int], None], dtype: torch.dtype | None,
                   stop_reason: Callable[[], str | None] = lambda: None) -> None:
    """The loop: one optimiser step per iteration; log, check, checkpoint, validate at their periods. A
    step that runs out of memory is retried with a smaller micro-batch (same images, same gradient). After
    each log point, ``stop_reason()`` (any rank's) stops the run after a checkpoint (:class:`Diverging`)."""
    accumulation = cfg.share(ctx.world) // state.micro_batch
    batches: Iterator[dict[str, torch.Tensor]] = iter(loader_for(state.iteration, state.micro_batch))
    window, t = Window(ctx.device), cfg.train
    backup = None if ctx.distributed else BufferBackup(state.model)  # DDP cannot retry a step: no copies
    with StopSignals() as signals:
        while state.iteration < max_iters:
            torch.manual_seed(sample_seed(t.seed, state.iteration, DROPOUT_SLOT + ctx.rank))  # dropout masks
            micro = [next(batches) for _ in range(accumulation)]
            if backup is not None:
                backup.save()
            try:
                losses = train_iteration(state.model, micro, state.optimizer, state.scaler, cfg, ctx, dtype)
            except torch.OutOfMemoryError:
                del micro
                state.micro_batch = _after_oom(state, cfg, ctx)  # raises under DDP
                backup.restore()
                accumulation = cfg.share(ctx.world) // state.micro_batch
                batches = iter(loader_for(state.iteration, state.micro_batch))
                continue
            window.add(losses, state.iteration, sum(len(m["label"]) for m in micro))
            state.iteration += 1
            at_log = state.iteration % t.log_every == 0 or state.iteration == max_iters
            at_checkpoint = state.iteration % t.checkpoint_every == 0
            stop = _stop_requested(signals, ctx, at_log) and state.iteration < max_iters  # else just finish
            if at_log or at_checkpoint or stop:
                check_finite(window, checkpoint, ctx)
            reason = None
            if at_log:
                log_window(window, state, cfg, ctx, log, on_metrics)
                reason = stop_reason() if state.iteration < max_iters else None
                if ctx.distributed and any_rank(ctx, reason is not None):
                    reason = reason or "another rank's loss left the reference's band"
            state.scheduler.step()
            if at_log:
                window = Window(ctx.device)
            if (at_checkpoint or stop or reason) and state.iteration < max_iters:
                _write_checkpoint(state, cfg, checkpoint, ctx)
            if reason:
                raise Diverging(f"{reason}; stopped at iteration {state.iteration} (train.stop_when_diverging) "
                                f"with checkpoint {checkpoint}: check the data and the recipe, then rerun to resume "
                                "(with train.stop_when_diverging: false to go on regardless)")
            if stop:
                raise Interrupted(signals.signum or signal.SIGTERM, f"stopped by signal {signals.signum} at "
                                  f"iteration {state.iteration}; checkpoint {checkpoint}; rerun to resume")
            if t.val_every and state.iteration % t.val_every == 0 and state.iteration < max_iters:
                on_validate(state.iteration)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_final(model: nn.Module, cfg: CellConfig, path: Path, iteration: int) -> None:
    """``model.pt``: the trained weights (``state_dict``) and what they are; written last, atomically."""
    atomic_save({"state_dict": model.state_dict(), "cell": cfg.cell.id, "digest": cfg.training_digest(),
                 "training": cfg.record(TRAINING), "config": cfg.to_dict(), "iteration": iteration}, path)


def train(cfg: CellConfig, ctx: Context, *, max_iters: int, weights: str | Path | None = None, start: str | Path | None = None,
          on_metrics: Logger = lambda m, s: None, on_validate: Callable[[nn.Module, int], None] = lambda model, it: None,
          memory: Memory | None = None, stop_reason: Callable[[], str | None] = lambda: None) -> Path:
    """Train one run into its files (``cfg.files``, from the prepared data at ``cfg.prepared_dir``), resuming
    from its checkpoint if present; return the path of the final model. ``on_metrics`` / ``on_validate`` are called on every rank at log / val points. The caller
    holds the cell's lock (:func:`cell_lock`), so no second copy writes the same files. ``weights``: the
    backbone's ImageNet checkpoint; ``start``: instead, another cell's model.pt to fine-tune from."""
    files = cfg.files
    checkpoint = Path(files.checkpoint)
    dtype = resolve_precision(cfg.train.precision, ctx.device)
    configure_backends(dtype, deterministic=cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, ctx.device, weights, ctx.distributed)
    if start is not None:  # cells.<id>.init: another cell's trained model (a resume then overwrites it all)
        taken, fresh = take_trained(model, Path(start), cfg.cell.init)
        if ctx.is_main:
            print(f"starting from cell {cfg.cell.init}'s model ({start}): took {len(taken)} tensors; "
                  + (f"re-initialised {len(fresh)}: {', '.join(fresh)}" if fresh else "re-initialised none"), flush=True)
    optimizer = build_optimizer(model, cfg.train)
    state = State(model, optimizer, build_scheduler(optimizer, max_iters, cfg.train),
                  torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16))
    if resume(state, cfg, checkpoint) and ctx.is_main:
        print(f"resuming from {checkpoint} at iteration {state.iteration} of {max_iters}", flush=True)
    if ctx.distributed:
        state.model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda"
                                              else None)
    if cfg.train.compile != "off":  # the training step only: evaluation sees other image sizes
        state.model = torch.compile(state.model, backend=cfg.train.compile)
    log = TrainLog(Path(files.train_log), enabled=ctx.is_main)
    log.open(state.iteration)
    state.model.train()
    state.micro_batch = micro_batch_for(cfg, ctx, state.bare_model(), dtype, memory)
    run_iterations(state, lambda start, micro: make_loader(cfg, ctx, start, max_iters, micro), cfg, ctx,
                   max_iters, checkpoint, log, on_metrics, lambda it: _validate(state, on_validate, it), dtype,
                   stop_reason)
    final = Path(files.model)
    if ctx.is_main:
        save_final(state.bare_model(), cfg, final, state.iteration)
        checkpoint.unlink(missing_ok=True)  # the final weights supersede it; checkpoints are large
    barrier(ctx)
    return final


@contextlib.contextmanager
def cell_lock(files: CellFiles, enabled: bool = True) -> Iterator[list[Path]]:
    """Hold the cell's lock for a whole job (a second copy is refused before it writes anything) and,
    under it, delete the temp files of earlier writers killed mid-write (a checkpoint's can be GBs).
    Yields the leftovers it removed."""
    if not enabled:  # DDP ranks other than 0: rank 0 holds the lock for the job
        yield []
        return
    with FolderLock(Path(files.checkpoint).parent):
        yield [p for path in (files.checkpoint, files.model, files.train_log, files.config)
               for p in atomic.remove_leftovers(path)]


def _validate(state: State, on_validate: Callable[[nn.Module, int], None], iteration: int) -> None:
    state.model.eval()
    try:
        on_validate(state.bare_model(), iteration)
    finally:
        state.model.train()
