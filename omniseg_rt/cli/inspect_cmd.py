"""``omniseg-rt inspect PATH``: what an artefact is and what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, key_value_table, print_json


def inspect(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pth) or an exported graph (.onnx).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what a checkpoint or exported graph holds: family, tissues, parameters, hashes."""
    from omniseg_rt.artifacts import describe

    info = describe(path)
    if json_out:
        print_json(info)
        return
    rows = _graph_rows(info) if info["kind"] == "onnx" else _checkpoint_rows(info)
    console.print(key_value_table(f"{Path(info['path']).name}", rows))


def _graph_rows(info: dict) -> dict:
    return {
        "path": info["path"],
        "kind": "ONNX graph (fused heads, class-conditioned)",
        "tissues": ", ".join(f"{t['task_id']} {t['abbrev']} ({t['scale_group']})" for t in info["tissues"]),
        "window": f"{info['window']} px at {info['nominal_mpp'] or 'per-tissue'} um/px",
        "input": " ".join(f"{i['name']} {i['type']} {i['shape']}" for i in info["graph_inputs"]),
        "output": " ".join(f"{o['name']} {o['type']} {o['shape']}" for o in info["graph_outputs"]),
        "family": info["family"],
        "opset": info["opset"],
        "ops": ", ".join(info["ops"]),
        "parity": f"{info['parity']['max_abs_diff']:.2e} max |diff| vs PyTorch "
        f"({info['parity']['relative']:.1e} of the logit range)",
        "source sha256": info["source"]["sha256"],
        "graph sha256": info["graph_sha256"],
    }


def _checkpoint_rows(info: dict) -> dict:
    rows = {
        "path": info["path"],
        "kind": info["kind"],
        "family": f"{info['family']}: {info['family_description']}",
        "parameters": f"{info['parameters']:,} ({info['parameters'] - info['parameters_used']:,} "
        "in the four unused upstream modules)",
        "tensors": f"{info['tensors']} ({', '.join(info['dtypes'])})",
        "tissues": ", ".join(f"{t['task_id']} {t['abbrev']} ({t['scale']})" for t in info["tissues"]),
        "bytes": f"{info['bytes']:,}",
        "sha256": info["sha256"],
    }
    if info.get("extra_keys"):
        rows["other entries"] = ", ".join(info["extra_keys"])
    return rows


def register(app: typer.Typer) -> None:
    app.command("inspect")(domain_errors(inspect))
