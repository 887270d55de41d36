"""Training from partially labelled patches: data, sampler, loss, a real run, resume, evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import PATCHES, run_cli
from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.train.dataset import discover, split_by_source
from omniseg_rt.train.losses import edge_ring_weight
from omniseg_rt.train.sampler import TaskBatchSampler


def make_small_set(root: Path, folders=("1_1_pt", "3_0_tuft"), per_folder=4, size=64) -> Path:
    """Real patches, downscaled to ``size`` px so that CPU training steps take milliseconds."""
    for folder in folders:
        images = sorted(p for p in (PATCHES / folder).rglob("im_*.png") if "_mask_" not in p.name)[:per_folder]
        for image in images:
            target = root / image.relative_to(PATCHES)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(image).convert("RGB").resize((size, size)).save(target)
            mask = next(image.parent.glob(f"{image.stem}_mask_*.png"))
            Image.open(mask).resize((size, size), Image.NEAREST).save(target.parent / mask.name)
    return root


def test_discovers_the_shared_patches():
    found = discover(PATCHES)
    assert len(found.samples) == 72 and not found.skipped
    counts = {t: sum(s.task_id == t for s in found.samples) for t in range(6)}
    assert counts == {0: 13, 1: 13, 2: 12, 3: 14, 4: 10, 5: 10}
    assert {s.stain for s in found.samples} == {"he", "pas", "sil", "tri"}
    assert all(s.scale_id == {0: 1, 1: 1, 2: 0, 3: 0, 4: 1, 5: 3}[s.task_id] for s in found.samples)


def test_bad_data_is_counted_or_refused(tmp_path, caplog):
    root = make_small_set(tmp_path / "set")
    pt = root / "1_1_pt" / "he"
    Image.new("RGB", (64, 64)).save(pt / "im_900_0.png")  # image without mask
    Image.new("L", (64, 64)).save(pt / "im_901_0_mask_proximal.png")  # mask without image
    Image.new("RGB", (64, 64)).save(pt / "im_902_0.png")
    Image.new("L", (32, 32)).save(pt / "im_902_0_mask_proximal.png")  # wrong size
    (pt / "im_903_0.png").write_bytes(b"not a png")
    Image.new("L", (64, 64)).save(pt / "im_903_0_mask_proximal.png")  # unreadable image
    found = discover(root)
    assert len(found.samples) == 8
    assert dict(found.skipped) == {"image without mask": 1, "mask without image": 1,
                                   "mask size differs from image size": 1, "unreadable image or mask": 1}
    assert "im_900_0.png" in caplog.text
    (root / "9_9_other").mkdir()
    with pytest.raises(InvalidInputError, match="9_9_other: not a tissue folder"):
        discover(root)
    with pytest.raises(MissingFileError):
        discover(tmp_path / "nope")


def test_csv_list(tmp_path):
    root = make_small_set(tmp_path / "set", folders=("5_3_ptc",), per_folder=3)
    images = sorted(p for p in root.rglob("im_*.png") if "_mask_" not in p.name)
    table = root / "list.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "label_path", "task_id", "scale_id"])
        for image in images:
            mask = next(image.parent.glob(f"{image.stem}_mask_*.png"))
            writer.writerow([image.relative_to(root), mask.relative_to(root), 5, 3])
    found = discover(table)
    assert [s.task_id for s in found.samples] == [5, 5, 5]
    table.write_text("image,label\na.png,b.png\n")
    with pytest.raises(InvalidInputError, match="needs the columns"):
        discover(table)


def test_split_keeps_sources_apart():
    samples = discover(PATCHES).samples
    train, val = split_by_source(samples, 0.2, seed=3)
    assert sorted(train + val) == list(range(72)) and 10 <= len(val) <= 18
    assert not {samples[i].source for i in train} & {samples[i].source for i in val}
    assert {samples[i].task_id for i in train} == set(range(6))


def test_sampler_single_task_batches():
    tasks = [0] * 5 + [3] * 7 + [5] * 2
    sampler = TaskBatchSampler(tasks, batch_size=3, seed=1)
    sampler.set_epoch(4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 3 + 1
    assert all(len({tasks[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(14))
    again = TaskBatchSampler(tasks, batch_size=3, seed=1)
    again.set_epoch(4)
    assert list(again) == batches
    again.set_epoch(5)
    assert list(again) != batches


def test_edge_ring_weight_on_a_hand_made_mask():
    mask = torch.zeros(1, 1, 11, 11)
    mask[0, 0, 5, 5] = 1
    weight = edge_ring_weight(mask)[0, 0]
    expected = torch.ones(11, 11)
    expected[3:8, 3:8] = 1.2  # the 5x5 square within 2 pixels...
    expected[5, 5] = 1.0  # ...but not the object itself
    torch.testing.assert_close(weight, expected)


def _train(data, out, epochs, **kwargs):
    from omniseg_rt.train.trainer import TrainConfig, train

    config = TrainConfig(epochs=epochs, batch_size=2, val_fraction=0.25, seed=7, device="cpu", **kwargs)
    return train(data, out, config)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_lowers_the_loss_and_writes_loadable_checkpoints(tmp_path, optimizer):
    from omniseg_rt.model import load_checkpoint

    data = make_small_set(tmp_path / "set")
    summary = _train(data, tmp_path / "run", epochs=4, augment=False, optimizer=optimizer)
    history = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert summary["train"] + summary["val"] == 8 and summary["patches_per_s"] > 0
    for name in ("last.pth", "best.pth"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert len(state["model"]) == 141 and "controller_trilinear.weight" in state["model"]  # original layout
        assert load_checkpoint(tmp_path / "run" / name).family == "scale"
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["family"] == "scale" and len(meta["data_sha256"]) == 64 and meta["recipe"]["optimizer"] == optimizer


def test_resume_continues_exactly(tmp_path):
    from omniseg_rt.train.trainer import TrainConfig, train

    data = make_small_set(tmp_path / "set")
    config = TrainConfig(epochs=3, batch_size=2, val_fraction=0.25, seed=11, device="cpu")
    train(data, tmp_path / "straight", config)

    def interrupt(event):
        if event["event"] == "step" and event["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "resumed", config, on_progress=interrupt)
    assert torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)["epoch"] == 2
    train(data, tmp_path / "resumed", config, resume=True)
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"] == b["history"]
    with pytest.raises(InvalidInputError, match="already holds a run"):
        train(data, tmp_path / "straight", config)


def test_evaluate_checkpoint_graph_and_cli(tmp_path):
    from omniseg_rt.evaluate import evaluate, predictor
    from omniseg_rt.export import export_graphs

    data = make_small_set(tmp_path / "set")
    _train(data, tmp_path / "run", epochs=2)
    best = tmp_path / "run" / "best.pth"
    by_checkpoint = evaluate(data, predictor(best)[0])
    (graph,) = export_graphs(best, tissues="PT,TUFT", out=tmp_path / "g.onnx", window=64)
    by_graph = evaluate(data, predictor(graph.path)[0])
    assert [r["abbrev"] for r in by_checkpoint["tissues"]] == ["PT", "TUFT"]
    for a, b in zip(by_checkpoint["tissues"], by_graph["tissues"]):
        assert a["patches"] == 4 and abs(a["dice"] - b["dice"]) < 0.01 and 0 <= a["iou"] <= a["dice"] <= 1
    result = run_cli("evaluate", str(data), "--model", str(best), "--json", "--stain", "he")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tissues"][0]["by_stain"].keys() == {"he"}
    missing = run_cli("evaluate", str(data), "--model", str(tmp_path / "nope.pth"))
    assert missing.returncode == 1 and "nope.pth" in missing.stderr


def test_patience_counts_epochs_since_the_best_score():
    from omniseg_rt.train.trainer import _epochs_since_best

    scores = [0.1, 0.3, 0.2, 0.25, 0.3]  # a tie does not count as better
    assert _epochs_since_best([{"score": s} for s in scores]) == 3
    assert _epochs_since_best([{"score": s} for s in (0.1, 0.2)]) == 0
    assert _epochs_since_best([]) == 0
