"""Build profiles: TOML files naming backend, precision, batch range, window, workspace, threads.

Shipped profiles live in ``omniseg_rt/engines/profiles/`` (``engines/profiles`` in the repo points
there): cpu, cpu-int8, gpu-fp16, gpu-int8, jetson-orin-fp16, jetson-orin-int8. ``--profile``
takes one of those names or a path to a TOML file of the same form.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omniseg_rt.engines import registry
from omniseg_rt.errors import InvalidInputError, MissingFileError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHIPPED = Path(__file__).with_name("profiles")
BACKENDS = ("auto", *registry.BACKENDS)
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
CUDA_GRAPHS_GONE = ("CUDA graphs are not available: pycuda, which the TensorRT runtime uses, has no graph-capture "
                    "API in any release, so the option never captured anything; remove it (engines run the same)")


@dataclass(frozen=True)
class Profile:
    """Build settings. ``threads`` 0 = every core this process may use; ``workspace_mb`` 0 = default."""

    name: str = "default"
    backend: str = "auto"
    precision: str = "auto"
    window: int = 512
    batch_min: int = 1
    batch_opt: int = 4
    batch_max: int = 8
    workspace_mb: int = 0
    threads: int = 0
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(profile: Profile, source: str = "profile") -> Profile:
    problems = []
    if profile.backend not in BACKENDS:
        problems.append(f"backend {profile.backend!r} (choose from {', '.join(BACKENDS)})")
    if profile.precision not in PRECISIONS:
        problems.append(f"precision {profile.precision!r} (choose from {', '.join(PRECISIONS)})")
    if profile.window < 16 or profile.window % 16:
        problems.append(f"window {profile.window} (a positive multiple of 16)")
    if not 1 <= profile.batch_min <= profile.batch_opt <= profile.batch_max:
        problems.append(f"batch range {profile.batch_min}/{profile.batch_opt}/{profile.batch_max} "
                        "(need 1 <= min <= opt <= max)")
    if profile.threads < 0 or profile.workspace_mb < 0:
        problems.append("threads and workspace_mb must be >= 0")
    if problems:
        raise InvalidInputError(f"{source}: invalid settings: {'; '.join(problems)}")
    return profile


def parse_profile(text: str, name: str, source: str) -> Profile:
    """Parse a TOML profile; unknown keys are errors (a typo must not be silently ignored)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{source}: not valid TOML ({exc})") from None
    batch = data.pop("batch", {})
    if not isinstance(batch, dict):
        raise InvalidInputError(f"{source}: [batch] must be a table with min, opt, max")
    flat = {**data, **{f"batch_{k}": v for k, v in batch.items()}}
    if flat.pop("cuda_graphs", False):
        raise InvalidInputError(f"{source}: cuda_graphs = true: {CUDA_GRAPHS_GONE}")
    known = set(Profile.__dataclass_fields__) - {"name"}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise InvalidInputError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
    try:
        return validate(Profile(name=name, **flat), source)
    except TypeError as exc:
        raise InvalidInputError(f"{source}: {exc}") from None


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """A shipped profile by name (``cpu``) or a TOML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and (SHIPPED / f"{text}.toml").is_file():
        path = SHIPPED / f"{text}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise MissingFileError(f"{text}: no such profile; shipped profiles: {shipped}; or give a .toml path")
    return parse_profile(path.read_text(), path.stem, str(path))
