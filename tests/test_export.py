"""Export: fused, class-conditioned ONNX graphs, checked against PyTorch with ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import UPSTREAM, real_patches, run_cli
from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.export import export_graphs
from omniseg_rt.export.parity import onnx_margins
from omniseg_rt.fileutil import sha256_file
from omniseg_rt.graph_manifest import read_manifest
from omniseg_rt.model import load_checkpoint

GRAPHS = ["5x", "10x", "40x", "all"]


def kidney_windows(batch: int, size: int) -> np.ndarray:
    """uint8 [batch, 3, size, size]: real kidney patches, tiled 2x2 into 512 windows."""
    patches = (real_patches(batch * (size // 256) ** 2) * 255).round().astype(np.uint8)
    if size == 256:
        return patches
    tiles = patches.reshape(batch, 2, 2, 3, 256, 256)
    return np.ascontiguousarray(tiles.transpose(0, 3, 1, 4, 2, 5).reshape(batch, 3, 512, 512))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(family, graph name): path} for one export per scale group and one of all tissues."""
    out = tmp_path_factory.mktemp("export")
    verify = kidney_windows(2, 256)
    paths = {}
    for family, checkpoint in UPSTREAM.items():
        graphs = export_graphs(checkpoint, out=out / family, verify_images=verify)
        graphs += export_graphs(checkpoint, tissues="all", out=out / family / "all.onnx", verify_images=verify)
        for graph in graphs:
            paths[family, graph.manifest.name] = graph.path
    return paths


@pytest.fixture(scope="module")
def contiguous_models():
    """The reference: forward_tasks in the contiguous format (see exporter.py on channels_last)."""
    return {f: load_checkpoint(p).to(memory_format=torch.contiguous_format) for f, p in UPSTREAM.items()}


@pytest.mark.parametrize("family", ["midl", "scale"])
@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("batch, size", [(5, 256), (1, 512)])
def test_parity_with_pytorch(exported, contiguous_models, family, name, batch, size):
    path = exported[family, name]
    manifest = read_manifest(path)
    task_ids = manifest.task_ids
    images = kidney_windows(batch, size)
    got = onnx_margins(path.read_bytes(), images, threads=2)
    with torch.inference_mode():
        logits = contiguous_models[family].forward_tasks(torch.from_numpy(images).float() / 255.0, task_ids)
    want = (logits[:, :, 1] - logits[:, :, 0]).numpy()
    assert got.shape == (batch, len(task_ids), size, size) and got.dtype == np.float32
    span = want.max() - want.min()
    assert np.abs(got - want).max() <= 1e-4 * span
    assert ((got > 0) == (want > 0)).mean() > 0.999


def test_graph_sets_and_tissue_order(exported):
    expected = {"5x": [2, 3], "10x": [0, 1, 4], "40x": [5], "all": [0, 1, 2, 3, 4, 5]}
    for (family, name), path in exported.items():
        manifest = read_manifest(path)
        assert manifest.task_ids == expected[name]
        assert manifest.family == family
        assert manifest.scale_group == (None if name == "all" else name)


def test_graph_structure(exported):
    for path in exported.values():
        model = onnx.load(str(path))
        ops = {node.op_type for node in model.graph.node}
        assert not ops & {"Loop", "If", "Scan", "NonZero", "Einsum"}
        initializers = {init.name for init in model.graph.initializer}
        convs = [node for node in model.graph.node if node.op_type == "Conv"]
        assert len(convs) >= 30
        for node in convs:
            assert all(a.i == 1 for a in node.attribute if a.name == "group")
            assert node.input[1] in initializers
        assert "MatMul" in ops
        assert model.opset_import[0].version == 17
        (image,) = model.graph.input
        dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
        assert image.name == "image" and dims == ["batch", 3, "height", "width"]
        assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_metadata_embedded_and_sidecar(exported):
    path = exported["scale", "10x"]
    manifest = read_manifest(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["omniseg_rt.tissues"]) == manifest.tissues
    assert props["omniseg_rt.family"] == "scale"
    assert manifest.source["sha256"] == sha256_file(UPSTREAM["scale"])
    assert manifest.graph_sha256 == sha256_file(path)
    assert manifest.nominal_mpp == 1.0 and manifest.window == 512
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.parity["ok"] and manifest.parity["relative"] <= 1e-4


def test_tampered_or_incomplete_graph_is_refused(exported, tmp_path):
    source = exported["midl", "40x"]
    graph = tmp_path / source.name
    graph.write_bytes(source.read_bytes()[:-1] + b"\x00")
    with pytest.raises(MissingFileError, match=".json"):
        read_manifest(graph)
    graph.with_suffix(".json").write_text(source.with_suffix(".json").read_text())
    with pytest.raises(InvalidInputError, match="changed after export"):
        read_manifest(graph)
    # one typed reader and writer: the sidecar round-trips; other formats and unknown keys are named
    sidecar = json.loads(source.with_suffix(".json").read_text())
    assert read_manifest(source).to_dict() == sidecar
    for bad, words in (({**sidecar, "format": "omniseg-rt.onnx/2"}, "written by a newer omniseg-rt"),
                       ({**sidecar, "stride": 3}, r"unknown keys \['stride'\]"),
                       ({k: v for k, v in sidecar.items() if k != "tissues"}, "'tissues' is missing")):
        graph.with_suffix(".json").write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError, match=words):
            read_manifest(graph, verify_hash=False)


def test_inspect_onnx(exported):
    result = run_cli("inspect", str(exported["midl", "all"]), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "onnx" and len(info["tissues"]) == 6
    assert info["graph_outputs"][0]["shape"] == ["batch", 6, "height", "width"]
    human = run_cli("inspect", str(exported["midl", "5x"]))
    assert "CAP" in human.stdout and "MatMul" in human.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tissues", "DT,XYZ"], "unknown tissue 'XYZ'"),
        (["--window", "500"], "multiple of 16"),
        (["--opset", "13"], "at least 17"),
    ],
)
def test_bad_arguments(tmp_path, args, words):
    result = run_cli("export", str(UPSTREAM["midl"]), "--out", str(tmp_path), *args)
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.pth"
    bogus.write_text("not weights")
    result = run_cli("export", str(bogus), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert str(bogus) in result.stderr and "not a PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_export_one_set(tmp_path):
    out = tmp_path / "pt.onnx"
    result = run_cli("export", str(UPSTREAM["scale"]), "--tissues", "PT", "--out", str(out), "--window", "256")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(out)
    assert [t["abbrev"] for t in manifest.tissues] == ["PT"] and manifest.window == 256
