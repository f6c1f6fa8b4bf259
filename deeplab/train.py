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
from deeplab.checkpoint import (CheckpointError, FolderLock, atomic_save, load_checkpoint, load_saved, rng_state,
                               set_rng_state)
from deeplab.config import TRAINING, CellConfig
from deeplab.datasets import GlobalBatchSampler, TrainDataset, manifest_hash, worker_init
from deeplab.distributed import Context, any_rank, barrier, sum_tensor
from deeplab.environment import versions
from deeplab.errors import PipelineError
from deeplab.losses import criterion, image_weights, valid_pixels
from deeplab.memory import GIB, ModelShape, accumulation_steps, gpus_for_whole_batch, predicted_line
from deeplab.model import build_model, take_trained
from deeplab.paths import CellFiles
from deeplab.precision import bf16_available, configure_backends, of_name, resolve_precision, short_name
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
    data_hash: str = ""  # the prepared training split's identity (deeplab.datasets.manifest_hash)
    computed: list[dict[str, Any]] = field(default_factory=list)  # how the run computes, from which iteration on

    def bare_model(self) -> nn.Module:
        """The model itself, without torch.compile's and DDP's wrappers (what checkpoints hold)."""
        model = getattr(self.model, "_orig_mod", self.model)
        return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(state: State, cfg: CellConfig, path: Path) -> None:
    atomic_save({"model": state.bare_model().state_dict(), "optimizer": state.optimizer.state_dict(),
                 "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                 "rng": rng_state(), "iteration": state.iteration, "environment": versions(),
                 "digest": cfg.training_digest(), "config": cfg.record(TRAINING), "data_hash": state.data_hash,
                 "computed": state.computed}, path)


def read_checkpoint(path: Path, cfg: CellConfig, data_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one, refused when made under another training record or on
    other prepared data than the cell's dataset holds now (``data_hash``), and warned about when written under
    other torch/CUDA versions."""
    if not path.is_file():
        return None
    saved = load_checkpoint(path, cfg.training_digest(), cfg.record(TRAINING))
    if saved.get("data_hash") and saved["data_hash"] != data_hash:  # (files of older versions: unknown)
        raise CheckpointError(
            f"{path} was trained on other data than the prepared {cfg.cell.dataset} holds now ({cfg.prepared_dir} "
            f"was re-prepared or edited since: split {cfg.data.train_split}'s identity {saved['data_hash'][:12]} -> "
            f"{data_hash[:12]}); its weights learnt from the old labels. Delete {path.parent} to train "
            f"{cfg.run_name} on the data as it is now, or restore the data it was trained on")
    before, now = saved.get("environment"), versions()
    if before is not None and before != now:
        warnings.warn(f"{path} was written under {before} and is resumed under {now}: training goes on, but "
                      "a run resumed on other versions is not promised to equal an uninterrupted one",
                      RuntimeWarning, stacklevel=2)
    return saved


def restore(state: State, saved: dict[str, Any]) -> None:
    """Put a checkpoint's (:func:`read_checkpoint`) state into ``state``."""
    state.bare_model().load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.scaler.is_enabled():  # fp16's loss scale; the held precision (held_precision) is the saved one
        state.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state.iteration = saved["iteration"]
    state.computed = list(saved.get("computed", []))


def held_precision(cfg: CellConfig, ctx: Context, saved: dict[str, Any] | None) -> torch.dtype | None:
    """The autocast dtype this job trains in: ``train.precision`` resolved on this device, or, resuming, the
    precision the checkpoint was trained in (``auto`` resolves by GPU, and a retry can land on another GPU
    model). A saved precision this device cannot run is refused naming the setting, never half-resumed."""
    now = resolve_precision(cfg.train.precision, ctx.device)
    if not saved or not saved.get("computed"):
        return now
    then = saved["computed"][-1]["precision"]
    if then == short_name(now):
        return now
    if then == "bf16" and not bf16_available(ctx.device):
        raise CheckpointError(
            f"{cfg.files.checkpoint} trained in bf16 up to iteration {saved['iteration']} (train.precision: "
            f"{cfg.train.precision}), and this {ctx.device.type} device has no bf16; resuming in "
            f"{short_name(now)} would change the recipe mid-run. Resume on a GPU with bf16 (Ampere or newer), or "
            f"delete {Path(cfg.files.checkpoint).parent} to train {cfg.run_name} from the start in {short_name(now)}")
    if ctx.is_main:
        print(f"resuming in {then}, as the checkpoint was trained (train.precision: {cfg.train.precision} would "
              f"choose {short_name(now)} on this device)", flush=True)
    return of_name(then)


def held_micro_batch(cfg: CellConfig, ctx: Context, saved: dict[str, Any]) -> int:
    """Resuming: the micro-batch that gives the checkpoint's images per BatchNorm statistic on this job's
    processes, so the statistics stay those of the run so far. Refused, naming the setting, where this many
    GPUs cannot give them (the share per process is too small, or does not divide)."""
    then = saved["computed"][-1]
    processes = batchnorm_images(1, ctx)
    share = cfg.share(ctx.world)
    micro, rest = divmod(then["batchnorm_images"], processes)
    if rest or not 0 < micro <= share or share % micro:
        raise CheckpointError(
            f"{cfg.files.checkpoint} trained with {then['batchnorm_images']} images per BatchNorm statistic (micro-"
            f"batch {then['micro_batch']} on {then['processes']} process(es)); {ctx.world} process(es) with "
            f"{share} images each cannot give that. Set params/cells.yaml {cfg.cell.id}.gpus back to "
            f"{then['processes']} to resume, or delete {Path(cfg.files.checkpoint).parent} to train from the start")
    if micro != then["micro_batch"] and ctx.is_main:
        print(f"resuming with a micro-batch of {micro} on {ctx.world} process(es): {then['batchnorm_images']} images "
              "per BatchNorm statistic, as the checkpoint trained", flush=True)
    return micro


def note_computing(state: State, ctx: Context, dtype: torch.dtype | None) -> None:
    """Append how the run computes from this iteration on (precision, micro-batch, images per BatchNorm
    statistic, processes) to ``state.computed`` when it differs from the last entry, and say so."""
    entry = {"iteration": state.iteration, "precision": short_name(dtype), "micro_batch": state.micro_batch,
             "batchnorm_images": batchnorm_images(state.micro_batch, ctx), "processes": ctx.world}
    last = state.computed[-1] if state.computed else None
    if last is None or {k: v for k, v in last.items() if k != "iteration"} != \
            {k: v for k, v in entry.items() if k != "iteration"}:
        state.computed.append(entry)
        if ctx.is_main:
            print(f"computing from iteration {state.iteration}: {entry['precision']}, micro-batch "
                  f"{entry['micro_batch']}, {entry['batchnorm_images']} images per BatchNorm statistic, "
                  f"{entry['processes']} process(es)", flush=True)


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
                note_computing(state, ctx, dtype)  # the statistics change here: on record, with the iteration
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


def save_final(model: nn.Module, cfg: CellConfig, path: Path, iteration: int, data_hash: str = "",
               computed: list[dict[str, Any]] | None = None) -> None:
    """``model.pt``: the trained weights (``state_dict``) and what they are (the training record, the data's
    identity, how it computed); written last, atomically."""
    atomic_save({"state_dict": model.state_dict(), "cell": cfg.cell.id, "digest": cfg.training_digest(),
                 "training": cfg.record(TRAINING), "config": cfg.to_dict(), "iteration": iteration,
                 "data_hash": data_hash, "computed": computed or []}, path)


def train(cfg: CellConfig, ctx: Context, *, max_iters: int, weights: str | Path | None = None, start: str | Path | None = None,
          on_metrics: Logger = lambda m, s: None, on_validate: Callable[[nn.Module, int], None] = lambda model, it: None,
          memory: Memory | None = None, stop_reason: Callable[[], str | None] = lambda: None,
          on_computing: Callable[[list[dict[str, Any]]], None] = lambda computed: None) -> Path:
    """Train one run into its files (``cfg.files``, from the prepared data at ``cfg.prepared_dir``), resuming
    from its checkpoint if present; return the path of the final model. ``on_metrics`` / ``on_validate`` are called on every rank at log / val points. The caller
    holds the cell's lock (:func:`cell_lock`), so no second copy writes the same files. ``weights``: the
    backbone's ImageNet checkpoint; ``start``: instead, another cell's model.pt to fine-tune from.
    ``on_computing`` gets how the run computes (:func:`note_computing`'s entries) once it has started."""
    files = cfg.files
    checkpoint = Path(files.checkpoint)
    data_hash = manifest_hash(cfg.prepared_dir, cfg.data.train_split)
    saved = read_checkpoint(checkpoint, cfg, data_hash)
    dtype = held_precision(cfg, ctx, saved)
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
                  torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16), data_hash=data_hash)
    if saved is not None:
        restore(state, saved)
        if ctx.is_main:
            print(f"resuming from {checkpoint} at iteration {state.iteration} of {max_iters}", flush=True)
    if ctx.distributed:
        state.model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda"
                                              else None)
    if cfg.train.compile != "off":  # the training step only: evaluation sees other image sizes
        state.model = torch.compile(state.model, backend=cfg.train.compile)
    log = TrainLog(Path(files.train_log), enabled=ctx.is_main)
    log.open(state.iteration)
    state.model.train()
    state.micro_batch = held_micro_batch(cfg, ctx, saved) if state.computed else \
        micro_batch_for(cfg, ctx, state.bare_model(), dtype, memory)
    note_computing(state, ctx, dtype)
    on_computing(state.computed)
    run_iterations(state, lambda start, micro: make_loader(cfg, ctx, start, max_iters, micro), cfg, ctx,
                   max_iters, checkpoint, log, on_metrics, lambda it: _validate(state, on_validate, it), dtype,
                   stop_reason)
    on_computing(state.computed)  # again: an out-of-memory retry may have changed it
    final = Path(files.model)
    if ctx.is_main:
        save_final(state.bare_model(), cfg, final, state.iteration, data_hash, state.computed)
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
