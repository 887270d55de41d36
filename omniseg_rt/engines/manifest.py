"""The engine directory's ``manifest.json``: what was built, from what, on what, and checks.

Layout of an engine directory::

    NAME/manifest.json          this file's subject
    NAME/graphs/<set>.onnx      the graph of each tissue set (+ <set>.json, its graph manifest)
    NAME/plans/<set>.plan       TensorRT only: the serialised engine of each graph
    NAME/model.pth              torch backend only: the checkpoint
    NAME/cache/                 backend caches (OpenVINO CACHE_DIR, ORT optimised models, timing cache,
                                inductor's compiled kernels of a torch --compile engine)

Opening checks the manifest's format, that every listed file exists with its recorded sha256,
and (backend by backend) that this machine can run what was built; every mismatch is named.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omniseg_rt.calibration.gate import DEFAULT_MIN_DICE
from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.fileutil import atomic_write_text, read_format_json, sha256_file

FORMAT = "omniseg-rt.engine/1"
MANIFEST = "manifest.json"
INPUT = {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB"}
OUTPUT = {"name": "logits", "dtype": "float32", "layout": "NTHW",
          "meaning": "foreground minus background logit; foreground where > 0"}


@dataclass
class GraphEntry:
    """One graph of an engine: its tissue set and files (relative to the engine directory)."""

    name: str  # "all", or a scale group "5x" / "10x" / "40x"
    file: str  # graphs/<name>.onnx
    tissues: list[int]  # task ids, in output channel order
    scale_group: str | None = None
    nominal_mpp: float | None = None  # micrometres per pixel of the windows it expects
    rewrites: dict[str, Any] | None = None  # OpenVINO graph rewrites applied
    plan: str | None = None  # TensorRT: plans/<name>.plan
    cache_key: str | None = None  # TensorRT: the plan's engine-cache key


@dataclass
class EngineManifest:
    """An engine directory's ``manifest.json``: one reader (:meth:`read`), one writer (:meth:`write`)."""

    backend: str
    precision: str
    graphs: list[GraphEntry]
    window: int  # window side in pixels the engine was built and gated for
    source: dict[str, Any]  # path, sha256, kind (checkpoint | onnx)
    family: str | None
    profile: dict[str, Any]  # the Profile the build resolved
    settings: dict[str, Any]  # threads (0: all), device
    built_on: dict[str, Any]  # cpu summary, gpus
    versions: dict[str, str]
    rebuild: dict[str, Any]  # build_engine's options: see rebuild_args
    input: dict[str, Any] = field(default_factory=lambda: dict(INPUT))
    output: dict[str, Any] = field(default_factory=lambda: dict(OUTPUT))
    accuracy_gate: dict[str, Any] | None = None
    reduced_precision: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None  # TensorRT: version, gpu, compute capability, profile
    compiled: dict[str, Any] | None = None  # torch --compile: mode, batch, window, device, torch/CUDA versions
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    build_seconds: float | None = None
    created: str | None = None

    @property
    def tissues(self) -> list[int]:
        """Every tissue's task id, graph after graph (the engine's output channels)."""
        return [t for g in self.graphs for t in g.tissues]

    @property
    def threads(self) -> int:
        """CPU threads recorded at build (0: every core this process may use)."""
        return int(self.settings.get("threads") or 0)

    @property
    def device(self) -> str:
        return str(self.settings.get("device") or "cpu")

    def graph(self, name: str) -> GraphEntry:
        return next(g for g in self.graphs if g.name == name)

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, **asdict(self), "tissues": self.tissues}
        if data["compiled"] is None:  # engines without it stay readable by the omniseg-rt versions before it
            del data["compiled"]
        data["graphs"] = [{k: v for k, v in g.items() if v is not None or k in ("scale_group", "nominal_mpp")}
                          for g in data["graphs"]]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "engine manifest") -> EngineManifest:
        """Check and type a manifest's JSON (``format`` already checked); raise naming what is wrong."""
        problems = structure_problems(data)
        known = {f.name for f in fields(cls)} | {"format", "tissues"}
        unknown = sorted(set(data) - known)
        if unknown:
            problems.append(f"unknown keys {unknown}")
        if problems:
            raise InvalidInputError(f"{where}: a damaged engine manifest ({'; '.join(problems)}); "
                                    f"rebuild the engine with: {rebuild_command(data)}")
        graph_keys = {f.name for f in fields(GraphEntry)}
        values = {k: v for k, v in data.items() if k in known - {"format", "tissues"}}
        values["graphs"] = [GraphEntry(**{k: v for k, v in g.items() if k in graph_keys}) for g in data["graphs"]]
        for name in ("source", "family", "profile", "settings", "built_on", "versions", "rebuild"):
            values.setdefault(name, None if name == "family" else {})
        return cls(**values)

    def write(self, folder: Path) -> Path:
        """``folder/manifest.json``, written atomically (temporary name, then rename)."""
        path = folder / MANIFEST
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike, verify_files: bool = True) -> EngineManifest:
        """Read and check an engine directory's manifest (and, with ``verify_files``, every file
        it lists against its sha256).

        Raises:
            MissingFileError: no such directory, or no manifest.
            InvalidInputError: not an engine manifest, another format, damaged, or a listed file
                missing or modified (each named, with the rebuild command).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: no such engine directory; build one with: omniseg-rt build")
        path = folder / MANIFEST
        if not path.is_file():
            raise MissingFileError(f"{folder}: not an engine directory (no {MANIFEST}); build one with: omniseg-rt build")
        data = read_format_json(path, FORMAT, "engine manifest", lambda old: f"rebuild it with: {rebuild_command(old)}")
        manifest = cls.from_dict(data, str(path))
        if verify_files:
            problems = []
            for rel, digest in manifest.files.items():
                file = folder / rel
                if not file.is_file():
                    problems.append(f"{rel} is missing")
                elif sha256_file(file) != digest:
                    problems.append(f"{rel} was modified (sha256 differs from the manifest)")
            if problems:
                raise InvalidInputError(
                    f"{folder}: engine files do not match {MANIFEST}: {'; '.join(problems)}; "
                    f"rebuild with: {rebuild_command(manifest)}"
                )
        return manifest


def read_engine_manifest(folder: str | os.PathLike, verify_files: bool = True) -> EngineManifest:
    """:meth:`EngineManifest.read`."""
    return EngineManifest.read(folder, verify_files)


def structure_problems(manifest: dict[str, Any]) -> list[str]:
    """What an engine manifest lacks for opening and running it (empty when it is whole)."""
    problems = []
    for key, kind in (("backend", str), ("precision", str), ("window", int), ("graphs", list)):
        if not isinstance(manifest.get(key), kind):
            problems.append(f"'{key}' is missing" if key not in manifest else f"'{key}' is not a {kind.__name__}")
    for i, graph in enumerate(manifest.get("graphs") or []):
        if not isinstance(graph, dict) or not isinstance(graph.get("file"), str) or not isinstance(
                graph.get("tissues"), list) or not isinstance(graph.get("name"), str):
            problems.append(f"graph {i} lacks its name, file or tissues")
    if manifest.get("graphs") == []:
        problems.append("it lists no graphs")
    for key in ("files", "settings", "profile", "rebuild"):
        if key in manifest and not isinstance(manifest[key], dict):
            problems.append(f"'{key}' is not an object")
    return problems


#: the build_engine options an engine manifest's ``rebuild`` section records, in command order
REBUILD_OPTIONS = ("backend", "precision", "tissues", "profile", "calibration", "window", "device", "compile",
                   "calibration_method", "int8_tool", "int8_keep_float", "min_dice", "out")
_DEFAULTS = {"calibration_method": "percentile", "int8_tool": "onnxruntime", "min_dice": DEFAULT_MIN_DICE, "device": "auto"}


def rebuild_args(manifest: EngineManifest | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``build_engine`` keyword arguments that make this engine again: the same source, backend,
    precision (never ``auto``: an int8 engine comes back int8), tissues, profile, calibration set,
    window, device, quantizer options and graph rewrites; ``overrides`` replace any of them."""
    rebuild = manifest.rebuild if isinstance(manifest, EngineManifest) else manifest.get("rebuild")
    spec = {**(rebuild if isinstance(rebuild, dict) else {}), **overrides}
    args = {"model": spec.get("source")}
    args.update({option: spec[option] for option in REBUILD_OPTIONS if spec.get(option) is not None})
    if spec.get("graph_rewrites") is False:
        args["graph_rewrites"] = False
    return args


def rebuild_command(manifest: EngineManifest | dict[str, Any], **overrides: Any) -> str:
    """The ``omniseg-rt build`` command that makes this engine again (``overrides`` replace options);
    the same choices as :func:`rebuild_args`, options at their defaults left out."""
    args = rebuild_args(manifest, **overrides)
    parts = ["omniseg-rt build", str(args.pop("model", None) or "MODEL")]
    for option in REBUILD_OPTIONS:
        if option in args and args[option] != _DEFAULTS.get(option):
            parts.append(f"--{option.replace('_', '-')} {args[option]}")
    if args.get("graph_rewrites") is False:
        parts.append("--no-graph-rewrites")
    return " ".join(parts)
