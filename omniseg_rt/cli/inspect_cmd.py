"""``omniseg-rt inspect PATH``: what an artefact is and what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, key_value_table, print_json


def inspect(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pth), an exported graph (.onnx) or an engine directory.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what a checkpoint, exported graph or engine directory holds (family, tissues, hashes)."""
    from omniseg_rt.artifacts import describe

    info = describe(path)
    if json_out:
        print_json(info)
        return
    rows = {"onnx": _graph_rows, "engine": _engine_rows}.get(info["kind"], _checkpoint_rows)(info)
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


def _engine_rows(info: dict) -> dict:
    gate = info.get("accuracy_gate")
    return {
        "path": info["path"],
        "kind": f"engine: {info['backend']} {info['precision']}",
        "graphs": "; ".join(f"{g['name']}: {g['tissues']}" for g in info["graphs"]),
        "window": info["window"],
        "source": f"{info['source']['kind']} {info['source']['path']} (sha256 {info['source']['sha256'][:16]}...)",
        "built on": info["built_on"]["cpu"]["name"] + "".join(f", {g['name']}" for g in info["built_on"]["gpus"]),
        "versions": ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "accuracy gate": "not needed (fp32)" if gate is None else
        f"{'passed' if gate['passed'] else 'FAILED'}{' (forced)' if gate.get('forced') else ''}: "
        + ", ".join(f"{r['abbrev']} {r['dice']:.3f}" for r in gate["tissues"]),
        "build time": f"{info['build_seconds']} s",
        "files": ", ".join(info["files"]),
        **({"compiled": "torch.compile {mode}, batch {batch}, {window} px, for {device_name} (torch {torch}, CUDA {cuda})"
            .format(**info["compiled"])} if info.get("compiled") else {}),
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
