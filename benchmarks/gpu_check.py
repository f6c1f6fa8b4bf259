"""GPU check: what one machine gives this recipe, measured within a time budget, without any dataset.

    make gpu-check                                                # python benchmarks/gpu_check.py --out gpu_check.md
    PYTHONPATH=. python3 benchmarks/gpu_check.py --budget-s 480   # torch, torchvision, pyyaml, pandas, pillow only
    python benchmarks/gpu_check.py --quick --budget-s 60          # fewer variants and steps

The report opens with the machine (GPU model, memory, driver, CUDA, cuDNN, CPU cores), so no number is filed
under the wrong machine (an H200 has an H100's compute and 1.4x its memory bandwidth). Then, most telling
first, each section written to ``--out`` as soon as it is done (a stopped run still leaves a report): per
backbone x output stride at the recipe's 512x512 crop, the training step (bf16 autocast + channels-last, and
fp32 with TF32 off as the reference trains) in images/s and achieved TFLOP/s (3 x the forward FLOPs as the
model trains, aux head included), its peak memory measured against the fake-tensor prediction
(deeplab.memory), and the micro-batch auto-fit picks; a short training on synthetic shapes whose loss must
fall; evaluation images/s at the recipe's test sizes; the loader of each dataset at its real image sizes
(benchmarks/input_pipeline.py) and the workers each cell needs against this machine's cores per GPU; with two
or more GPUs, a DDP + NCCL + SyncBatchNorm step; last, torch.compile of the whole training step (forward,
loss, backward, SGD) against eager, which can take minutes to compile. A section whose estimate would
overrun ``--budget-s`` is skipped, and the report says so.

Without CUDA it runs on the CPU at tiny sizes, so the script is known to work before anyone pays for a
GPU; its report then says in its first line that the numbers are not a GPU's.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # input_pipeline, the loader benchmark
from deeplab.autofit import CudaMemory, choose  # noqa: E402
from deeplab.config import CellConfig, load_params  # noqa: E402
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict  # noqa: E402
from deeplab.losses import criterion  # noqa: E402
from deeplab.memory import GIB, ModelShape, predict_step, predicted_line  # noqa: E402
from deeplab.model import AUX_GFLOPS_512, FORWARD_GFLOPS_512, build_model, convert_sync_batchnorm  # noqa: E402
from deeplab.precision import configure_backends  # noqa: E402

PARAMS = load_params(Path(__file__).resolve().parent.parent / "params")
VARIANTS = [("r50", 8), ("r50", 16), ("r101", 8), ("r101", 16)]


@dataclasses.dataclass
class Setup:
    device: torch.device
    size: int          # training crop side
    images: int        # images per training step (the per-GPU share, or what fits)
    steps: int         # timed steps per measurement
    train_iters: int   # iterations of the short training run
    gpu: bool
    quick: bool = False  # two variants only

    @property
    def variants(self) -> list[tuple[str, int]]:
        return [("r50", 16), ("r101", 8)] if self.quick else VARIANTS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(backbone: str, stride: int, size: int, precision: str) -> CellConfig:
    cfg = PARAMS.resolve(f"voc-{backbone}-os{stride}")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop_size=(size, size)),
                               train=dataclasses.replace(cfg.train, precision=precision))


def step_rate(cfg: CellConfig, setup: Setup, micro: int, compiled: bool = False) -> tuple[float, float]:
    """(images/s, peak GiB) of training steps of ``micro`` images (the fastest of the timed steps)."""
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    configure_backends(dtype)
    model = build_model(cfg, setup.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(micro, 3, setup.size, setup.size, device=setup.device)
    images = images.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else images
    labels = torch.randint(0, 21, (micro, setup.size, setup.size), device=setup.device)

    def step() -> None:  # the whole training step: forward, loss, backward, SGD
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = model(images)
        criterion(outputs, labels, aux_weight=0.4)["loss"].backward()
        optimizer.step()
    run = torch.compile(step) if compiled else step
    if setup.gpu:
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
    return micro / best, peak


def training_rows(setup: Setup) -> tuple[list[str], dict[tuple[str, int], float]]:
    rows, consumption = [], {}
    for backbone, stride in setup.variants:
        for precision, label in (("bf16", "bf16 + channels-last"), ("fp32", "fp32, TF32 off")):
            cfg = config(backbone, stride, setup.size, precision)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=precision == "bf16"))
            micro = setup.images
            if setup.gpu:
                dtype = torch.bfloat16 if precision == "bf16" else None
                model = build_model(cfg, setup.device)
                micro = choose(setup.images, CudaMemory(model, cfg, setup.device, dtype),
                               predicted_line(ModelShape.of(cfg, precision), cfg.train), log=lambda line: None)
                del model
                torch.cuda.empty_cache()
            rate, peak = step_rate(cfg, setup, micro)
            training_gflops = FORWARD_GFLOPS_512[(backbone, stride)] + AUX_GFLOPS_512[stride]  # the model as it trains
            predicted = predict_step(ModelShape.of(cfg, precision), micro, cfg.train).total / GIB
            tflops = rate * 3 * training_gflops * (setup.size / 512) ** 2 / 1e3
            if precision == "bf16":
                consumption[(backbone, stride)] = rate
            rows.append(f"| {backbone}-os{stride} | {label} | {micro} | {rate:.1f} | {tflops:.2f} | "
                        f"{peak:.2f} | {predicted:.2f} |")
    return rows, consumption


def short_training(setup: Setup) -> str:
    """Iterations on synthetic shapes whose colour tells the class: the loss must fall."""
    cfg = config("r50", 16, setup.size, "bf16" if setup.gpu else "fp32")
    dtype = torch.bfloat16 if setup.gpu else None
    configure_backends(dtype)
    torch.manual_seed(0)
    model = build_model(cfg, setup.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device="cpu").manual_seed(0)
    colours = torch.rand(21, 3, generator=gen) * 4 - 2
    losses = []
    for _ in range(setup.train_iters):
        labels = torch.zeros(setup.images, setup.size, setup.size, dtype=torch.long)
        for n in range(setup.images):
            k, top, left = (int(v) for v in torch.randint(1, 21, (3,), generator=gen))
            side = setup.size // 2
            labels[n, top % side:top % side + side, left % side:left % side + side] = k
        images = colours[labels].permute(0, 3, 1, 2).contiguous() + 0.3 * torch.randn(labels.shape[0], 3, setup.size,
                                                                                          setup.size, generator=gen)
        images, labels = images.to(setup.device), labels.to(setup.device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = model(images.contiguous(memory_format=torch.channels_last))
        loss = criterion(outputs, labels, aux_weight=0.4)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    verdict = "falls" if last < 0.7 * first else "does NOT fall enough"
    return (f"{setup.train_iters} iterations of {setup.images} images at {setup.size}x{setup.size} (r50-os16): loss "
            f"{first:.3f} (first 5) -> {last:.3f} (last 5): {verdict}")


def evaluation_rows(setup: Setup) -> list[str]:
    rows = []
    sizes = [("VOC/ADE20k", (375, 500), (2048, 512)), ("Cityscapes", (1024, 2048), None)] if setup.gpu \
        else [("VOC/ADE20k (tiny)", (48, 64), (256, 64))]
    for backbone, stride in (("r50", 16), ("r101", 8)):
        cfg = config(backbone, stride, setup.size, "bf16" if setup.gpu else "fp32")
        model = build_model(cfg, setup.device).eval()
        for name, (h, w), scale in sizes:
            spec = InputSpec(scale, cfg.train.mean, cfg.train.std, torch.bfloat16 if setup.gpu else None)
            image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=setup.device)
            predict(model, image, SINGLE_SCALE, spec)
            sync(setup.device)
            started, count = time.perf_counter(), 3 * setup.steps
            for _ in range(count):
                predict(model, image, SINGLE_SCALE, spec)
            sync(setup.device)
            rows.append(f"| {backbone}-os{stride} | {name} {h}x{w} | {count / (time.perf_counter() - started):.1f} |")
    return rows


def loader_rows(consumption: dict[tuple[str, int], float], setup: Setup) -> list[str]:
    """Samples/s per loader worker of each dataset at its real sizes (the training chain as it is), and the
    workers each cell needs per GPU at this machine's measured bf16 step rate, against its cores per GPU."""
    import input_pipeline
    samples, batch = (8, 4) if setup.quick else (32, 8)
    per_worker = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker runs single-threaded
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for dataset in ("voc", "ade20k", "cityscapes"):
                folder = input_pipeline.write_dataset(Path(tmp) / dataset, dataset, 4 if setup.quick else 8)
                per_worker[dataset] = input_pipeline.measure(dataset, folder, samples, batch, 1)["new"]
    finally:
        torch.set_num_threads(torch_threads)
    gpus = max(torch.cuda.device_count(), 1) if setup.gpu else 1
    cores = (os.cpu_count() or 1) // gpus
    rows = ["| dataset | samples/s per worker |", "|---|--:|"] + \
        [f"| {dataset} | {rate:.1f} |" for dataset, rate in per_worker.items()]
    rows += ["", f"Workers per GPU = 2 x the bf16 step's images/s (above, scaled to the cell's crop) / samples/s per "
                 f"worker; this machine has {cores} CPU cores per GPU ({os.cpu_count()} cores, {gpus} GPU(s)).", "",
             "| cell | images/s (bf16 step) | workers needed | fits the cores |", "|---|--:|--:|---|"]
    for cell_id, cell in PARAMS.cells.items():
        crop = PARAMS.resolve(cell_id).data.crop_size
        rate = consumption.get((cell.backbone, cell.output_stride))
        if rate is None:
            continue
        images = rate * setup.size ** 2 / (crop[0] * crop[1])  # the step's rate at this cell's crop
        workers = 2 * images / per_worker[cell.dataset]
        rows.append(f"| {cell_id} | {images:.3g} | {workers:.3g} | {'yes' if math.ceil(workers) < cores else 'no'} |")
    return rows


def _ddp_worker(rank: int, world: int, port: int, result: dict) -> None:  # pragma: no cover (GPU only)
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    cfg = config("r50", 16, 512, "bf16")
    model = torch.nn.parallel.DistributedDataParallel(convert_sync_batchnorm(build_model(cfg, device)), device_ids=[rank])
    images = torch.randn(4, 3, 512, 512, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (4, 512, 512), device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images)
    criterion(outputs, labels, aux_weight=0.4)["loss"].backward()
    grad = next(model.parameters()).grad.detach().clone()
    dist.all_reduce(grad, op=dist.ReduceOp.MAX)
    same = torch.equal(grad, next(model.parameters()).grad)
    if rank == 0:
        result["ok"] = same
    dist.destroy_process_group()


def ddp_line(setup: Setup) -> str:
    if not setup.gpu or torch.cuda.device_count() < 2:
        return f"skipped: {torch.cuda.device_count() if setup.gpu else 0} GPU(s) here, a DDP step needs 2"
    import torch.multiprocessing as mp
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_ddp_worker, args=(2, 29517, result), nprocs=2, join=True)
    return f"2 GPUs, NCCL, SyncBatchNorm: one step ran, gradients equal on both ranks: {result.get('ok')}"


def compile_line(setup: Setup) -> str:
    """torch.compile of the whole training step (forward, loss, backward, SGD step) against eager."""
    if not setup.gpu:
        return "skipped on the CPU (inductor's C++ build takes minutes on 2 cores; equality is tested on CPU)"
    cfg = config("r50", 16, setup.size, "bf16")
    eager, _ = step_rate(cfg, setup, setup.images)
    started = time.perf_counter()
    compiled, _ = step_rate(cfg, setup, setup.images, compiled=True)
    return (f"r50-os16 bf16 {setup.images} images, the whole step compiled: eager {eager:.1f} images/s, compiled "
            f"{compiled:.1f} (x{compiled / eager:.2f}); compiling and timing took {time.perf_counter() - started:.0f} s")


def machine_lines(setup: Setup) -> list[str]:
    """What the numbers were measured on: the first lines of the report."""
    from deeplab.device import nvml_state
    from deeplab.environment import _cpu_model
    cpu = f"{os.cpu_count()} CPU cores ({_cpu_model()})"
    software = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    if not setup.gpu:
        return ["**Not a GPU result: no CUDA device, tiny sizes on the CPU, to show that the script works.**", "",
                f"Machine: {cpu}, no GPU; {software}.", ""]
    properties = torch.cuda.get_device_properties(setup.device)
    driver, _, error = nvml_state()
    return [f"Machine: {torch.cuda.device_count()} x {properties.name}, {properties.total_memory / GIB:.1f} GiB, "
            f"compute capability {properties.major}.{properties.minor}, driver {driver or f'unknown ({error})'}; "
            f"{cpu}; {software}, cuDNN {torch.backends.cudnn.version()}.", ""]


def sections(setup: Setup) -> list[tuple[str, float, Callable[[dict], list[str]]]]:
    """(heading, estimated seconds, body) in the order they run: the most telling first, compile last."""
    gpu = setup.gpu
    return [
        (f"Training step ({setup.size}x{setup.size}, per-GPU share {setup.images})", 150 if gpu else 40,
         lambda found: training_section(setup, found)),
        ("Training run", 20 if gpu else 10, lambda found: [short_training(setup)]),
        ("Evaluation (single scale)", 20 if gpu else 5,
         lambda found: ["| variant | image | images/s |", "|---|---|--:|"] + evaluation_rows(setup)),
        ("Input pipeline (one loader worker per dataset, real image sizes)", 40 if setup.quick else 90,
         lambda found: loader_rows(found.get("consumption", {}), setup)),
        ("DDP", 40 if gpu and torch.cuda.device_count() > 1 else 1, lambda found: [ddp_line(setup)]),
        ("torch.compile", 300 if gpu else 1, lambda found: [compile_line(setup)]),
    ]


def training_section(setup: Setup, found: dict) -> list[str]:
    rows, found["consumption"] = training_rows(setup)
    return ["| variant | precision | micro-batch (auto-fit) | images/s | achieved TFLOP/s | peak GiB measured | "
            "peak GiB predicted |", "|---|---|--:|--:|--:|--:|--:|"] + rows


def report(setup: Setup, budget_s: float | None, write: Callable[[str], None] = lambda text: None) -> str:
    """The report; ``write`` gets the whole text so far after each section."""
    started = time.perf_counter()
    lines, found = machine_lines(setup), {}
    for heading, estimate, body in sections(setup):
        left = None if budget_s is None else budget_s - (time.perf_counter() - started)
        lines.append(f"### {heading}\n")
        if left is not None and estimate > left:
            lines += [f"skipped: about {estimate:.0f} s expected, {max(left, 0):.0f} s of the {budget_s:.0f} s budget "
                      "left (--budget-s)", ""]
        else:
            section_started = time.perf_counter()
            lines += body(found) + ["", f"({time.perf_counter() - section_started:.0f} s)", ""]
        write("\n".join(lines) + "\n")
    lines.append(f"Report made in {time.perf_counter() - started:.0f} s"
                 + (f" of a {budget_s:.0f} s budget." if budget_s is not None else "."))
    text = "\n".join(lines) + "\n"
    write(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the report to this file, section by section")
    parser.add_argument("--quick", action="store_true", help="two variants, fewer steps and loader samples")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip any section whose estimate would overrun this many seconds in all")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    setup = Setup(torch.device("cuda" if gpu else "cpu"), size=512 if gpu else 64, images=16 if gpu else 2,
                  steps=(2 if args.quick else 5) if gpu else 1 if args.quick else 2,
                  train_iters=(20 if args.quick else 50) if gpu else 30, gpu=gpu, quick=args.quick)

    def write(text: str) -> None:
        if args.out:
            args.out.write_text(text)
    print(report(setup, args.budget_s, write))


if __name__ == "__main__":
    main()
