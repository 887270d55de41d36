"""The one interface every backend module implements, and what a build asks of it.

A backend is a module (``openvino_backend.py``, ``onnxruntime_backend.py``, ``torch_backend.py``,
``tensorrt_backend.py``) named once in ``registry.py``; nothing else in the package branches on a
backend's name. As in Polygraphy, building (``check_request``, ``prepare_graphs``,
``finish_build``) is kept apart from running (``check_can_open``, ``make_runner``). Modules import
their runtime (openvino, onnxruntime, torch, tensorrt) lazily, inside the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from omniseg_rt.engines.base import GraphRunner, GraphSpec
    from omniseg_rt.engines.manifest import EngineManifest
    from omniseg_rt.engines.profiles import Profile


@dataclass(frozen=True)
class BuildRequest:
    """One resolved build: what ``omniseg-rt build`` was asked, ``auto`` choices made."""

    source: Path  # checkpoint (.pth) or exported graph (.onnx)
    backend: str
    precision: str  # fp32 | bf16 | fp16 | int8
    device: str  # cpu | cuda | tensorrt (ONNX Runtime providers)
    settings: Profile  # window, batch range, workspace, threads
    tissues: str | None
    calibration: Path | None
    calibration_method: str
    int8_tool: str
    graph_rewrites: bool
    int8_keep_float: str | None = None  # comma-separated convolutions left float; None: the quantizer's default
    compile: str | None = None  # torch: torch.compile mode (default | max-autotune); None: eager


class Backend(Protocol):
    """The hooks of a backend module (module-level names)."""

    NAME: str
    PRECISIONS: tuple[str, ...]
    #: precisions built from a converted graph (FP16, or Q/DQ INT8) rather than from a hint
    GRAPH_PRECISIONS: frozenset[str]

    def resolve_device(self, requested: str) -> str:
        """The device ``requested`` (``auto`` included) means for this backend here."""

    def check_request(self, request: BuildRequest) -> None:
        """Raise InvalidInputError / MissingDependencyError before any work if it cannot be built."""

    def prepare_graphs(self, graphs: list[Path], request: BuildRequest, notify: Callable[[str], None]) -> None:
        """Adapt the exported (and converted) graphs in place; record what was done in their sidecars."""

    def finish_build(self, staging: Path, manifest: EngineManifest, request: BuildRequest,
                     notify: Callable[[str], None]) -> None:
        """Backend-specific files in the staging folder (plans, a checkpoint), recorded in ``manifest``."""

    def check_can_open(self, folder: Path, manifest: EngineManifest) -> None:
        """Raise (with the rebuild command) if this machine cannot run the engine."""

    def make_runner(self, folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> GraphRunner:
        """A runner for one graph of the engine in ``folder``."""

    def versions(self) -> dict[str, str]:
        """Versions of the runtime, for the manifest."""
