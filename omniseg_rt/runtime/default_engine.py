"""The engine ``segment`` uses when given none: the OpenVINO CPU engine of the bundled demo
model's all-tissue graph (no PyTorch needed), built once and cached under ``$OMNISEG_RT_CACHE``
(else ``$XDG_CACHE_HOME/omniseg-rt``, else ``~/.cache/omniseg-rt``), keyed by the graph's hash and
omniseg-rt's version; rebuilt when the cached one no longer opens (e.g. after an OpenVINO upgrade)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from omniseg_rt import __version__
from omniseg_rt.errors import OmnisegError
from omniseg_rt.fileutil import cache_dir, io_errors
from omniseg_rt.folder_lock import FolderLock

if TYPE_CHECKING:
    from omniseg_rt.engines.base import Engine

log = logging.getLogger(__name__)


def open_default_engine(on_progress: Callable[[str], None] | None = None) -> Engine:
    """The cached demo-model CPU engine, opened; built the first time (a minute)."""
    from omniseg_rt.data import demo_graph
    from omniseg_rt.engines import build_engine, open_engine
    from omniseg_rt.fileutil import sha256_file

    model = demo_graph()
    # keyed by the graph and by the version that builds it (a newer build may make a faster engine)
    folder = cache_dir() / "engines" / f"demo-{sha256_file(model)[:12]}-cpu-{__version__}"
    if (folder / "manifest.json").is_file():
        try:
            return open_engine(folder)
        except OmnisegError as exc:  # e.g. another OpenVINO version: build again
            log.warning("cached engine %s is not usable here (%s); building it again", folder, exc)
    with io_errors(folder.parent, "create"):
        folder.parent.mkdir(parents=True, exist_ok=True)
    # one build at a time: a second process waits, then opens what the first one built
    with FolderLock(folder.parent, what="engine cache", wait=True):
        if (folder / "manifest.json").is_file():
            try:
                return open_engine(folder)
            except OmnisegError:
                pass
        log.info("building the demo model's CPU engine once, into %s", folder)
        path, _ = build_engine(model, backend="openvino", out=folder, on_progress=on_progress, device="cpu")
    return open_engine(path)
