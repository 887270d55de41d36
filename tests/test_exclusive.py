"""segment --exclusive: the original pipeline's cross-tissue merge, rule by rule, and its files."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from omniseg_rt.outputs.exclusive import LABELS, merge_labels, write_label_map
from omniseg_rt.runtime import segment
from omniseg_rt.tissues import SCALE_GROUPS
from test_segment_geometry import red_engine
from synthetic import tissue_pattern, write_aperio

DT, PT, CAP, TUFT, VES, PTC = range(6)


def _case(**pixels):
    """One row of pixels; each keyword is a tissue abbreviation -> list of scores (0 = not foreground)."""
    names = {"DT": DT, "PT": PT, "CAP": CAP, "TUFT": TUFT, "VES": VES, "PTC": PTC}
    tasks = [names[k] for k in pixels]
    scores = np.array([pixels[k] for k in pixels], np.uint8)[:, None, :]
    return tasks, scores > 0, scores


def test_highest_score_wins_and_ties_go_to_the_lowest_task_id():
    tasks, masks, scores = _case(PT=[200, 150, 0, 180], DT=[100, 150, 0, 180], VES=[0, 0, 0, 180])
    labels = merge_labels(tasks, masks, scores, np.ones((1, 4), bool))
    assert labels.tolist() == [[PT + 1, DT + 1, 0, DT + 1]]


def test_the_unit_covers_the_tuft_and_a_tuft_pixel_needs_tuft_evidence():
    # pixel 0: unit only -> CAP; 1: unit and tuft -> TUFT (the tuft wins inside its unit, whatever
    # the scores); 2: tuft without unit mask -> TUFT; 3: PT beats the unit's best score -> PT;
    # 4: the unit's best score (the tuft's) beats PT -> TUFT
    tasks, masks, scores = _case(CAP=[200, 250, 0, 140, 140], TUFT=[0, 130, 170, 0, 220],
                                 PT=[150, 150, 150, 160, 200])
    labels = merge_labels(tasks, masks, scores, np.ones((1, 5), bool))
    assert labels.tolist() == [[CAP + 1, TUFT + 1, TUFT + 1, PT + 1, TUFT + 1]]


def test_the_tissue_mask_gates_everything():
    tasks, masks, scores = _case(PT=[200, 200], TUFT=[0, 250])
    labels = merge_labels(tasks, masks, scores, np.array([[False, True]]))
    assert labels.tolist() == [[0, TUFT + 1]]
    assert LABELS[0] == "background" and LABELS[TUFT + 1] == "glomerular tuft"


def test_the_label_map_samples_each_group_on_its_own_grid_band_by_band():
    # PT at 1 um/px (8 x 8), CAP at 2 um/px (4 x 4): the map at 1 um/px; CAP's pixel (1, 1) covers
    # map pixels 2..3 x 2..3, where it beats PT; the gate (at 4 um/px, 2 x 2) drops the right half
    pt = np.zeros((1, 8, 8), np.uint8)
    pt[0, :4, :] = 255
    cap = np.zeros((1, 4, 4), np.uint8)
    cap[0, 1, 1] = 255
    groups = [((PT,), pt, np.where(pt > 0, 150, 0).astype(np.uint8), 1.0),
              ((CAP,), cap, np.where(cap > 0, 200, 0).astype(np.uint8), 2.0)]
    gate = np.array([[True, False], [True, False]])
    labels = np.zeros((8, 8), np.uint8)
    write_label_map(labels, (8, 8), 1.0, groups, gate, 4.0, band_rows=3)
    expected = np.zeros((8, 8), np.uint8)
    expected[:4, :4] = PT + 1
    expected[2:4, 2:4] = CAP + 1
    assert labels.tolist() == expected.tolist()


def test_segment_exclusive_writes_one_label_per_pixel(tmp_path):
    slide = write_aperio(tmp_path / "synthetic.svs", tissue_pattern(400, 600, glass_from=0.7))
    engine = red_engine(tmp_path / "engine")
    [result] = segment(slide, engine=engine, out=tmp_path / "out", window=64, overlap=16, exclusive=True,
                       group_mpp={g.name: 1.0 for g in SCALE_GROUPS})
    assert result.status == "done", result.reason
    folder = tmp_path / "out" / "synthetic"
    assert {"labels", "objects_exclusive"} <= set(result.outputs)
    with tifffile.TiffFile(folder / "labels.ome.tif") as tif:
        labels = tif.series[0].asarray()
    with tifffile.TiffFile(folder / "mask_10x.ome.tif") as tif:
        masks = tif.series[0].asarray()
    # the red engine gives every tissue the same margins: every tie goes to the lowest task id,
    # DT; the unit and tuft lose to it; off the tissue mask (the glass strip) nothing
    assert labels.shape == masks.shape[1:]
    fg = masks[0] == 255
    assert set(np.unique(labels)) <= {0, DT + 1}
    assert (labels[~fg] == 0).all()
    assert (labels[fg] == DT + 1).mean() > 0.95  # all but pixels the coarse tissue mask leaves out
    features = json.loads((folder / "objects_exclusive.geojson").read_text())["features"]
    assert features and {f["properties"]["classification"]["name"] for f in features} == {"distal tubule"}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["exclusive"]["area_mm2"]["DT"] > 0 and summary["exclusive"]["area_mm2"]["PT"] == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["request"]["exclusive"] is True and not (folder / ".work").exists()
