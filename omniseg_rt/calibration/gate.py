"""The accuracy gate: a reduced-precision engine must agree with fp32 on real tissue, or no build.

Agreement per tissue: Dice of the binary masks (margin > 0) of the candidate against the fp32
reference over all gate windows (1.0 when both are empty), plus the max and mean |logit
difference|. Default threshold: Dice >= 0.97 for every tissue.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omniseg_rt.metrics import dice
from omniseg_rt.tissues import TISSUES

DEFAULT_MIN_DICE = 0.97


@dataclass
class GateResult:
    threshold: float
    windows: int
    rows: list[dict] = field(default_factory=list)  # per tissue: abbrev, dice, max_abs, mean_abs

    @property
    def passed(self) -> bool:
        return all(row["dice"] >= self.threshold for row in self.rows)

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "windows": self.windows, "passed": self.passed, "tissues": self.rows}


def compare_margins(tissues: list[int], reference: np.ndarray, candidate: np.ndarray) -> list[dict]:
    """Per-tissue agreement of two margin arrays [B, T, H, W]."""
    rows = []
    for i, task in enumerate(tissues):
        ref, got = reference[:, i], candidate[:, i]
        diff = np.abs(ref.astype(np.float64) - got)
        rows.append({
            "task_id": task,
            "abbrev": TISSUES[task].abbrev,
            "dice": round(dice(ref > 0, got > 0), 5),
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "foreground_fraction": float((ref > 0).mean()),
        })
    return rows


def run_gate(
    tissues: list[int],
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    windows: np.ndarray,
    threshold: float = DEFAULT_MIN_DICE,
    batch: int = 4,
) -> GateResult:
    """Run both engines over ``windows`` (uint8 [N, 3, H, W]) in batches and compare."""
    refs, cands = [], []
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        refs.append(reference(chunk))
        cands.append(candidate(chunk))
    rows = compare_margins(tissues, np.concatenate(refs), np.concatenate(cands))
    return GateResult(threshold=threshold, windows=len(windows), rows=rows)


GATE_WINDOWS = 4  # sample-slide windows per graph when there is no calibration set


def gate_engine(folder: Path, manifest, threads: int, min_dice: float, notify, calibration=None) -> dict:
    """The accuracy gate of a reduced-precision engine being built in ``folder``: run it and the fp32
    reference (the graphs in ``folder/reference`` in ONNX Runtime on the CPU) on real windows (the
    calibration set's held-out part, else the bundled sample slide); the gate's record for the
    manifest (``passed`` says whether every tissue reached ``min_dice``)."""
    from omniseg_rt.calibration.sampling import calibration_windows
    from omniseg_rt.data import sample_windows
    from omniseg_rt.engines.loader import graph_specs, make_runner
    from omniseg_rt.engines.onnxruntime_backend import OnnxRuntimeRunner

    results, sources = [], set()
    for spec in graph_specs(manifest):
        if calibration is not None:
            windows = calibration_windows(calibration, spec.tissues, "holdout")
            sources.add("held-out calibration windows")
        else:
            windows = sample_windows(GATE_WINDOWS, manifest.window)
            sources.add("bundled sample slide")
        notify(f"accuracy gate: {spec.name} {manifest.precision} vs fp32 on {len(windows)} windows")
        candidate = make_runner(folder, manifest, spec, threads)
        fp32 = folder / "reference" / Path(spec.file).name
        reference = OnnxRuntimeRunner(spec, fp32 if fp32.is_file() else folder / spec.file, threads,
                                      folder / "cache" / "reference")
        try:
            results.append(run_gate(list(spec.tissues), reference.infer, candidate.infer, windows, min_dice))
        finally:
            candidate.close()
            reference.close()
        shutil.rmtree(folder / "cache" / "reference", ignore_errors=True)
    rows = [row for result in results for row in result.rows]
    return {"threshold": results[0].threshold, "windows": sum(r.windows for r in results),
            "source": ", ".join(sorted(sources)),
            "reference": "fp32 graph in ONNX Runtime CPU", "passed": all(r.passed for r in results),
            "tissues": rows}
