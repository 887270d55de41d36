"""THE table of the six Omni-Seg tissue types and their three scale groups.

Task ids and scale ids are fixed by the checkpoints (``docs/omniseg-network.md``). Nothing else
in the package hard-codes an id, a magnification or a colour: import them from here.

Nominal pixel sizes assume the usual 40x = 0.25 um/px; a slide states its own pixel size and the
runtime resamples each scale group to its group's ``nominal_mpp``.
"""

from __future__ import annotations

from dataclasses import dataclass

from omniseg_rt.errors import InvalidInputError

#: Scale id -> magnification, as the scale-aware controller's one-hot (id 2 = 20x is unused).
SCALE_MAGNIFICATIONS = {0: 5, 1: 10, 2: 20, 3: 40}
NUM_TASKS = 6
NUM_SCALES = 4


@dataclass(frozen=True)
class Tissue:
    """One tissue type the network segments.

    ``nominal_mpp`` is in micrometres per pixel; ``colour`` is an (R, G, B) triple of 0-255.
    """

    task_id: int
    abbrev: str
    name: str
    scale_id: int
    magnification: int
    nominal_mpp: float
    folder: str
    mask_suffix: str
    colour: tuple[int, int, int]

    @property
    def group(self) -> ScaleGroup:
        """The scale group this tissue is segmented in."""
        return GROUP_OF_SCALE[self.scale_id]


@dataclass(frozen=True)
class ScaleGroup:
    """Tissues segmented at one magnification, from one backbone pass per window."""

    name: str  # "5x", "10x", "40x"
    scale_id: int
    magnification: int
    nominal_mpp: float
    task_ids: tuple[int, ...]

    @property
    def tissues(self) -> tuple[Tissue, ...]:
        return tuple(TISSUES[t] for t in self.task_ids)


TISSUES: tuple[Tissue, ...] = (
    Tissue(0, "DT", "distal tubule", 1, 10, 1.0, "0_1_dt", "_mask_distal", (255, 200, 0)),
    Tissue(1, "PT", "proximal tubule", 1, 10, 1.0, "1_1_pt", "_mask_proximal", (0, 170, 255)),
    Tissue(2, "CAP", "glomerular unit", 0, 5, 2.0, "2_0_capsule", "_mask_capsule", (0, 200, 80)),
    Tissue(3, "TUFT", "glomerular tuft", 0, 5, 2.0, "3_0_tuft", "_mask_tuft", (230, 40, 40)),
    Tissue(4, "VES", "artery", 1, 10, 1.0, "4_1_vessel", "_mask_vessel", (170, 60, 230)),
    Tissue(
        5, "PTC", "peritubular capillary", 3, 40, 0.25, "5_3_ptc", "_mask_PTC_lumen", (255, 110, 180)
    ),
)

SCALE_GROUPS: tuple[ScaleGroup, ...] = (
    ScaleGroup("5x", 0, 5, 2.0, (2, 3)),
    ScaleGroup("10x", 1, 10, 1.0, (0, 1, 4)),
    ScaleGroup("40x", 3, 40, 0.25, (5,)),
)

GROUP_OF_SCALE = {g.scale_id: g for g in SCALE_GROUPS}
_BY_ABBREV = {t.abbrev: t for t in TISSUES}
_GROUP_BY_NAME = {g.name: g for g in SCALE_GROUPS}


def tissue(key: int | str) -> Tissue:
    """Look a tissue up by task id (0-5) or abbreviation (``"PT"``, case-insensitive)."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < NUM_TASKS:
        return TISSUES[key]
    if isinstance(key, str) and key.strip().upper() in _BY_ABBREV:
        return _BY_ABBREV[key.strip().upper()]
    known = ", ".join(f"{t.abbrev} ({t.task_id})" for t in TISSUES)
    raise InvalidInputError(f"unknown tissue {key!r}; known tissues: {known}")


def scale_group(name: str) -> ScaleGroup:
    """Look a scale group up by name (``"5x"``, ``"10x"``, ``"40x"``)."""
    group = _GROUP_BY_NAME.get(name.strip().lower())
    if group is None:
        raise InvalidInputError(
            f"unknown scale group {name!r}; known groups: {', '.join(_GROUP_BY_NAME)}"
        )
    return group


def parse_tissues(spec: str) -> tuple[Tissue, ...]:
    """Parse a tissue selection as the CLI takes it, in task-id order, without duplicates.

    ``"all"`` -> the six tissues; ``"5x"``/``"10x"``/``"40x"`` -> that group's tissues;
    otherwise a comma-separated list of abbreviations or task ids (``"DT,PT"``, ``"0,1"``).
    """
    text = spec.strip()
    if not text:
        raise InvalidInputError("empty tissue selection; use 'all', a scale group or e.g. 'DT,PT'")
    if text.lower() == "all":
        return TISSUES
    ids: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if part.lower() in _GROUP_BY_NAME:
            ids.update(_GROUP_BY_NAME[part.lower()].task_ids)
        elif part.isdigit():
            ids.add(tissue(int(part)).task_id)
        else:
            ids.add(tissue(part).task_id)
    return tuple(TISSUES[t] for t in sorted(ids))
