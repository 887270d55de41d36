"""The description every exported ONNX graph carries: a JSON sidecar and ONNX metadata_props.

Serving code (engines, runtime) reads graphs through this module only; it needs no torch and no
``onnx`` package: the sidecar ``<graph>.json`` holds everything, and its ``graph_sha256`` ties
it to the bytes of the graph.
"""

from __future__ import annotations

import json
import os
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


def write_manifest(graph: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write the sidecar beside ``graph`` (with the graph's sha256), atomically."""
    full = {**manifest, "graph_file": Path(graph).name, "graph_sha256": sha256_file(graph)}
    path = sidecar_path(graph)
    atomic_write_text(path, json.dumps(full, indent=2) + "\n")
    return path


def read_manifest(graph: str | os.PathLike, verify_hash: bool = True) -> dict[str, Any]:
    """Read and check the sidecar of ``graph``.

    Raises:
        MissingFileError: the graph or its sidecar is missing.
        InvalidInputError: the sidecar is not ours, or the graph's bytes changed since export.
    """
    graph = Path(graph)
    side = sidecar_path(graph)
    for path in (graph, side):
        if not path.is_file():
            raise MissingFileError(
                f"{path}: not found; every exported graph needs its .onnx and .json side by side "
                "(re-export with: omniseg-rt export CHECKPOINT)"
            )
    manifest = read_format_json(side, FORMAT, "graph manifest", "re-export the graph")
    if verify_hash and sha256_file(graph) != manifest.get("graph_sha256"):
        raise InvalidInputError(
            f"{graph}: its sha256 does not match {side.name}: the graph was changed after export; re-export it"
        )
    return manifest


def metadata_props(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest flattened to ONNX metadata_props: one string (JSON for structures) per key."""
    return {
        f"omniseg_rt.{k}": v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in manifest.items()
    }
