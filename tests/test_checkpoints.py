"""Checkpoint reading: both layouts, and a clear error naming the file for every bad input."""

import pickle

import pytest
import torch

from conftest import UPSTREAM, run_cli
from omniseg_rt.errors import CheckpointError, MissingFileError, OmnisegError
from omniseg_rt.model import load_checkpoint, read_checkpoint, upstream_state_dict
from omniseg_rt.model.checkpoint import describe_checkpoint


@pytest.fixture(scope="module")
def midl_state():
    return torch.load(UPSTREAM["midl"], weights_only=True)


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


class Opaque:  # a class the weights-only unpickler must refuse
    pass


def test_wrapped_prefixed_and_half_checkpoints_load(tmp_path, midl_state):
    reference = load_checkpoint(UPSTREAM["midl"])
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        expected = reference.forward_tasks(x, [0, 5])
    wrapped = _save(tmp_path, "wrapped.pth", {"model": midl_state, "optimizer": {"lr": 1e-3}, "epoch": 3})
    prefixed = _save(tmp_path, "prefixed.pth", {f"module.{k}": v for k, v in midl_state.items()})
    for path in (wrapped, prefixed):
        with torch.inference_mode():
            torch.testing.assert_close(load_checkpoint(path).forward_tasks(x, [0, 5]), expected)
    half = load_checkpoint(_save(tmp_path, "half.pth", {k: v.half() for k, v in midl_state.items()}))
    assert half.conv1.weight.dtype == torch.float32
    assert describe_checkpoint(wrapped)["extra_keys"] == ["epoch", "optimizer"]


def test_upstream_state_dict_round_trip(tmp_path, upstream_models, midl_state):
    """What we write has the original layout: the same keys and shapes, loadable again."""
    state = upstream_state_dict(upstream_models["midl"])
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in midl_state.items()}
    assert sum(v.numel() for v in state.values()) == 6_033_238
    path = _save(tmp_path, "ours.pth", state)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            load_checkpoint(path).forward_tasks(x, [1]), upstream_models["midl"].forward_tasks(x, [1])
        )


def _bad_files(tmp_path, midl_state):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(UPSTREAM["midl"].read_bytes()[:200_000])
    plain_pickle = tmp_path / "pickled.pkl"
    plain_pickle.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    no_controller = {k: v for k, v in midl_state.items() if not k.startswith("controller")}
    missing_one = {k: v for k, v in midl_state.items() if k != "layer2.1.conv1.weight"}
    extra_one = {**midl_state, "classifier.weight": torch.zeros(3)}
    wrong_shape = {**midl_state, "layer3.0.conv2.weight": torch.zeros(256, 256, 1, 1)}
    return {
        "missing": (tmp_path / "nope.pth", MissingFileError, "no such"),
        "directory": (tmp_path, CheckpointError, "directory"),
        "text": (text, CheckpointError, "not a PyTorch checkpoint"),
        "truncated": (truncated, CheckpointError, "truncated"),
        "pickle": (plain_pickle, CheckpointError, "not a PyTorch checkpoint"),
        "needs code": (_save(tmp_path, "code.pth", {"model": Opaque()}), CheckpointError, "Opaque"),
        "not a dict": (_save(tmp_path, "list.pth", [torch.zeros(1)]), CheckpointError, "not a state_dict"),
        "neither family": (_save(tmp_path, "other.pth", no_controller), CheckpointError, "either family"),
        "missing key": (_save(tmp_path, "missing1.pth", missing_one), CheckpointError, "layer2.1.conv1.weight"),
        "unexpected key": (_save(tmp_path, "extra1.pth", extra_one), CheckpointError, "classifier.weight"),
        "wrong shape": (_save(tmp_path, "shape.pth", wrong_shape), CheckpointError, "layer3.0.conv2.weight"),
    }


def test_every_bad_checkpoint_gives_a_clear_error(tmp_path, midl_state):
    for case, (path, kind, words) in _bad_files(tmp_path, midl_state).items():
        with pytest.raises(kind) as info:
            load_checkpoint(path)
        assert isinstance(info.value, OmnisegError), case
        assert str(path) in str(info.value), case
        assert words in str(info.value), case


def test_every_bad_checkpoint_via_the_cli(tmp_path, midl_state):
    for case, (path, _, words) in _bad_files(tmp_path, midl_state).items():
        if case == "directory":
            continue  # inspect treats directories as other artefacts; see test_cli
        result = run_cli("inspect", str(path))
        assert result.returncode == 1, (case, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("omniseg-rt: error:"), (case, result.stderr)
        assert str(path) in lines[0] and words in lines[0], case
        assert "Traceback" not in result.stderr


def test_read_checkpoint_returns_extras(tmp_path, midl_state):
    path = _save(tmp_path, "meta.pth", {"model": midl_state, "omniseg_rt": {"tissues": [0, 1]}})
    state, extras = read_checkpoint(path)
    assert len(state) == 141
    assert extras == {"omniseg_rt": {"tissues": [0, 1]}}
    assert describe_checkpoint(path)["metadata"] == {"tissues": [0, 1]}


def test_model_input_errors(upstream_models):
    from omniseg_rt.errors import InvalidInputError

    model = upstream_models["midl"]
    for images, tasks, words in [
        (torch.rand(1, 3, 30, 32), [0], "multiples of 16"),
        (torch.rand(3, 32, 32), [0], "[N, 3, H, W]"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), [0], "float"),
        (torch.rand(1, 3, 32, 32), [6], "tasks"),
        (torch.rand(1, 3, 32, 32), [], "tasks"),
    ]:
        with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            model.forward_tasks(images, tasks)
