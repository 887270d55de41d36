"""Is a slide already done *for this request*? What a run asks of a slide, compared with what its
complete outputs (``manifest.json``) or its unfinished work (``.work/key.json``) were made for.

A request is the tissues, the engine (backend, precision, source model), the level-0 pixel size
override, each group's target pixel size, the window, the overlap, the blending and whether the
exclusive label map is wanted (outputs that have it also serve requests without it). Against a
complete slide:

- same settings, tissues already there (a subset is enough): **skip**;
- same settings, tissues missing: **add** them; the outputs then hold the union, and scale groups
  whose tissue set does not change are taken from their existing masks, not computed again;
- other settings: **conflict**, the slide fails with what differs and the way out (``--force``).

``--force`` redoes the slide for exactly this request.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniseg_rt.tissues import SCALE_GROUPS, TISSUES

_COMPARED = ("engine", "mpp", "group_mpp", "window", "overlap", "blend", "exclusive")


def request_of(settings, engine_manifest) -> dict[str, Any]:
    """The request a run with ``settings`` (SegmentSettings) on an engine (its EngineManifest)
    makes of each slide."""
    return {"tissues": list(settings.tissues), "engine": {
        "backend": engine_manifest.backend, "precision": engine_manifest.precision,
        "source_sha256": engine_manifest.source.get("sha256")},
        "mpp": settings.mpp, "group_mpp": dict(settings.group_mpp), "window": settings.window,
        "overlap": settings.overlap, "blend": settings.blend, "exclusive": settings.exclusive}


@dataclass(frozen=True)
class Decision:
    """``action``: run, skip, add or conflict; ``tissues``: what the slide's outputs will hold;
    ``reuse``: scale group -> its tissues, for groups whose masks are taken from the existing
    outputs; ``exclusive``: keep the exclusive label map the existing outputs have; ``reason``:
    one line for the user."""

    action: str
    tissues: tuple[int, ...] = ()
    reuse: dict[str, list[int]] = field(default_factory=dict)
    reason: str | None = None
    exclusive: bool = False


def decide(slide_dir: Path, request: dict[str, Any], force: bool) -> Decision:
    """What to do with ``slide_dir`` for ``request`` (see the module docstring)."""
    wanted = tuple(request["tissues"])
    if force:
        return Decision("run", wanted)
    manifest = read_complete_manifest(slide_dir)
    if manifest is None:
        return Decision("run", _pending_tissues(slide_dir, request) or wanted)
    done = manifest_request(manifest)
    differences = _differences(done, request, manifest)
    if differences:
        return Decision("conflict", reason=(
            f"{slide_dir} is complete for another request ({'; '.join(differences)}); rerun with --force to "
            "replace it with this one, or choose another --out"))
    missing = [t for t in wanted if t not in done["tissues"]]
    if not missing:
        return Decision("skip", reason="complete (use --force to redo)")
    union = tuple(sorted({*done["tissues"], *wanted}))
    exclusive = bool(request.get("exclusive") or done.get("exclusive"))
    reuse = {}
    for group in manifest.get("groups", []):
        tasks = [t for t in union if t in _group_tasks(group.get("group"))]
        if tasks == list(group.get("tissues", [])) and not exclusive:  # the label map needs every group's scores
            reuse[group["group"]] = tasks
    return Decision("add", union, reuse, reason=f"adding {_names(missing)} to the complete {_names(done['tissues'])}",
                    exclusive=exclusive)


def read_complete_manifest(slide_dir: Path) -> dict[str, Any] | None:
    """The slide's ``manifest.json`` if it marks the slide complete, else None."""
    try:
        manifest = json.loads((slide_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("status") == "complete" else None


def manifest_request(manifest: dict[str, Any]) -> dict[str, Any]:
    """The request a complete slide's manifest was made for (older manifests: from its settings,
    the engine unknown)."""
    if isinstance(manifest.get("request"), dict):
        return {"blend": "none", "exclusive": False, **manifest["request"]}  # older: centre crops only
    settings = manifest.get("settings", {})
    return {"tissues": settings.get("tissues", []), "engine": None, "mpp": settings.get("mpp"),
            "group_mpp": settings.get("group_mpp"), "window": settings.get("window"),
            "overlap": settings.get("overlap"), "blend": settings.get("blend", "none"), "exclusive": False}


def _differences(done: dict[str, Any], request: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    out = []
    for key in _COMPARED:
        old, new = done.get(key), request.get(key)
        if key == "engine" and old is None:
            continue  # made before engines were recorded: nothing to compare
        if key == "exclusive":
            if new and not old:
                out.append("no exclusive label map then, --exclusive now")
            continue
        if key == "mpp":
            if _same_mpp(old, new, manifest):
                continue
            out.append(f"level-0 pixel size {_mpp(old)} then, {_mpp(new)} now")
        elif json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
            out.append(f"{key.replace('_', ' ')} {_short(old)} then, {_short(new)} now")
    return out


def _same_mpp(old: float | None, new: float | None, manifest: dict[str, Any]) -> bool:
    if new is None:
        return old is None
    used = manifest.get("geometry", {}).get("mpp")
    return used is not None and math.isclose(float(new), float(used), rel_tol=1e-6)


def _pending_tissues(slide_dir: Path, request: dict[str, Any]) -> tuple[int, ...] | None:
    """The tissues of unfinished work in ``slide_dir/.work`` when it was started for a superset
    of ``request`` with the same settings (an interrupted add): resumed, not thrown away."""
    try:
        key = json.loads((slide_dir / ".work" / "key.json").read_text())
        settings = key["settings"]
        started = tuple(settings["tissues"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = all(json.dumps(settings.get(k), sort_keys=True) == json.dumps(request[k], sort_keys=True)
               for k in ("mpp", "group_mpp", "window", "overlap", "blend"))
    return started if same and set(request["tissues"]) < set(started) else None


def _group_tasks(name: str | None) -> tuple[int, ...]:
    return next((g.task_ids for g in SCALE_GROUPS if g.name == name), ())


def _names(task_ids) -> str:
    return ", ".join(TISSUES[t].abbrev for t in sorted(task_ids))


def _mpp(value: float | None) -> str:
    return "the slide's own" if value is None else f"--mpp {value:g}"


def _short(value: Any) -> str:
    if isinstance(value, dict) and "backend" in value:
        sha = (value.get("source_sha256") or "?")[:12]
        return f"{value.get('backend')} {value.get('precision')} engine of model {sha}"
    return json.dumps(value, sort_keys=True)
