"""Shared fixtures: the real data in ../shared and the upstream conformance checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OMNISEG_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"
PATCHES = SHARED / "data" / "kidney_patches"
SLIDES = SHARED / "data" / "slides"
UPSTREAM = {"midl": CONFORMANCE / "upstream_midl_seed0.pth", "scale": CONFORMANCE / "upstream_scale_seed1.pth"}


def pytest_configure(config):
    if not CONFORMANCE.is_dir():
        raise pytest.UsageError(f"shared test data not found at {SHARED}; set OMNISEG_SHARED")


def read_patch(path: Path) -> np.ndarray:
    """A patch PNG as float32 [3, H, W] RGB in [0, 1] (alpha dropped)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return rgb.transpose(2, 0, 1).copy()


def real_patches(count: int) -> np.ndarray:
    """``count`` real kidney patches, one per tissue folder in turn: float32 [count, 3, 256, 256]."""
    folders = sorted(p for p in PATCHES.iterdir() if p.is_dir())
    images = [sorted(f.rglob("im_*.png")) for f in folders]
    images = [[p for p in group if "_mask_" not in p.name] for group in images]
    picks = [images[i % len(images)][i // len(images)] for i in range(count)]
    return np.stack([read_patch(p) for p in picks])


def run_cli(*args: str, block_torch: bool = False, cwd: Path | None = None, env: dict[str, str] | None = None,
            block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``omniseg-rt`` in a fresh interpreter; optionally with ``import torch`` (and the
    packages in ``block``) made to fail, and extra environment variables."""
    blocked = (("torch",) if block_torch else ()) + tuple(block)
    prelude = "".join(f"import sys; sys.modules[{name!r}] = None; " for name in blocked)
    code = prelude + "import sys; from omniseg_rt.cli import main; sys.argv = ['omniseg-rt', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def upstream_models():
    from omniseg_rt.model import load_checkpoint

    return {family: load_checkpoint(path) for family, path in UPSTREAM.items()}


@pytest.fixture(scope="session")
def demo_engine(tmp_path_factory):
    """The bundled model's CPU engine (one graph per scale group), built once per test session."""
    from omniseg_rt.engines import build_engine

    path, _ = build_engine(None, out=tmp_path_factory.mktemp("engine") / "demo", device="cpu")
    return path


@pytest.fixture(scope="session")
def cmu_10x(demo_engine, tmp_path_factory):
    """An uninterrupted run: the CMU slide's folder after segmenting its 10x group (12 windows of 512)."""
    from omniseg_rt.runtime import segment

    out = tmp_path_factory.mktemp("reference")
    [result] = segment(SLIDES / "CMU-1-Small-Region.svs", engine=demo_engine, out=out, tissues="10x")
    assert result.status == "done", result.reason
    return out / "CMU-1-Small-Region"
