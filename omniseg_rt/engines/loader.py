"""``open_engine``: an engine directory -> an :class:`Engine`, after checking it fits this machine."""

from __future__ import annotations

import os
from pathlib import Path

from omniseg_rt.engines import registry
from omniseg_rt.engines.base import Engine, GraphRunner, GraphSpec
from omniseg_rt.engines.manifest import EngineManifest, read_engine_manifest
from omniseg_rt.hardware import default_threads


def graph_specs(manifest: EngineManifest) -> list[GraphSpec]:
    return [GraphSpec(name=g.name, tissues=tuple(g.tissues), scale_group=g.scale_group, nominal_mpp=g.nominal_mpp,
                      file=g.file) for g in manifest.graphs]


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int | None = None) -> GraphRunner:
    """The backend runner for one graph of an engine directory (backends imported lazily)."""
    threads = threads or manifest.threads or default_threads()
    return registry.backend(manifest.backend).make_runner(folder, manifest, spec, threads)


def open_engine_unchecked(folder: Path, manifest: EngineManifest, threads: int | None = None) -> Engine:
    """Load every graph of ``manifest`` (already validated, or being built) from ``folder``."""
    runners: list[GraphRunner] = []
    try:
        for spec in graph_specs(manifest):
            runners.append(make_runner(folder, manifest, spec, threads))
    except BaseException:
        for runner in runners:
            runner.close()
        raise
    return Engine(folder, manifest, runners)


def open_engine(path: str | os.PathLike, threads: int | None = None) -> Engine:
    """Open an engine directory: validate its manifest and files, then load every graph.

    ``threads`` overrides the thread count recorded at build time (CPU backends).
    """
    folder = Path(path)
    manifest = read_engine_manifest(folder)
    registry.backend(manifest.backend).check_can_open(folder, manifest)
    return open_engine_unchecked(folder, manifest, threads)
