"""Tell what kind of artefact a path is and describe it (``omniseg-rt inspect``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omniseg_rt._optional import require
from omniseg_rt.errors import InvalidInputError, MissingFileError


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of a checkpoint, an exported graph or an engine directory.

    Raises:
        MissingFileError: nothing at ``path``.
        InvalidInputError / CheckpointError: not an artefact this version understands.
    """
    target = Path(path)
    if not target.exists():
        raise MissingFileError(f"{target}: no such file or directory")
    if target.is_dir():
        from omniseg_rt.engines.manifest import MANIFEST, read_engine_manifest

        if not (target / MANIFEST).is_file():
            raise InvalidInputError(
                f"{target}: is a directory without {MANIFEST}; expected an engine directory, "
                "a checkpoint (.pth) or a graph (.onnx)"
            )
        return {"kind": "engine", "path": str(target), **read_engine_manifest(target).to_dict()}
    if target.suffix.lower() == ".onnx":
        return describe_graph(target)
    require("torch", "read PyTorch checkpoints")
    from omniseg_rt.model.checkpoint import describe_checkpoint

    return describe_checkpoint(target)


def describe_graph(path: Path) -> dict[str, Any]:
    """An exported graph: its manifest (sidecar, hash-checked) plus the graph's own metadata_props."""
    from omniseg_rt.graph_manifest import read_manifest

    manifest = read_manifest(path)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    embedded = session.get_modelmeta().custom_metadata_map
    inputs = [{"name": i.name, "type": i.type, "shape": i.shape} for i in session.get_inputs()]
    outputs = [{"name": o.name, "type": o.type, "shape": o.shape} for o in session.get_outputs()]
    return {"kind": "onnx", "path": str(path), "bytes": path.stat().st_size, **manifest.to_dict(),
            "graph_inputs": inputs, "graph_outputs": outputs, "metadata_props": sorted(embedded)}
