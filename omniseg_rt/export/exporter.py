"""``export_graphs``: checkpoint -> one verified ONNX graph per tissue set, with manifests."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniseg_rt import __version__
from omniseg_rt.errors import ExportError, InvalidInputError
from omniseg_rt.graph_manifest import INPUT_NAME, OUTPUT_NAME, GraphManifest, metadata_props, write_manifest
from omniseg_rt.tissues import SCALE_GROUPS, Tissue, parse_tissues

log = logging.getLogger(__name__)

MIN_OPSET = 17  # TensorRT 10/11 parse static opsets >= 17 best; older ones lack ops we rely on
DEFAULT_DIR = Path("export")


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    manifest_path: Path
    manifest: GraphManifest


def graph_sets(spec: str | None) -> list[tuple[str, tuple[Tissue, ...]]]:
    """(name, tissues) per graph: one per scale group by default, else the one set ``spec`` names."""
    if spec is None:
        return [(g.name, g.tissues) for g in SCALE_GROUPS]
    tissues = parse_tissues(spec)
    group_names = [g.name for g in SCALE_GROUPS if g.tissues == tissues]
    name = "all" if len(tissues) == 6 else group_names[0] if group_names else "-".join(t.abbrev for t in tissues)
    return [(name, tissues)]


def output_paths(model_path: Path, names: list[str], out: str | os.PathLike | None) -> list[Path]:
    """Where each graph goes: ``out`` as a file (one graph), a name prefix (several) or a folder."""
    if out is not None and str(out).endswith(".onnx"):
        target = Path(out)
        if len(names) == 1:
            return [target]
        return [target.with_name(f"{target.stem}_{n}.onnx") for n in names]
    folder = DEFAULT_DIR if out is None else Path(out)
    return [folder / f"{model_path.stem}_{n}.onnx" for n in names]


def _validate(window: int, opset: int) -> None:
    if window < 16 or window % 16:
        raise InvalidInputError(f"--window {window}: must be a positive multiple of 16 (e.g. 256 or 512)")
    if opset < MIN_OPSET:
        raise InvalidInputError(f"--opset {opset}: must be at least {MIN_OPSET} (TensorRT 10/11 need it)")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"omniseg_rt": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import onnxsim

        versions["onnxsim"] = onnxsim.__version__
    except ImportError:
        pass
    return versions


def export_graphs(
    model_path: str | os.PathLike,
    tissues: str | None = None,
    out: str | os.PathLike | None = None,
    opset: int = MIN_OPSET,
    window: int = 512,
    verify_images: np.ndarray | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[ExportedGraph]:
    """Export a checkpoint to fused, class-conditioned ONNX graphs and verify each.

    Args:
        model_path: an Omni-Seg checkpoint (ours or the original code's, either family).
        tissues: ``None`` for one graph per scale group, else a selection (``"all"``,
            ``"10x"``, ``"DT,PT"``) for one graph.
        out: a ``.onnx`` path, a folder, or ``None`` for ``./export/``.
        opset: ONNX opset (>= 17).
        window: nominal window side in pixels (graphs accept any multiple of 16).
        verify_images: uint8 [B, 3, H, W] real tissue for the parity check (default: four
            256x256 patches of the bundled sample slide; the graphs are size-agnostic).

    Returns:
        One :class:`ExportedGraph` per graph written.

    Raises:
        InvalidInputError, CheckpointError: bad arguments or checkpoint (before any work).
        ExportError: a graph broke the rules or missed PyTorch parity; nothing is written for it.
    """
    from omniseg_rt._optional import require

    _validate(window, opset)
    sets = graph_sets(tissues)
    for module in ("torch", "onnx"):
        require(module, "export ONNX graphs")
    from omniseg_rt.data import sample_windows
    from omniseg_rt.export import onnx_graph, parity
    from omniseg_rt.export.wrapper import FusedGraph, flops_per_window
    from omniseg_rt.fileutil import sha256_file
    from omniseg_rt.model import load_checkpoint

    source = Path(model_path)
    model = load_checkpoint(source)
    source_sha = sha256_file(source)
    paths = output_paths(source, [name for name, _ in sets], out)
    images = sample_windows(4, 256) if verify_images is None else np.ascontiguousarray(verify_images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"verify_images must be uint8 [B, 3, H, W], got {images.dtype} {images.shape}")
    versions = _versions()
    results = []
    for (name, chosen), path in zip(sets, paths):
        notify = on_progress or (lambda message: None)
        notify(f"exporting {name} ({', '.join(t.abbrev for t in chosen)})")
        start = time.perf_counter()
        task_ids = [t.task_id for t in chosen]
        module = FusedGraph(model, task_ids, [t.scale_id for t in chosen])
        proto, simplified = onnx_graph.simplify(onnx_graph.to_onnx(module, window, opset))
        half_stored = onnx_graph.store_exact_fp16(proto)
        try:
            onnx_graph.check_graph(proto)
        except AssertionError as exc:
            raise ExportError(f"{source}: graph {name!r} breaks the export rules: {exc}") from None
        notify(f"verifying {name} against PyTorch on {len(images)} real windows")
        # Reference: forward_tasks of the same weights in the contiguous format (module.backbone):
        # oneDNN's channels_last path rounds differently, and random weights amplify that to ~1e-3.
        check = parity.compare(
            parity.torch_margins(module.backbone, images, task_ids),
            parity.onnx_margins(proto.SerializeToString(), images),
        )
        if not check["ok"]:
            raise ExportError(
                f"{source}: graph {name!r} differs from PyTorch by {check.get('max_abs_diff')} "
                f"(logit range {check.get('logit_range')}, tolerance {parity.RELATIVE_TOLERANCE} of it); "
                "nothing was written for it"
            )
        groups = sorted({t.group.name for t in chosen})
        manifest = GraphManifest(
            name=name,
            tissues=[{"task_id": t.task_id, "abbrev": t.abbrev, "name": t.name, "scale_id": t.scale_id,
                      "scale_group": t.group.name, "nominal_mpp": t.nominal_mpp} for t in chosen],
            scale_group=groups[0] if len(groups) == 1 else None,
            nominal_mpp=chosen[0].nominal_mpp if len(groups) == 1 else None,
            window=window,
            size_multiple=16,
            input={"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                   "shape": ["batch", 3, "height", "width"], "range": [0, 255]},
            output={"name": OUTPUT_NAME, "dtype": "float32", "layout": "NTHW",
                    "shape": ["batch", len(chosen), "height", "width"],
                    "meaning": "foreground minus background logit; foreground where > 0"},
            family=model.family,
            source={"path": str(source), "sha256": source_sha},
            opset=opset,
            ops=onnx_graph.op_types(proto),
            gflop_per_window=round(flops_per_window(module, window) / 1e9, 3),
            simplified=simplified,
            weights_stored_as_fp16=half_stored,
            parity={**check, "windows": len(images), "runtime": "onnxruntime CPU",
                    "reference": "PyTorch forward_tasks"},
            versions=versions,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx_graph.save(proto, path, metadata_props(manifest))
        manifest_path = write_manifest(path, manifest)  # records the graph's file name and sha256
        log.info("wrote %s (%.1f s, parity %.2e of the logit range)", path, time.perf_counter() - start,
                 check["relative"])
        results.append(ExportedGraph(path, manifest_path, manifest))
    return results
