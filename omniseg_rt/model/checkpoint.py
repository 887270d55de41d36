"""Reading Omni-Seg checkpoints: ours and the original code's, both families.

A checkpoint is a plain ``state_dict`` (``torch.save(model.state_dict())``) or a dict holding it
under ``"model"`` (with ``optimizer``, ``amp`` or our own metadata beside it). Files are always
read with ``weights_only=True``: a pickle that needs code to load is refused.

The original class creates four modules it never uses (``add_0``, ``add_1``, ``x1_resb_add0``,
``x1_resb_add1``; 76,416 parameters). Their tensors are in every upstream checkpoint: they are
checked like every other key, then dropped. :func:`upstream_state_dict` puts them back (freshly
initialised) so that checkpoints we write stay loadable by the original code.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from omniseg_rt.errors import CheckpointError, MissingFileError
from omniseg_rt.fileutil import sha256_file
from omniseg_rt.model.blocks import stage
from omniseg_rt.model.network import CONTROLLER_NAME, FAMILIES, OmniSeg

#: Unused upstream modules: name -> stride of their single 32 -> 32 block (stride != 1 projects).
UNUSED_MODULES = {"add_0": 2, "add_1": 4, "x1_resb_add0": 1, "x1_resb_add1": 1}
_SHOW = 5  # how many offending keys an error message lists


def _unused_modules() -> dict[str, torch.nn.Module]:
    return {name: stage(32, 32, 1, stride) for name, stride in UNUSED_MODULES.items()}


def expected_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Every key of an upstream checkpoint of ``family`` with its shape."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in OmniSeg(family).state_dict().items()}
        for name, module in _unused_modules().items():
            shapes.update({f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
    return shapes


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file safely.

    Returns:
        (state_dict, extras): the tensors (``module.`` prefixes removed) and every other
        top-level entry of a ``{"model": ...}`` checkpoint (empty for a plain state_dict).

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: not a PyTorch file, a pickle that needs code, or no state_dict inside.
    """
    file = Path(path)
    if not file.exists():
        raise MissingFileError(f"{file}: no such checkpoint file")
    if not file.is_file():
        raise CheckpointError(f"{file}: is a directory, not a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter from the weights-only unpickler
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, KeyError, EOFError...
        text = str(exc)
        needs_code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs_code:
            raise CheckpointError(
                f"{file}: refused to load: the file holds a pickled Python object "
                f"({needs_code.group(1)}) that would need code to run; checkpoints are read with "
                "torch.load(weights_only=True). Re-save only the weights with "
                "torch.save(model.state_dict(), path) where the file was made"
            ) from None
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        detail = "" if not lines or text.startswith("Weights only") else f": {lines[0][:160]}"
        reason = f"{type(exc).__name__}{detail}"
        raise CheckpointError(
            f"{file}: not a PyTorch checkpoint, or a truncated one ({reason}); "
            "expected a state_dict written by torch.save"
        ) from None
    extras: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        extras = {k: v for k, v in obj.items() if k != "model"}
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{file}: holds a {type(obj).__name__} that is not a state_dict (a dict of tensors), "
            "nor a dict with the state_dict under 'model'"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), extras


def detect_family(state: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Tell the family from the controller's key; raise a CheckpointError listing the key problems."""
    found = [f for f, name in CONTROLLER_NAME.items() if f"{name}.weight" in state]
    if len(found) == 1:
        return found[0]
    # Neither (or both): report against the family whose key set is closest.
    keys = set(state)
    family = min(FAMILIES, key=lambda f: len(keys ^ set(expected_shapes(f))))
    expected = set(expected_shapes(family))
    missing = sorted(expected - keys)[:_SHOW]
    unexpected = sorted(keys - expected)[:_SHOW]
    raise CheckpointError(
        f"{source}: not an Omni-Seg checkpoint of either family (MIDL or scale-aware); "
        f"closest is {family!r}; first missing keys: {missing or 'none'}; "
        f"first unexpected keys: {unexpected or 'none'}"
    )


def check_state(state: dict[str, torch.Tensor], family: str, source: str = "checkpoint") -> None:
    """Strict key and shape matching against the upstream layout of ``family``."""
    expected = expected_shapes(family)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: keys do not match the {family!r} Omni-Seg layout: "
            f"{len(missing)} missing (first: {missing[:_SHOW]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:_SHOW]})"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors have the wrong shape for the {family!r} layout: "
            + "; ".join(wrong[:_SHOW])
        )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> OmniSeg:
    """Load an Omni-Seg checkpoint of either family into an eval-mode :class:`OmniSeg`.

    The weights are float32 in channels_last memory format on ``device``.
    """
    state, _ = read_checkpoint(path)
    family = detect_family(state, str(path))
    check_state(state, family, str(path))
    model = OmniSeg(family)
    used = {k: v for k, v in state.items() if k.split(".", 1)[0] not in UNUSED_MODULES}
    model.load_state_dict(used, strict=True)
    model.source_path = str(path)
    return model.to(device=device, memory_format=torch.channels_last).eval()


def upstream_state_dict(model: OmniSeg, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model``'s weights in the original code's layout, the unused modules included.

    The unused modules get deterministic default-initialised tensors (``seed``): the original
    network never runs them, but its class needs them for strict loading.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in _unused_modules().items():
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return state


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What ``omniseg-rt inspect`` shows for a checkpoint: family, parameters, tissues, hash."""
    from omniseg_rt.tissues import TISSUES

    state, extras = read_checkpoint(path)
    family = detect_family(state, str(path))
    check_state(state, family, str(path))
    total = sum(v.numel() for v in state.values())
    unused = sum(v.numel() for k, v in state.items() if k.split(".", 1)[0] in UNUSED_MODULES)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    meta = extras.get("omniseg_rt") if isinstance(extras.get("omniseg_rt"), dict) else None
    return {
        "kind": "checkpoint",
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
        "family": family,
        "family_description": FAMILIES[family],
        "parameters": total,
        "parameters_used": total - unused,
        "tensors": len(state),
        "dtypes": dtypes,
        "tissues": [
            {"task_id": t.task_id, "abbrev": t.abbrev, "name": t.name, "scale": t.group.name}
            for t in TISSUES
        ],
        "extra_keys": sorted(extras),
        "metadata": meta,
    }
