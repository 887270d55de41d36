"""The engine directory's ``manifest.json``: what was built, from what, on what, and checks.

Layout of an engine directory::

    NAME/manifest.json          this file's subject
    NAME/graphs/<set>.onnx      the graph of each tissue set (+ <set>.json, its graph manifest)
    NAME/plans/<set>.plan       TensorRT only: the serialised engine of each graph
    NAME/model.pth              torch backend only: the checkpoint
    NAME/cache/                 backend caches (OpenVINO CACHE_DIR, ORT optimised models, timing cache)

Opening checks the manifest's format, that every listed file exists with its recorded sha256,
and (backend by backend) that this machine can run what was built; every mismatch is named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omniseg_rt.calibration.gate import DEFAULT_MIN_DICE
from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.fileutil import atomic_write_text, read_format_json, sha256_file

FORMAT = "omniseg-rt.engine/1"
MANIFEST = "manifest.json"


def write_engine_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` atomically (temporary name, then rename)."""
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps({"format": FORMAT, **manifest}, indent=2) + "\n")
    return path


def read_engine_manifest(folder: str | os.PathLike, verify_files: bool = True) -> dict[str, Any]:
    """Read and validate an engine directory's manifest.

    Raises:
        MissingFileError: no such directory, no manifest, or a listed file is missing.
        InvalidInputError: not an engine manifest, or a file's sha256 differs from the record.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such engine directory; build one with: omniseg-rt build")
    path = folder / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{folder}: not an engine directory (no {MANIFEST}); build one with: omniseg-rt build")
    manifest = read_format_json(path, FORMAT, "engine manifest", f"rebuild it with: {_rebuild_hint(path)}")
    problems = structure_problems(manifest)
    if problems:
        raise InvalidInputError(f"{path}: a damaged engine manifest ({'; '.join(problems)}); "
                                f"rebuild the engine with: {rebuild_command(manifest)}")
    if verify_files:
        problems = []
        for rel, digest in manifest.get("files", {}).items():
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


def _rebuild_hint(path: Path) -> str:
    """The rebuild command from a manifest of any format, as far as it can be read."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    return rebuild_command(old if isinstance(old, dict) else {})


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
REBUILD_OPTIONS = ("backend", "precision", "tissues", "profile", "calibration", "window", "device",
                   "calibration_method", "int8_tool", "min_dice", "out")
_DEFAULTS = {"calibration_method": "minmax", "int8_tool": "onnxruntime", "min_dice": DEFAULT_MIN_DICE, "device": "auto"}


def rebuild_args(manifest: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``build_engine`` keyword arguments that make this engine again: the same source, backend,
    precision (never ``auto``: an int8 engine comes back int8), tissues, profile, calibration set,
    window, device, quantizer options and graph rewrites; ``overrides`` replace any of them."""
    rebuild = manifest.get("rebuild")
    spec = {**(rebuild if isinstance(rebuild, dict) else {}), **overrides}
    args = {"model": spec.get("source")}
    args.update({option: spec[option] for option in REBUILD_OPTIONS if spec.get(option) is not None})
    if spec.get("graph_rewrites") is False:
        args["graph_rewrites"] = False
    return args


def rebuild_command(manifest: dict[str, Any], **overrides: Any) -> str:
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
