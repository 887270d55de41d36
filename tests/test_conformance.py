"""Our model reproduces the logits the original network computes for upstream checkpoints."""

import numpy as np
import pytest
import torch

from conftest import CONFORMANCE


@pytest.mark.parametrize("family, stem", [("midl", "upstream_midl_seed0"), ("scale", "upstream_scale_seed1")])
def test_reproduces_upstream_logits(upstream_models, family, stem):
    model = upstream_models[family]
    assert model.family == family
    expected = np.load(CONFORMANCE / f"{stem}_expected.npz")
    images = torch.from_numpy(expected["images"])
    with torch.inference_mode():
        fused = model.forward_tasks(images, range(6)).numpy()
    assert fused.shape == (2, 6, 2, 256, 256) and fused.dtype == np.float32
    for task in range(6):
        ref = expected[f"logits_task{task}"]
        err = np.abs(fused[:, task] - ref).max()
        assert err <= 1e-4, f"task {task}: max |diff| {err:.2e}"
        # the reference ran each task with its own scale id; ours takes it from the tissue table
        from omniseg_rt.tissues import TISSUES

        assert int(expected[f"scale_task{task}"]) == TISSUES[task].scale_id


def test_wrong_scale_changes_scale_aware_logits(upstream_models):
    """The scale-aware controller really uses the scale: a wrong scale id gives other logits."""
    model = upstream_models["scale"]
    images = torch.from_numpy(np.load(CONFORMANCE / "upstream_scale_seed1_expected.npz")["images"][:1])
    with torch.inference_mode():
        head_input, pooled = model.forward_features(images)
        own = model.forward_heads(head_input, pooled, [0])
        other = model.forward_heads(head_input, pooled, [0], scales=[3])
    assert (own - other).abs().max() > 1e-2
