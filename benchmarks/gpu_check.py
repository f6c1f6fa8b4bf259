"""GPU check: what one machine gives this recipe, measured within a time budget, without any dataset.

    make gpu-check                                                          # python benchmarks/gpu_check.py --out gpu_check.md
    PYTHONPATH=. python3 benchmarks/gpu_check.py --budget-s 450 --out DIR/   # DIR/gpu_check.md; torch,
                                                                            # torchvision, numpy, pyyaml, pandas, pillow only
    python benchmarks/gpu_check.py --quick --budget-s 60                    # fewer shapes, steps and samples

The report opens with the machine (GPU model, memory, driver, CUDA, cuDNN, CPU cores) and the dense bf16
matrix rate measured in the same run, so no number is filed under the wrong machine (an H200 has an H100's
compute and 1.4x its memory bandwidth). Then, each section written to ``--out`` as soon as it is done (and
each row as it is measured, so a stopped run still leaves a report):

1. the training step per cell shape (R50/R101 x OS8/16 at 512x512, the VOC and ADE20k crop, and at
   512x1024, Cityscapes'), at the recipe's training precision and memory format, the optimiser, the aux
   weight and the per-GPU share all from params/: the micro-batch the stored memory plan chooses for this
   GPU and the one auto-fit picks, images/s, achieved TFLOP/s (3 x the forward FLOPs as the model trains,
   aux head included), the fraction of the measured matrix rate and of the datasheet's dense bf16 peak, and
   the peak memory against the plan's prediction;
2. a short training on synthetic shapes whose loss must fall;
3. evaluation at each dataset's test size, single-scale and multi-scale + flip (params/evaluate.yaml), at
   the configured precision (evaluate.precision, fp32 with TF32 off: what the table reports) and in bf16
   beside it, labelled: images/s, and the peak memory of the plan's largest pass against its prediction;
4. the loader of each dataset at its real image sizes (benchmarks/input_pipeline.py's chain), per worker
   with a warm and a cold page cache (each file dropped with posix_fadvise before its read) and with every
   core at once, cold, and the workers each cell needs against this machine's cores per GPU;
5. GPU-hours per cell from the measured step (iterations x seconds per iteration, plus the evaluation),
   beside README's estimate;
6. with two or more GPUs, a DDP + NCCL + SyncBatchNorm step;
7. torch.compile of the whole training step: equal outputs and the speed ratio.

``--budget-s`` bounds the whole run: a section whose estimate would overrun what is left is skipped, and a
section that overruns is stopped where it is (its rows so far are kept); the report says which. A section
that fails says so in one line and the next one runs.

Without CUDA it runs on the CPU at tiny sizes, so the script is known to work before anyone pays for a
GPU; its report then says in its first line that the numbers are not a GPU's.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # input_pipeline, the loader benchmark
from deeplab import plan  # noqa: E402
from deeplab.autofit import CudaMemory, choose  # noqa: E402
from deeplab.budget import PEAK_BF16_TFLOPS, estimated_gpu_hours, training_images  # noqa: E402
from deeplab.config import CellConfig, load_params  # noqa: E402
from deeplab.evaluate import SINGLE_SCALE, InputSpec, Protocol, multi_scale, predict  # noqa: E402
from deeplab.losses import criterion  # noqa: E402
from deeplab.memory import GIB, ModelShape, largest_fitting, predict_step, predicted_line  # noqa: E402
from deeplab.model import AUX_GFLOPS_512, FORWARD_GFLOPS_512, build_model, convert_sync_batchnorm  # noqa: E402
from deeplab.precision import configure_backends, precision_name, resolve_precision  # noqa: E402
from deeplab.schedule import build_optimizer  # noqa: E402

PARAMS = load_params(ROOT / "params")
PLAN = plan.read(ROOT / PARAMS.preset("full").paths.memory_plan())
VARIANTS = [("r50", 8), ("r50", 16), ("r101", 8), ("r101", 16)]
# one cell per crop shape: VOC's stands for ADE20k too (same crop; only the 150-class classifier differs)
SHAPE_DATASETS = ("voc", "cityscapes")
TYPICAL_IMAGE = {"voc": (375, 500), "ade20k": (512, 683), "cityscapes": (1024, 2048)}  # (h, w) of a val image
DATASHEET = {"H100": PEAK_BF16_TFLOPS["H100"], "H200": PEAK_BF16_TFLOPS["H100"]}  # dense bf16, TFLOP/s


class BudgetSpent(Exception):
    """The run's --budget-s ran out inside a section."""


@dataclasses.dataclass
class Setup:
    device: torch.device
    scale: float       # crop sides relative to the recipe's (1 on a GPU; tiny on the CPU)
    steps: int         # timed steps per measurement
    train_iters: int   # iterations of the short training run
    gpu: bool
    quick: bool = False  # two variants only

    @property
    def variants(self) -> list[tuple[str, int]]:
        return [("r50", 16), ("r101", 8)] if self.quick else VARIANTS

    @property
    def datasets(self) -> tuple[str, ...]:
        return ("voc",) if self.quick and not self.gpu else SHAPE_DATASETS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cell_config(dataset: str, backbone: str, stride: int, scale: float = 1.0) -> CellConfig:
    """The full preset's cell, with its crop scaled by ``scale`` (the CPU's tiny sizes)."""
    cfg = PARAMS.resolve(f"{dataset}-{backbone}-os{stride}")
    crop = tuple(max(32, int(side * scale) // 32 * 32) for side in cfg.data.crop_size)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop_size=crop))


def training_dtype(cfg: CellConfig, device: torch.device) -> torch.dtype | None:
    return resolve_precision(cfg.train.precision, device)


def step_rate(cfg: CellConfig, setup: Setup, micro: int, compiled: bool = False) -> tuple[float, float]:
    """(images/s, peak GiB) of training steps of ``micro`` images (the fastest of the timed steps), with
    the recipe's optimiser, loss weights, precision and memory format."""
    dtype = training_dtype(cfg, setup.device)
    configure_backends(dtype)
    model = build_model(cfg, setup.device).train()
    optimizer = build_optimizer(model, cfg.train)
    h, w = cfg.data.crop_size
    images = torch.randn(micro, 3, h, w, device=setup.device)
    images = images.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else images
    labels = torch.randint(0, cfg.data.num_classes, (micro, h, w), device=setup.device)

    def step() -> None:  # the whole training step: forward, loss, backward, SGD
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = model(images)
        criterion(outputs, labels, aux_weight=cfg.train.aux_weight)["loss"].backward()
        optimizer.step()
    run = torch.compile(step) if compiled else step
    if setup.gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setup.device)
    best = math.inf
    for k in range(setup.steps + 2):  # two warm-up steps (cuDNN autotuning, compilation)
        sync(setup.device)
        started = time.perf_counter()
        run()
        sync(setup.device)
        if k >= 2:
            best = min(best, time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(setup.device) / GIB if setup.gpu else float("nan")
    del model, optimizer, images, labels
    return micro / best, peak


def matmul_tflops(setup: Setup) -> float:
    """Dense bf16 matrix rate measured here (8192^3 on a GPU): the ceiling achieved TFLOP/s is read against."""
    n = 8192 if setup.gpu else 512
    a = torch.randn(n, n, device=setup.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=setup.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(setup.device)
    repeats = 20 if setup.gpu else 3
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(setup.device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - started) / 1e12


def datasheet_peak() -> float | None:
    """The datasheet's dense bf16 TFLOP/s of this GPU, where deeplab.budget knows it."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_properties(0).name
    return next((peak for key, peak in DATASHEET.items() if key in name), None)


def plan_entry(cfg: CellConfig, precision: str) -> dict | None:
    """The stored memory plan's entry of this cell at ``precision`` when it was predicted for these settings
    (under whichever torch: the GPU machine's may not be the lock's, and the plan is what README shows)."""
    entry = (PLAN or {}).get("entries", {}).get(f"{cfg.cell.id}/{precision}")
    wanted = plan.entry_key(ModelShape.of(cfg, precision))
    if entry is None or {**entry.get("key", {}), "torch": wanted["torch"]} != wanted:
        return None
    return entry


def training_rows(setup: Setup, found: dict) -> Iterator[str]:
    """One row per cell shape; ``found["step"]`` gets (dataset, backbone, stride) -> images/s."""
    found["step"], matrix, sheet = {}, found["matrix_tflops"], datasheet_peak()
    yield ("| cell shape | crop | precision | share | micro-batch: plan / auto-fit | images/s | TFLOP/s (aux counted) "
           f"| of the measured {matrix:.0f} TFLOP/s | of the datasheet's {sheet or '-'} | peak GiB measured | "
           "peak GiB predicted | error |")
    yield "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for dataset in setup.datasets:
        for backbone, stride in setup.variants:
            cfg = cell_config(dataset, backbone, stride, setup.scale)
            dtype = training_dtype(cfg, setup.device)
            precision = "bf16" if dtype == torch.bfloat16 else "fp16" if dtype == torch.float16 else "fp32"
            share = cfg.share()
            entry = plan_entry(cfg, precision) if setup.gpu else None
            line = plan.line_of(entry) if entry else predicted_line(ModelShape.of(cfg, precision), cfg.train)
            planned, micro = "-", min(share, 2)  # the CPU: two images, enough to show the script works
            if setup.gpu:
                gib = torch.cuda.get_device_properties(setup.device).total_memory / GIB
                planned = str(largest_fitting(line, share, gib) or "none")
                model = build_model(cfg, setup.device)
                micro = choose(share, CudaMemory(model, cfg, setup.device, dtype), line, log=lambda text: None)
                del model
                torch.cuda.empty_cache()
            rate, peak = step_rate(cfg, setup, micro)
            found["step"][(dataset, backbone, stride)] = rate
            h, w = cfg.data.crop_size
            gflops = (FORWARD_GFLOPS_512[(backbone, stride)] + AUX_GFLOPS_512[stride]) * h * w / 512 ** 2
            tflops = rate * 3 * gflops / 1e3
            predicted = (plan.at_share(entry, micro).total if entry
                         else predict_step(ModelShape.of(cfg, precision), micro, cfg.train).total) / GIB
            error = f"{(predicted - peak) / peak:+.1%}" if peak == peak else "-"
            yield (f"| {backbone}-os{stride} ({dataset}) | {h}x{w} | {precision_name(dtype)}"
                   f"{', channels-last' if cfg.train.channels_last else ''} | {share} | {planned} / {micro} | "
                   f"{rate:.1f} | {tflops:.2f} | {tflops / matrix:.1%} | "
                   f"{f'{tflops / sheet:.1%}' if sheet else '-'} | {peak:.2f} | {predicted:.2f} | {error} |")


def short_training(setup: Setup, found: dict) -> Iterator[str]:
    """Iterations on synthetic shapes whose colour tells the class: the loss must fall."""
    cfg = cell_config("voc", "r50", 16, setup.scale)
    dtype = training_dtype(cfg, setup.device)
    configure_backends(dtype)
    torch.manual_seed(0)
    model = build_model(cfg, setup.device).train()
    optimizer = build_optimizer(model, cfg.train)
    gen = torch.Generator(device="cpu").manual_seed(0)
    colours = torch.rand(cfg.data.num_classes, 3, generator=gen) * 4 - 2
    size, images = cfg.data.crop_size[0], 8 if setup.gpu else 2
    losses = []
    for _ in range(setup.train_iters):
        labels = torch.zeros(images, size, size, dtype=torch.long)
        for n in range(images):
            k, top, left = (int(v) for v in torch.randint(1, cfg.data.num_classes, (3,), generator=gen))
            side = size // 2
            labels[n, top % side:top % side + side, left % side:left % side + side] = k
        batch = colours[labels].permute(0, 3, 1, 2).contiguous() + 0.3 * torch.randn(images, 3, size, size, generator=gen)
        batch, labels = batch.to(setup.device), labels.to(setup.device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = model(batch.contiguous(memory_format=torch.channels_last))
        loss = criterion(outputs, labels, aux_weight=cfg.train.aux_weight)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    verdict = "falls" if last < 0.7 * first else "does NOT fall enough"
    yield (f"{setup.train_iters} iterations of {images} images at {size}x{size} (r50-os16, lr {cfg.train.lr}): "
           f"loss {first:.3f} (first 5) -> {last:.3f} (last 5): {verdict}")


def evaluation_rate(model: torch.nn.Module, image: torch.Tensor, protocol: Protocol, spec: InputSpec,
                    setup: Setup, count: int) -> tuple[float, float]:
    """(images/s, peak GiB) of ``count`` predictions of ``image`` after one warm-up."""
    predict(model, image, protocol, spec)
    sync(setup.device)
    if setup.gpu:
        torch.cuda.reset_peak_memory_stats(setup.device)
    started = time.perf_counter()
    for _ in range(count):
        predict(model, image, protocol, spec)
    sync(setup.device)
    peak = torch.cuda.max_memory_allocated(setup.device) / GIB if setup.gpu else float("nan")
    return count / (time.perf_counter() - started), peak


def evaluation_rows(setup: Setup, found: dict) -> Iterator[str]:
    """Per dataset at its test size, r50-os16 and r101-os8 (the lightest and the heaviest stride per depth),
    each protocol at the configured precision and in bf16; ``found["eval"]`` gets (dataset, backbone, stride)
    -> single-scale images/s at the configured precision."""
    found["eval"] = {}
    configured = PARAMS.evaluate.precision
    yield ("| cell | image (h x w) | protocol | precision | images/s | peak GiB, typical image | plan's largest pass "
           "| its peak GiB measured | predicted | error |")
    yield "|---|---|---|---|--:|--:|---|--:|--:|--:|"
    datasets = ("voc", "ade20k", "cityscapes") if setup.gpu or not setup.quick else ("voc",)
    for dataset in datasets:
        for backbone, stride in (("r50", 16), ("r101", 8)):
            cfg = PARAMS.resolve(f"{dataset}-{backbone}-os{stride}")
            model = build_model(cfg, setup.device).eval()
            h, w = TYPICAL_IMAGE[dataset] if setup.gpu else (48, 64)
            image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=setup.device)
            passes = plan.evaluation_passes(cfg)
            peaks = plan.evaluation_peaks(PLAN, cfg.cell.id) if PLAN and setup.gpu else {}
            for protocol in (SINGLE_SCALE, multi_scale(cfg.evaluate)):
                if not setup.gpu and protocol is not SINGLE_SCALE and setup.quick:
                    continue
                for precision in dict.fromkeys((configured, "bf16")):
                    dtype = resolve_precision(precision, setup.device)
                    configure_backends(dtype)
                    scale = cfg.data.eval_scale if setup.gpu else ((256, 64) if cfg.data.eval_scale else None)
                    spec = InputSpec(scale, cfg.train.mean, cfg.train.std, dtype, cfg.train.channels_last)
                    count = (3 if protocol is SINGLE_SCALE else 1) * (1 if not setup.gpu else 2)
                    rate, peak = evaluation_rate(model, image, protocol, spec, setup, count)
                    if precision == configured and protocol is SINGLE_SCALE:
                        found["eval"][(dataset, backbone, stride)] = rate
                    largest = passes.get(protocol.name)
                    measured = predicted = error = "-"
                    if setup.gpu and largest and precision == configured and protocol.name in peaks:
                        big = torch.randint(0, 256, (3, *largest["image"]), dtype=torch.uint8, device=setup.device)
                        _, worst = evaluation_rate(model, big, protocol, spec, setup, 1)
                        measured, predicted = f"{worst:.2f}", f"{peaks[protocol.name] / GIB:.2f}"
                        error = f"{(peaks[protocol.name] / GIB - worst) / worst:+.1%}"
                    where = f"{largest['image'][0]}x{largest['image'][1]}" if largest else "-"
                    yield (f"| {cfg.cell.id} | {h}x{w} | {protocol.name} | {precision_name(dtype)}"
                           f"{'' if precision == configured else ' (not the table: beside it)'} | {rate:.2f} | "
                           f"{peak:.2f} | {where} | {measured} | {predicted} | {error} |")
            del model
            if setup.gpu:
                torch.cuda.empty_cache()


def loader_rows(setup: Setup, found: dict) -> Iterator[str]:
    """Samples/s per loader worker of each dataset at its real sizes (the training chain as it is), warm and
    cold, and with every core at once (cold); the workers each cell needs per GPU at this machine's measured
    training step, against its cores per GPU."""
    import input_pipeline
    samples, batch = (8, 4) if setup.quick else (32, 8)
    cores = os.cpu_count() or 1
    gpus = max(torch.cuda.device_count(), 1) if setup.gpu else 1
    per_worker: dict[str, tuple[float, float, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker runs single-threaded
    yield input_pipeline.cache_drop_line()
    yield ""
    yield f"| dataset | samples/s per worker, warm | cold | all {cores} cores at once, cold |"
    yield "|---|--:|--:|--:|"
    try:
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # on a disk (not tmpfs), where a dropped page is re-read
            for dataset in ("voc", "ade20k", "cityscapes"):
                folder = input_pipeline.write_dataset(Path(tmp) / dataset, dataset, 4 if setup.quick else 16)
                os.sync()
                warm = input_pipeline.chain_rate(dataset, folder, samples, batch, cold=False)[1]
                cold = input_pipeline.chain_rate(dataset, folder, samples, batch, cold=True)[1]
                jobs = [(dataset, str(folder), samples, batch, True, k * samples) for k in range(cores)]
                started = time.perf_counter()
                with multiprocessing.get_context("fork").Pool(cores) as pool:
                    done = sum(n for n, _ in pool.map(input_pipeline.chain_rate_job, jobs))
                together = done / (time.perf_counter() - started)
                per_worker[dataset] = (warm, cold, together)
                yield f"| {dataset} | {warm:.1f} | {cold:.1f} | {together:.0f} |"
    finally:
        torch.set_num_threads(threads)
    found["loader"] = per_worker
    yield ""
    yield (f"Workers per GPU = 2 x the measured training step's images/s / the cold samples/s per worker; this "
           f"machine has {cores // gpus} CPU cores per GPU ({cores} cores, {gpus} GPU(s)).")
    yield ""
    yield "| cell | images/s (measured step) | workers needed (cold) | warm | fits the cores |"
    yield "|---|--:|--:|--:|---|"
    for cell_id, cell in PARAMS.paper().cells.items():
        shape = "voc" if cell.dataset == "ade20k" else cell.dataset
        rate = found.get("step", {}).get((shape, cell.backbone, cell.output_stride))
        if rate is None:
            continue
        warm, cold, _ = per_worker[cell.dataset]
        need, warm_need = 2 * rate / cold, 2 * rate / warm
        yield (f"| {cell_id} | {rate:.3g} | {need:.3g} | {warm_need:.3g} | "
               f"{'yes' if math.ceil(need) < cores // gpus else 'no'} |")


def _ddp_worker(rank: int, world: int, port: int, result: dict) -> None:  # pragma: no cover (GPU only)
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    cfg = cell_config("voc", "r50", 16)
    model = torch.nn.parallel.DistributedDataParallel(convert_sync_batchnorm(build_model(cfg, device)), device_ids=[rank])
    images = torch.randn(4, 3, 512, 512, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (4, 512, 512), device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images)
    criterion(outputs, labels, aux_weight=cfg.train.aux_weight)["loss"].backward()
    grad = next(model.parameters()).grad.detach().clone()
    dist.all_reduce(grad, op=dist.ReduceOp.MAX)
    same = torch.equal(grad, next(model.parameters()).grad)
    if rank == 0:
        result["ok"] = same
    dist.destroy_process_group()


def ddp_rows(setup: Setup, found: dict) -> Iterator[str]:
    if not setup.gpu or torch.cuda.device_count() < 2:
        yield f"skipped: {torch.cuda.device_count() if setup.gpu else 0} GPU(s) here, a DDP step needs 2"
        return
    import torch.multiprocessing as mp
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_ddp_worker, args=(2, 29517, result), nprocs=2, join=True)
    yield f"2 GPUs, NCCL, SyncBatchNorm: one step ran, gradients equal on both ranks: {result.get('ok')}"


def compile_rows(setup: Setup, found: dict) -> Iterator[str]:
    """torch.compile of the whole training step (forward, loss, backward, SGD step) against eager: the same
    outputs (fp32, TF32 off, eval mode: one forward of the same weights) and the speed of the bf16 step."""
    if not setup.gpu:
        yield "skipped on the CPU (inductor's C++ build takes minutes on 2 cores; equality is tested on CPU)"
        return
    cfg = cell_config("voc", "r50", 16)
    configure_backends(None)
    torch.manual_seed(0)
    model = build_model(cfg, setup.device).eval()
    image = torch.randn(2, 3, 512, 512, device=setup.device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager_out = model(image)["out"]
        compiled_out = torch.compile(model)(image)["out"]
    difference = (compiled_out - eager_out).abs().max().item() / eager_out.abs().max().item()
    same = (compiled_out.argmax(1) == eager_out.argmax(1)).float().mean().item()
    yield (f"outputs, r50-os16 fp32 forward: largest difference {difference:.2e} of the largest logit; "
           f"{same:.4%} of the pixels predict the same class")
    del model, eager_out, compiled_out
    micro = cfg.share()
    eager, _ = step_rate(cfg, setup, micro)
    started = time.perf_counter()
    compiled, _ = step_rate(cfg, setup, micro, compiled=True)
    yield (f"speed, r50-os16 {precision_name(training_dtype(cfg, setup.device))} step of {micro} images: eager "
           f"{eager:.1f} images/s, compiled {compiled:.1f} (x{compiled / eager:.2f}); compiling and timing took "
           f"{time.perf_counter() - started:.0f} s")


def hours_rows(setup: Setup, found: dict) -> Iterator[str]:
    """GPU-hours per cell from the measured step: the schedule's images / images per second (one GPU: its
    whole global batch, by gradient accumulation where the micro-batch is smaller), plus the single-scale
    evaluation of the val split at the configured precision; beside README's estimate."""
    if not setup.gpu:
        yield "skipped on the CPU: hours of tiny crops say nothing about a GPU's"
        return
    yield ("| cell | training images | images/s (measured) | training GPU-hours | evaluation GPU-hours | "
           "measured total | README's estimate (H100, 12 % of peak) |")
    yield "|---|--:|--:|--:|--:|--:|--:|"
    total, estimate = 0.0, 0.0
    for cell_id, cell in PARAMS.paper().cells.items():
        shape = "voc" if cell.dataset == "ade20k" else cell.dataset
        rate = found.get("step", {}).get((shape, cell.backbone, cell.output_stride))
        if rate is None:
            continue
        cfg = PARAMS.resolve(cell_id)
        images = training_images(cfg)
        evaluation = found.get("eval", {}).get((cell.dataset, cell.backbone, cell.output_stride)) or \
            next((r for (d, b, s), r in found.get("eval", {}).items() if d == cell.dataset and s == cell.output_stride), None)
        eval_hours = cfg.data.expected_counts["val"] / evaluation / 3600 if evaluation else float("nan")
        train_hours = images / rate / 3600
        guess = estimated_gpu_hours(cfg, "H100")
        total += train_hours + (eval_hours if eval_hours == eval_hours else 0)
        estimate += guess
        yield (f"| {cell_id} | {images:,} | {rate:.1f} | {train_hours:.1f} | {eval_hours:.2f} | "
               f"{train_hours + (eval_hours if eval_hours == eval_hours else 0):.1f} | {guess:.1f} |")
    yield f"| all | | | | | {total:.0f} | {estimate:.0f} |"


def machine_lines(setup: Setup, found: dict) -> list[str]:
    """What the numbers were measured on: the first lines of the report."""
    from deeplab.device import nvml_state
    from deeplab.environment import _cpu_model
    cpu = f"{os.cpu_count()} CPU cores ({_cpu_model()})"
    software = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    found["matrix_tflops"] = matmul_tflops(setup)
    rate = f"dense bf16 matrix rate measured here: {found['matrix_tflops']:.1f} TFLOP/s"
    if not setup.gpu:
        return ["**Not a GPU result: no CUDA device, tiny sizes on the CPU, to show that the script works.**", "",
                f"Machine: {cpu}, no GPU; {software}; {rate}.", ""]
    properties = torch.cuda.get_device_properties(setup.device)
    driver, _, error = nvml_state()
    return [f"Machine: {torch.cuda.device_count()} x {properties.name}, {properties.total_memory / GIB:.1f} GiB, "
            f"compute capability {properties.major}.{properties.minor}, driver {driver or f'unknown ({error})'}; "
            f"{cpu}; {software}, cuDNN {torch.backends.cudnn.version()}; {rate}.", ""]


Section = tuple[str, float, Callable[[Setup, dict], Iterator[str]]]


def all_sections(setup: Setup) -> list[Section]:
    """(heading, estimated seconds, rows) in the order they run: the most telling first, compile last."""
    gpu = setup.gpu
    return [
        ("Training step per cell shape", 120 if gpu else 40, training_rows),
        ("Training run", 15 if gpu else 10, short_training),
        ("Evaluation", 90 if gpu else 5, evaluation_rows),
        ("Input pipeline (real image sizes)", 40 if setup.quick else 75, loader_rows),
        ("GPU-hours per cell", 1, hours_rows),
        ("DDP", 40 if gpu and torch.cuda.device_count() > 1 else 1, ddp_rows),
        ("torch.compile", 150 if gpu else 1, compile_rows),
    ]


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`BudgetSpent` in the main thread once ``seconds`` have passed (None: never)."""
    if seconds is None:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise BudgetSpent()
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def report(setup: Setup, budget_s: float | None, write: Callable[[str], None] = lambda text: None,
           sections: list[Section] | None = None) -> str:
    """The report; ``write`` gets the whole text so far after each row. ``sections``: those of the check."""
    started = time.perf_counter()
    found: dict = {}
    lines = machine_lines(setup, found)
    for heading, estimate, rows in all_sections(setup) if sections is None else sections:
        left = None if budget_s is None else budget_s - (time.perf_counter() - started)
        lines.append(f"### {heading}\n")
        if left is not None and estimate > left:
            lines += [f"skipped: about {estimate:.0f} s expected, {max(left, 0):.0f} s of the {budget_s:.0f} s budget "
                      "left (--budget-s)", ""]
            write("\n".join(lines) + "\n")
            continue
        section_started = time.perf_counter()
        try:
            with deadline(left):
                for row in rows(setup, found):
                    lines.append(row)
                    write("\n".join(lines) + "\n")
            lines += ["", f"({time.perf_counter() - section_started:.0f} s)", ""]
        except BudgetSpent:
            lines += ["", f"stopped after {time.perf_counter() - section_started:.0f} s: the {budget_s:.0f} s budget "
                          "ran out inside this section (--budget-s); the rows above were measured", ""]
        except Exception as error:  # one broken section must not cost the others their numbers
            where = traceback.extract_tb(error.__traceback__)[-1]
            lines += ["", f"failed after {time.perf_counter() - section_started:.0f} s: {type(error).__name__}: "
                          f"{str(error)[:300]} ({Path(where.filename).name}:{where.lineno}); the rows above were measured", ""]
        write("\n".join(lines) + "\n")
    lines.append(f"Report made in {time.perf_counter() - started:.0f} s"
                 + (f" of a {budget_s:.0f} s budget." if budget_s is not None else "."))
    text = "\n".join(lines) + "\n"
    write(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the report to this file (a folder: its gpu_check.md), row by row")
    parser.add_argument("--quick", action="store_true", help="two variants, fewer steps and loader samples")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="the whole run's seconds: a section that would overrun is skipped, one that does is stopped")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    setup = Setup(torch.device("cuda" if gpu else "cpu"), scale=1.0 if gpu else 1 / 8,
                  steps=(2 if args.quick else 4) if gpu else 1 if args.quick else 2,
                  train_iters=(20 if args.quick else 40) if gpu else 30, gpu=gpu, quick=args.quick)
    if args.out and (args.out.is_dir() or str(args.out).endswith("/")):
        args.out = args.out / "gpu_check.md"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(text: str) -> None:
        if args.out:
            args.out.write_text(text)
    print(report(setup, args.budget_s, write))


if __name__ == "__main__":
    main()
