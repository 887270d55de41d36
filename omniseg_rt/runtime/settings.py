"""What a segment run was asked for; its ``key`` decides whether earlier work can be resumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from omniseg_rt.tissues import SCALE_GROUPS, TISSUES

#: Default context around each window's valid centre, in pixels of the group (see DEVELOPERS.md,
#: "Overlap": chosen by benchmarks/bench_overlap.py).
DEFAULT_OVERLAP = 128
#: How overlapping windows are combined (``runtime/stitch.py``; chosen by bench_overlap.py).
DEFAULT_BLEND = "gaussian"


@dataclass(frozen=True)
class SegmentSettings:
    """``tissues``: task ids; ``mpp``: the slides' pixel size override (um/px); ``group_mpp``:
    each scale group's target pixel size; ``window``/``overlap`` in group pixels; ``batch``:
    windows per engine call; ``readers``: how many read windows, ``read_with`` "threads" (of this
    process) or "processes" (workers, each with its own slide handle: to feed a GPU);
    ``write_processes``: processes tracing polygons while outputs are written (0: none);
    ``write_slides``: slides whose outputs are written at once (each on its own thread, while the
    next slide computes); ``blend``: "gaussian" (weighted mean of
    the overlapping windows' margins) or "none" (each window's centre cell only); ``exclusive``:
    also write one label per pixel across tissues (``outputs/exclusive.py``)."""

    tissues: tuple[int, ...] = tuple(t.task_id for t in TISSUES)
    mpp: float | None = None
    group_mpp: dict[str, float] = field(default_factory=lambda: {g.name: g.nominal_mpp for g in SCALE_GROUPS})
    window: int = 512
    overlap: int = DEFAULT_OVERLAP
    blend: str = DEFAULT_BLEND
    exclusive: bool = False
    batch: int = 4
    readers: int = 2
    read_with: str = "threads"
    write_processes: int = 0
    write_slides: int = 1
    resume: bool = True
    force: bool = False

    def key(self) -> dict:
        """The settings that change pixels (a resume needs the same)."""
        d = asdict(self)
        return {k: d[k] for k in ("tissues", "mpp", "group_mpp", "window", "overlap", "blend", "exclusive", "batch")}

    def as_dict(self) -> dict:
        return asdict(self)
