"""A trained cell's model as ONNX, for inference outside PyTorch, and the check that it computes what ours does.

The graph takes and gives what the logged MLflow model does (deeplab.serving): ``images``, float32 (N, 3, H, W)
RGB values in 0..255, any batch size and image size (one size per batch), and ``classes``, int64 (N, H, W)
class indices at the input's size. The single-scale protocol the table is measured with is inside the
graph: the keep-ratio resize to the dataset's test size (native size where it has none), rounded as a
uint8 resize would be, the normalisation, the network, the bilinear upsampling of the logits to the input's
size and the argmax. It computes in fp32.

Every export is checked before its file is written: onnxruntime (CPU) runs the graph on a few images of the
cell's own validation split, and PyTorch runs the model in fp32 through deeplab.evaluate's single-scale
pass (what ``pipeline.predict`` and the evaluation do). The share of pixels whose class agrees must reach
``AGREEMENT_BAR``; the largest logit difference is reported with it. Both go into ``model.onnx.json`` beside
the graph; an export below the bar writes nothing and fails naming the figure.
"""
from __future__ import annotations

import dataclasses
import io
import time
from contextlib import redirect_stdout
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deeplab.errors import PipelineError
from deeplab.evaluate import SINGLE_SCALE, InputSpec, _pass

OPSET = 18              # the ONNX operator set written (onnxruntime >= 1.14 runs it)
AGREEMENT_BAR = 0.999   # share of pixels whose class must agree with PyTorch's
CHECK_IMAGES = 4        # validation images the check runs
INPUT, OUTPUT = "images", "classes"


class ExportError(PipelineError):
    """The graph could not be written, or computes something other than the PyTorch model."""

    exit_code = 1


def scaled_size(height: Any, width: Any, eval_scale: tuple[int, int] | None) -> tuple[Any, Any]:
    """deeplab.transforms.eval_size at ratio 1, in operations torch.export keeps symbolic, so the graph
    computes each input's test size itself (the same numbers for plain ints)."""
    if eval_scale is None:
        return height, width
    factor = torch.sym_min(max(eval_scale) / torch.sym_max(height, width),
                           min(eval_scale) / torch.sym_min(height, width))
    return torch.sym_int(height * factor + 0.5), torch.sym_int(width * factor + 0.5)


class GraphSegmenter(nn.Module):
    """(N, 3, H, W) float RGB 0..255 -> (N, H, W) int64 class indices: the single-scale protocol as one graph."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.model = model.eval()
        self.eval_scale = spec.eval_scale
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2], images.shape[-1]
        size = scaled_size(height, width, self.eval_scale)
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False).round()  # identity at its size
        logits = self.model((x - self.mean) / self.std)["out"]
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)


def export_graph(model: nn.Module, spec: InputSpec, example: torch.Tensor) -> bytes:
    """The serialized ONNX model of ``model`` under ``spec``'s single-scale protocol; batch, height and width
    dynamic. ``example``: one float (1, 3, H, W) input to trace with."""
    wrapper = GraphSegmenter(model, spec).eval()
    dynamic = torch.export.Dim.DYNAMIC
    chatter = io.StringIO()
    try:
        with torch.no_grad(), redirect_stdout(chatter):  # the exporter prints its steps
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes={"images": {0: dynamic, 2: dynamic, 3: dynamic}},
                                        opset_version=OPSET, external_data=False, verbose=False)
    except Exception as error:
        raise ExportError(f"torch.onnx could not export the model: {type(error).__name__}: "
                          f"{str(error).strip().splitlines()[0]}") from error
    return program.model_proto.SerializeToString()


def with_logits_output(graph: bytes) -> bytes:
    """The graph with the argmax's input (the upsampled logits) as a second output, for the check."""
    import onnx
    proto = onnx.load_from_string(graph)
    argmax = [node for node in proto.graph.node if node.op_type == "ArgMax" and OUTPUT in node.output]
    if len(argmax) != 1:
        raise ExportError(f"the exported graph has no single ArgMax writing '{OUTPUT}': cannot check its logits")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(argmax[0].input[0], onnx.TensorProto.FLOAT, None))
    return proto.SerializeToString()


def check_graph(graph: bytes, model: nn.Module, spec: InputSpec,
                images: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    """Run ``graph`` in onnxruntime (CPU) and ``model`` in fp32 PyTorch on ``images`` (name, uint8 (3, H, W));
    return the agreement, the largest logit difference and what ran. Also runs the first image as a batch of
    two, which must give the same classes twice (the batch axis is dynamic)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(with_logits_output(graph), providers=["CPUExecutionProvider"])
    spec = dataclasses.replace(spec, dtype=None, channels_last=False)
    agree = total = 0
    largest, per_image, seconds, alone = 0.0, [], {"onnxruntime": 0.0, "pytorch": 0.0}, None
    for name, image in images:
        source = image.float()[None]
        started = time.perf_counter()
        classes, logits = session.run(None, {INPUT: source.numpy()})
        seconds["onnxruntime"] += time.perf_counter() - started
        alone = classes if alone is None else alone
        started = time.perf_counter()
        with torch.inference_mode():
            ours = _pass(model, source, 1.0, False, SINGLE_SCALE, spec, several=False)  # (1, C, H, W)
        seconds["pytorch"] += time.perf_counter() - started
        same = int((classes == ours.argmax(1).numpy()).sum())
        difference = float(np.abs(logits - ours.numpy()).max())
        agree, total, largest = agree + same, total + classes.size, max(largest, difference)
        per_image.append({"image": name, "size": list(image.shape[-2:]), "pixel_agreement": same / classes.size,
                          "max_logit_difference": difference})
    first = images[0][1].float()[None].numpy()
    pair = session.run([OUTPUT], {INPUT: np.concatenate([first, first])})[0]
    if not (pair[0] == pair[1]).all() or not (pair[0] == alone[0]).all():
        raise ExportError("the exported graph gives other classes for the same image in a batch of two: its batch "
                          "axis is not handled")
    return {"pixel_agreement": agree / total, "bar": AGREEMENT_BAR, "max_logit_difference": largest,
            "pixels": total, "images": per_image, "batch_of_two": "same classes as alone",
            "opset": OPSET, "input": f"{INPUT}: float32 (N, 3, H, W) RGB 0..255",
            "output": f"{OUTPUT}: int64 (N, H, W) class indices", "precision": "fp32",
            "runtime": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)",
            "exporter": f"torch {torch.__version__} (torch.onnx, dynamo)", "seconds": seconds}


def below_bar(check: dict[str, Any]) -> str | None:
    """Why the check fails, or None."""
    if check["pixel_agreement"] >= check["bar"]:
        return None
    return (f"onnxruntime and PyTorch agree on {check['pixel_agreement']:.4%} of {check['pixels']} pixels, below the "
            f"bar of {check['bar']:.1%} (largest logit difference {check['max_logit_difference']:.3g})")
