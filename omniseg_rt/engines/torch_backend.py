"""The PyTorch model as an engine: the reference, and for GPU users without TensorRT.

fp32 anywhere; fp16 with channels_last on CUDA; bf16 autocast on the CPU. The engine directory
holds the checkpoint (``model.pth``); this is the one backend that imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.base import GraphRunner, GraphSpec, check_images
from omniseg_rt.errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import BuildRequest
    from omniseg_rt.engines.manifest import EngineManifest

NAME = "torch"
PRECISIONS = ("fp32", "fp16", "bf16")
GRAPH_PRECISIONS: frozenset[str] = frozenset()  # runs the checkpoint; precision is a runtime cast


def versions() -> dict[str, str]:
    return {"torch": str(require("torch", "run the torch backend").__version__)}


def pick_device(requested: str | None) -> str:
    torch = require("torch", "run the torch backend")
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("the torch backend was asked for CUDA, but torch sees no CUDA GPU")
    return requested


def resolve_device(requested: str) -> str:
    return pick_device(requested)


def check_request(request: BuildRequest) -> None:
    if request.source.suffix.lower() == ".onnx":
        raise InvalidInputError(f"{request.source}: the torch backend needs the checkpoint, not an exported graph")
    check_precision(request.precision, pick_device(request.device))


def prepare_graphs(graphs: list[Path], request: BuildRequest, notify) -> None:
    """The graphs are kept for inspection and the accuracy gate's reference; the runner uses the checkpoint."""


def finish_build(staging: Path, manifest: EngineManifest, request: BuildRequest, notify) -> None:
    import shutil

    shutil.copy2(request.source, staging / "model.pth")


def check_can_open(folder: Path, manifest: EngineManifest) -> None:
    """Devices are checked when the runner starts (pick_device)."""


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> TorchRunner:
    return TorchRunner(spec, folder / "model.pth", manifest.precision, pick_device(manifest.device), threads)


def check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"the torch backend runs {', '.join(PRECISIONS)}, not {precision}")
    if precision == "fp16" and device != "cuda":
        raise InvalidInputError("fp16 in the torch backend needs a CUDA GPU; on the CPU use fp32 or bf16")


class TorchRunner(GraphRunner):
    def __init__(self, spec: GraphSpec, checkpoint: Path, precision: str, device: str, threads: int) -> None:
        torch = require("torch", "run the torch backend")
        from omniseg_rt.model import load_checkpoint

        check_precision(precision, device)
        if device == "cpu":
            torch.set_num_threads(threads)
        self.spec, self.torch, self.device, self.precision = spec, torch, device, precision
        self.model = load_checkpoint(checkpoint, device=device)
        if precision == "fp16":
            self.model = self.model.half()

    def infer(self, images: np.ndarray) -> np.ndarray:
        from omniseg_rt.model import margins

        torch = self.torch
        x = torch.from_numpy(check_images(images)).to(self.device)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        x = x.to(dtype) / 255.0
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model.forward_tasks(x, list(self.spec.tissues))
        return margins(logits).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
