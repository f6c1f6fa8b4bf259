"""GPU check: what one machine gives this recipe, measured in under ten minutes, without any dataset.

    make gpu-check                                    # python benchmarks/gpu_check.py --out gpu_check.md
    PYTHONPATH=. python3 benchmarks/gpu_check.py      # on a machine with torch, torchvision, pyyaml only

Per backbone x output stride at the recipe's 512x512 crop: the training step (bf16 autocast + channels-last,
and fp32 with TF32 off as the reference trains) in images/s and achieved TFLOP/s (3 x the model's forward
FLOPs), its peak memory measured against the fake-tensor prediction (deeplab.memory), and the micro-batch
auto-fit picks; a 50-iteration training on synthetic shapes showing the loss fall; evaluation images/s at
the recipe's test sizes; the data loader's images/s per worker on this machine's cores against what the GPU
consumes (workers needed per cell); torch.compile against eager; with two or more GPUs, a DDP + NCCL +
SyncBatchNorm step. Writes one markdown report, ready to paste into benchmarks/README.md.

Without CUDA it runs on the CPU at tiny sizes, so the script is known to work before anyone pays for a
GPU; its report then says in its first line that the numbers are not a GPU's.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deeplab.autofit import CudaMemory, choose  # noqa: E402
from deeplab.config import CellConfig, load_params  # noqa: E402
from deeplab.datasets import TrainDataset  # noqa: E402
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict  # noqa: E402
from deeplab.losses import criterion  # noqa: E402
from deeplab.memory import GIB, ModelShape, predict_step, predicted_line  # noqa: E402
from deeplab.model import AUX_GFLOPS_512, FORWARD_GFLOPS_512, build_model, convert_sync_batchnorm  # noqa: E402
from deeplab.precision import configure_backends  # noqa: E402
from deeplab.transforms import Augmentation, sample_seed  # noqa: E402

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
    step = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(micro, 3, setup.size, setup.size, device=setup.device)
    images = images.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else images
    labels = torch.randint(0, 21, (micro, setup.size, setup.size), device=setup.device)
    if setup.gpu:
        torch.cuda.reset_peak_memory_stats(setup.device)
    best = math.inf
    for k in range(setup.steps + 2):  # two warm-up steps (cuDNN autotuning, compilation)
        sync(setup.device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = step(images)
        criterion(outputs, labels, aux_weight=0.4)["loss"].backward()
        optimizer.step()
        sync(setup.device)
        if k >= 2:
            best = min(best, time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(setup.device) / GIB if setup.gpu else float("nan")
    return micro / best, peak


def training_rows(setup: Setup) -> tuple[list[str], dict[tuple[str, int], float]]:
    rows, consumption = [], {}
    for backbone, stride in VARIANTS:
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


def loader_rate(size: int) -> float:
    """Images/s of one loader worker (decode, rescale, crop, flip on uint8) on VOC-sized JPEGs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "splits").mkdir()
        rng, lines = np.random.default_rng(0), []
        for i in range(16):
            label = rng.integers(0, 21, (375, 500)).astype(np.uint8)
            Image.fromarray(rng.integers(0, 256, (375, 500, 3)).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
            Image.fromarray(label).save(folder / f"{i}.png")
            lines.append(f"{i}.jpg {i}.png")
        (folder / "splits" / "train.txt").write_text("\n".join(lines) + "\n")
        cfg = config("r50", 16, size, "fp32")
        dataset = TrainDataset(folder, "train", Augmentation.of(cfg), 21)
        started, count = time.perf_counter(), 48
        for k in range(count):
            dataset[(k % 16, sample_seed(0, k, 0))]
        return count / (time.perf_counter() - started)


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
    if not setup.gpu:
        return "skipped on the CPU (inductor's C++ build takes minutes on 2 cores; equality is tested on CPU)"
    cfg = config("r50", 16, setup.size, "bf16")
    eager, _ = step_rate(cfg, setup, setup.images)
    compiled, _ = step_rate(cfg, setup, setup.images, compiled=True)
    return f"r50-os16 bf16 {setup.images} images: eager {eager:.1f} images/s, compiled {compiled:.1f} (x{compiled / eager:.2f})"


def report(setup: Setup) -> str:
    started = time.perf_counter()
    name = torch.cuda.get_device_name(setup.device) if setup.gpu else platform.processor() or "CPU"
    memory = f"{torch.cuda.get_device_properties(setup.device).total_memory / GIB:.0f} GiB" if setup.gpu else "-"
    lines = ["**Not a GPU result: no CUDA device, tiny sizes on the CPU, to show that the script works.**\n"
             if not setup.gpu else "",
             f"Machine: {name} ({memory}), {torch.cuda.device_count() if setup.gpu else 0} GPU(s), "
             f"{os.cpu_count()} CPU cores; torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version() if setup.gpu else '-'}.\n",
             f"### Training step ({setup.size}x{setup.size}, per-GPU share {setup.images})\n",
             "| variant | precision | micro-batch (auto-fit) | images/s | achieved TFLOP/s | peak GiB measured | "
             "peak GiB predicted |", "|---|---|--:|--:|--:|--:|--:|"]
    rows, consumption = training_rows(setup)
    lines += rows + ["", "### Training run", "", short_training(setup), "", "### Evaluation (single scale)", "",
                     "| variant | image | images/s |", "|---|---|--:|"] + evaluation_rows(setup)
    per_worker = loader_rate(setup.size)
    lines += ["", "### Input pipeline", "", f"One loader worker: {per_worker:.1f} images/s on this machine's CPU. "
              "Workers needed to keep up with bf16 training: " + ", ".join(
                  f"{b}-os{s} {math.ceil(rate / per_worker)}" for (b, s), rate in consumption.items())
              + f" (train.workers is {PARAMS.train.workers}).", "", "### torch.compile", "", compile_line(setup),
              "", "### DDP", "", ddp_line(setup), "", f"Report made in {time.perf_counter() - started:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    setup = Setup(torch.device("cuda" if gpu else "cpu"), size=512 if gpu else 64, images=16 if gpu else 2,
                  steps=5 if gpu else 2, train_iters=50 if gpu else 30, gpu=gpu)
    text = report(setup)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
