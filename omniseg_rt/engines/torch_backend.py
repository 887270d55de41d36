"""The PyTorch model as an engine: the reference, and the GPU path where TensorRT is absent.

fp32 anywhere; fp16 with channels_last on CUDA; bf16 autocast on the CPU. The engine directory
holds the checkpoint (``model.pth``); this is the one backend that imports torch.

``build --compile MODE`` (``default`` or ``max-autotune``) runs the model under ``torch.compile``
(inductor: Triton kernels on CUDA, C++ on the CPU). Compiling and tuning happen at build time,
into ``cache/inductor`` (and ``cache/triton``) of the engine directory, so opening the engine
later loads the compiled kernels from there (seconds) instead of tuning again (minutes). A
compiled engine runs one batch size, the profile's ``batch_opt``: a shorter batch (the last one of
a band or slide) is padded to it, a longer one cut into such batches. Fixed shapes are what lets
inductor specialise and autotune its kernels; a dynamic batch dimension would compile generic
kernels (and still specialise batch 1), and any other size would compile again at run time. The
manifest records the mode, torch and CUDA versions and the device; opening on another says how to
rebuild. Opening checks that a window's result does not depend on its place in the batch (to the
bit); where it holds (``batch_invariant``) the slide pipeline fills batches across bands. Compiling runs under ``torch.no_grad()`` with parameters that need no gradient (under
``torch.inference_mode()`` inductor failed on the model's cached index tensors).

Outputs for the slide pipeline (``submit_device``) stay on the device as tensors; the stitcher
works on them with :class:`TorchArrays` and only uint8 masks cross to the host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.arrays import SCORE_CLIP, split_flat
from omniseg_rt.engines.base import GraphRunner, GraphSpec, Ticket, check_images
from omniseg_rt.errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import BuildRequest
    from omniseg_rt.engines.manifest import EngineManifest

log = logging.getLogger(__name__)
NAME = "torch"
PRECISIONS = ("fp32", "fp16", "bf16")
GRAPH_PRECISIONS: frozenset[str] = frozenset()  # runs the checkpoint; precision is a runtime cast
COMPILE_MODES = ("default", "max-autotune")
#: torch.compile modes; CUDA graphs are left out (the pipeline keeps two batches in flight and
#: reuses no input buffers, which cudagraph trees would make us manage)
_INDUCTOR_MODE = {"default": None, "max-autotune": "max-autotune-no-cudagraphs"}
CACHE = "cache"


def versions() -> dict[str, str]:
    torch = require("torch", "run the torch backend")
    return {"torch": str(torch.__version__), **({"cuda": str(torch.version.cuda)} if torch.version.cuda else {})}


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
    if request.compile is not None and request.compile not in COMPILE_MODES:
        raise InvalidInputError(f"--compile {request.compile}: choose {' or '.join(COMPILE_MODES)}")


def prepare_graphs(graphs: list[Path], request: BuildRequest, notify) -> None:
    """The graphs are kept for inspection and the accuracy gate's reference; the runner uses the checkpoint."""


def finish_build(staging: Path, manifest: EngineManifest, request: BuildRequest, notify) -> None:
    """Copy the checkpoint; for ``--compile``, record what the compiled kernels are bound to (the
    compiling itself happens when the build opens the engine, into ``cache/``)."""
    import shutil

    shutil.copy2(request.source, staging / "model.pth")
    if request.compile is not None:
        manifest.compiled = {"mode": request.compile, "batch": request.settings.batch_opt,
                             "window": request.settings.window, **compile_target(request.device)}
        notify(f"compiling with inductor ({request.compile}, batch {request.settings.batch_opt}): "
               "minutes the first time, cached in the engine")


def compile_target(device: str) -> dict[str, Any]:
    """What compiled kernels depend on: torch and CUDA versions and the device they were tuned for."""
    torch = require("torch", "run the torch backend")
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        from omniseg_rt.hardware import cpu_summary

        name = cpu_summary()["name"]
    return {"device": device, "device_name": name, "torch": str(torch.__version__), "cuda": torch.version.cuda}


def check_can_open(folder: Path, manifest: EngineManifest) -> None:
    """A compiled engine opens only where its kernels were compiled: same torch, CUDA and device."""
    compiled = getattr(manifest, "compiled", None)
    if not compiled:
        return
    from omniseg_rt.engines.manifest import rebuild_command

    here = compile_target(pick_device(manifest.device))
    differ = [f"{key} {compiled.get(key)} (here {here[key]})" for key in ("device", "device_name", "torch", "cuda")
              if compiled.get(key) != here[key]]
    if differ:
        raise InvalidInputError(f"{folder}: compiled for another machine or torch: {'; '.join(differ)}; "
                                f"rebuild it here with: {rebuild_command(manifest, out=str(folder))}")


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> TorchRunner:
    return TorchRunner(spec, folder / "model.pth", manifest.precision, pick_device(manifest.device), threads,
                       compiled=getattr(manifest, "compiled", None), cache=folder / CACHE)


def check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"the torch backend runs {', '.join(PRECISIONS)}, not {precision}")
    if precision == "fp16" and device != "cuda":
        raise InvalidInputError("fp16 in the torch backend needs a CUDA GPU; on the CPU use fp32 or bf16")


@contextmanager
def inductor_cache(folder: Path) -> Iterator[None]:
    """Point inductor's (and Triton's) caches at ``folder`` while compiling; restore afterwards."""
    keys = {"TORCHINDUCTOR_CACHE_DIR": folder / "inductor", "TRITON_CACHE_DIR": folder / "triton"}
    old = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: str(path.resolve()) for key, path in keys.items()})
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TorchArrays:
    """Tensors on one device (``engines/arrays.py``): masks and scores of a batch of cells cross
    to the host as one flat uint8 transfer."""

    def __init__(self, torch, device: str) -> None:
        self.torch, self.device = torch, device

    def asarray(self, values: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(self.device)

    def zeros(self, shape: tuple[int, ...]):
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def _to_host(self, values: Sequence[Any], encode) -> list[np.ndarray]:
        if not values:
            return []
        flat = self.torch.cat([encode(v).reshape(-1) for v in values])
        return split_flat(flat.cpu().numpy(), [tuple(v.shape) for v in values])

    def masks(self, values: Sequence[Any]) -> list[np.ndarray]:
        return self._to_host(values, lambda v: (v > 0).to(self.torch.uint8) * 255)

    def scores(self, values: Sequence[Any]) -> list[np.ndarray]:
        torch = self.torch

        def encode(v):
            probability = torch.sigmoid(v.float().clamp(-SCORE_CLIP, SCORE_CLIP))
            return (1.0 + torch.round(254.0 * probability)).to(torch.uint8)

        return self._to_host(values, encode)


def resize_windows(torch, windows, size: int):
    """uint8 [B, 3, h, w] tensor -> uint8 [B, 3, size, size] on its device: bilinear, antialiased
    when shrinking, pixel centres aligned (what PIL's BILINEAR resize of the reading path does; the
    two agree within one grey level on the real slides, tests/test_compiled_engine.py)."""
    with torch.no_grad():
        out = torch.nn.functional.interpolate(windows.float(), size=(size, size), mode="bilinear",
                                              align_corners=False, antialias=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)


class TorchRunner(GraphRunner):
    """uint8 [B, 3, H, W] -> margins [B, T, H, W]: float32 numpy from :meth:`infer`, tensors on
    the device from :meth:`submit_device` (fp16 for fp16 engines)."""

    def __init__(self, spec: GraphSpec, checkpoint: Path, precision: str, device: str, threads: int,
                 compiled: dict | None = None, cache: Path | None = None) -> None:
        torch = require("torch", "run the torch backend")
        from omniseg_rt.model import load_checkpoint

        check_precision(precision, device)
        if device == "cpu":
            torch.set_num_threads(threads)
        self.spec, self.torch, self.device, self.precision = spec, torch, device, precision
        self.tasks = list(spec.tissues)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        model = load_checkpoint(checkpoint, device=device).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if precision == "fp16":
            model = model.half()
        if device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.arrays = TorchArrays(torch, device)
        self.resizes = device == "cuda"  # a GPU resizes windows faster than the reading processes, and gets fewer bytes
        with torch.no_grad():  # fills the model's task-index cache: compiled code then sees a fixed module state
            self._forward(torch.zeros((1, 3, 16, 16), dtype=torch.uint8, device=device))
        self.batch: int | None = None
        self.window: int | None = None
        self._run = self._forward
        if compiled:
            self.batch, self.window = int(compiled["batch"]), int(compiled["window"])
            self._run = torch.compile(self._forward, mode=_INDUCTOR_MODE[compiled["mode"]], dynamic=False)
            with inductor_cache(cache or checkpoint.parent / CACHE), torch.no_grad():
                self.batch_invariant = self._check_batch_invariant()

    def _check_batch_invariant(self) -> bool:
        """Compile (or load) the kernels with a probe batch, then run it again rotated by one
        place: does every window come out the same to the bit wherever it sits in the batch?"""
        torch = self.torch
        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(0, 256, (self.batch, 3, self.window, self.window), generator=generator,
                              dtype=torch.uint8).to(self.device)
        first = self._run(probe)
        again = self._run(torch.roll(probe, 1, dims=0))
        same = bool(torch.equal(torch.roll(first, 1, dims=0), again))
        if not same:
            log.info("%s: window results depend on their place in the batch; batches stay within bands", self.spec.name)
        return same

    def _forward(self, images):
        """uint8 [B, 3, H, W] on the device -> margins [B, T, H, W] (fp16 engines: fp16, else fp32)."""
        from omniseg_rt.model import margins

        torch = self.torch
        x = images.to(self.dtype) / 255.0
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = margins(self.model.forward_tasks(x, self.tasks))
        return out if self.precision == "fp16" else out.float()

    def _outputs(self, images: np.ndarray, size: int | None = None):
        """Margins of a batch as device tensors (``size``: the windows resized to it on the device
        first); compiled engines run padded batches of their size."""
        torch = self.torch
        if size is not None and images.shape[2:] != (size, size):
            x = resize_windows(torch, torch.from_numpy(check_images(images, multiple=1)).to(self.device), size)
        else:
            x = torch.from_numpy(check_images(images)).to(self.device, non_blocking=True)
        with torch.no_grad():
            if self.batch is None:
                return self._run(x)
            if x.shape[2:] != (self.window, self.window):
                log.warning("windows of %s px: the engine was compiled for %d px; running uncompiled",
                            tuple(x.shape[2:]), self.window)
                return self._forward(x)
            outputs = []
            for start in range(0, len(x), self.batch):
                chunk = x[start:start + self.batch]
                short = self.batch - len(chunk)
                if short:
                    chunk = torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))])
                outputs.append(self._run(chunk)[:self.batch - short])
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self._outputs(images).float().cpu().numpy()

    def submit_device(self, images: np.ndarray, size: int | None = None) -> Ticket:
        try:
            return Ticket.finished(self._outputs(images, size))
        except Exception as exc:  # delivered by result(), as for submit
            return Ticket.finished(error=exc)

    def close(self) -> None:
        self.model = None
        self._run = None
