"""The description every exported ONNX graph carries: a JSON sidecar and ONNX metadata_props.

Serving code (engines, runtime) reads graphs through this module only; it needs no torch and no
``onnx`` package: the sidecar ``<graph>.json`` holds everything, and its ``graph_sha256`` ties
it to the bytes of the graph.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.fileutil import atomic_write_text, read_format_json, sha256_file

FORMAT = "omniseg-rt.onnx/1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def sidecar_path(graph: str | os.PathLike) -> Path:
    """``export/x.onnx`` -> ``export/x.json``."""
    return Path(graph).with_suffix(".json")


@dataclass
class GraphManifest:
    """An exported graph's sidecar ``<graph>.json``: what it computes, from what, checked how.

    ``tissues``: one dict per output channel (task_id, abbrev, name, scale_id, scale_group,
    nominal_mpp in micrometres per pixel); ``window``: the side in pixels it was exported and
    checked at (any multiple of ``size_multiple`` runs). ``precision``, ``reduced_from_fp32`` and
    ``rewrites`` are set by ``omniseg-rt build`` on the engine's copy of the graph.
    """

    name: str
    tissues: list[dict[str, Any]]
    scale_group: str | None
    nominal_mpp: float | None
    window: int
    family: str
    source: dict[str, Any]
    size_multiple: int = 16
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    ops: list[str] = field(default_factory=list)
    gflop_per_window: float | None = None
    simplified: bool = False
    weights_stored_as_fp16: int = 0
    parity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    graph_file: str | None = None  # set by write_manifest
    graph_sha256: str | None = None  # set by write_manifest
    precision: str = "fp32"
    reduced_from_fp32: dict[str, Any] | None = None
    rewrites: dict[str, Any] | None = None

    @property
    def task_ids(self) -> list[int]:
        return [t["task_id"] for t in self.tissues]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **{k: v for k, v in asdict(self).items()
                                     if v is not None or k in ("scale_group", "nominal_mpp")}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "graph manifest") -> GraphManifest:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        problems = [f"'{k}' is missing" for k in sorted(required - set(data))]
        unknown = sorted(set(data) - known - {"format"})
        if unknown:
            problems.append(f"unknown keys {unknown}")
        if not problems and (not isinstance(data["tissues"], list)
                             or not all(isinstance(t, dict) and "task_id" in t for t in data["tissues"])):
            problems.append("'tissues' is not a list of tissues")
        if problems:
            raise InvalidInputError(f"{where}: a damaged graph manifest ({'; '.join(problems)}); re-export the graph")
        return cls(**{k: v for k, v in data.items() if k in known})


def write_manifest(graph: str | os.PathLike, manifest: GraphManifest) -> Path:
    """Write the sidecar beside ``graph`` (recording the graph's file name and sha256), atomically."""
    manifest.graph_file, manifest.graph_sha256 = Path(graph).name, sha256_file(graph)
    path = sidecar_path(graph)
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def read_manifest(graph: str | os.PathLike, verify_hash: bool = True) -> GraphManifest:
    """Read and check the sidecar of ``graph``.

    Raises:
        MissingFileError: the graph or its sidecar is missing.
        InvalidInputError: the sidecar is not ours (or of another format), damaged, or the graph's
            bytes changed since export.
    """
    graph = Path(graph)
    side = sidecar_path(graph)
    for path in (graph, side):
        if not path.is_file():
            raise MissingFileError(
                f"{path}: not found; every exported graph needs its .onnx and .json side by side "
                "(re-export with: omniseg-rt export CHECKPOINT)"
            )
    manifest = GraphManifest.from_dict(read_format_json(side, FORMAT, "graph manifest", "re-export the graph"), str(side))
    if verify_hash and sha256_file(graph) != manifest.graph_sha256:
        raise InvalidInputError(
            f"{graph}: its sha256 does not match {side.name}: the graph was changed after export; re-export it"
        )
    return manifest


def metadata_props(manifest: GraphManifest) -> dict[str, str]:
    """The manifest flattened to ONNX metadata_props: one string (JSON for structures) per key."""
    return {
        f"omniseg_rt.{k}": v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in manifest.to_dict().items()
    }
