"""House rules that keep the serving path light: no torch there, imports point downstream."""

import ast
import subprocess
import sys

from conftest import REPO, UPSTREAM, run_cli

#: Packages of the serving path (rule 2); those not written yet are skipped.
SERVING = ["omniseg_rt", "omniseg_rt.cli", "omniseg_rt.tissues", "omniseg_rt.artifacts", "omniseg_rt.slide",
           "omniseg_rt.runtime", "omniseg_rt.engines", "omniseg_rt.outputs"]

#: package -> packages it must never import (rule 1: imports point downstream only).
FORBIDDEN = {
    "engines": {"runtime", "slide", "cli", "distributed", "train"},
    "slide": {"runtime", "engines", "cli", "outputs", "distributed"},
    "outputs": {"runtime", "cli", "distributed"},
    "runtime": {"cli", "distributed", "train"},
    "model": {"cli", "engines", "runtime", "slide", "outputs", "export", "calibration", "distributed"},
    "export": {"cli", "engines", "runtime", "slide", "outputs", "distributed"},
    "train": {"cli", "engines", "runtime", "outputs", "distributed"},
    "calibration": {"cli", "runtime", "distributed", "train"},
}
#: modules at the package root that everything may use: they import no stage package
ROOT_LEAVES = ("errors", "tissues", "fileutil", "hardware", "metrics", "graph_manifest",
               "folder_lock", "_optional")
for _leaf in ROOT_LEAVES:
    FORBIDDEN[_leaf] = {"cli", "runtime", "distributed", "train", "engines", "slide", "outputs", "model", "export",
                        "calibration", "data", "evaluate"}


def test_serving_path_imports_no_torch():
    present = [m for m in SERVING if (REPO / (m.replace(".", "/"))).exists()
               or (REPO / (m.replace(".", "/") + ".py")).exists()]
    code = (
        "import importlib, sys\n"
        f"for m in {present!r}: importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'ray') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"serving path imported {result.stdout.strip()}"


def test_help_without_torch():
    result = run_cli("--help", block_torch=True)
    assert result.returncode == 0, result.stderr
    assert "inspect" in result.stdout


def test_inspect_without_torch_says_what_to_install():
    result = run_cli("inspect", str(UPSTREAM["midl"]), block_torch=True)
    assert result.returncode == 1
    assert "pip install 'omniseg-rt[train]'" in result.stderr
    assert "Traceback" not in result.stderr


def _imported_packages(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "omniseg_rt" and len(parts) > 1:
                yield parts[1]


def test_imports_point_downstream():
    package = REPO / "omniseg_rt"
    offences = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).parts
        owner = rel[0] if len(rel) > 1 else path.stem
        for target in _imported_packages(path):
            entry_point = owner in ("cli", "__main__")
            if target in FORBIDDEN.get(owner, set()) or (target == "cli" and not entry_point):
                offences.append(f"{path.relative_to(REPO)} imports omniseg_rt.{target}")
    assert not offences, "\n".join(offences)
