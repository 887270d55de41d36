"""omniseg_rt.outputs: mask OME-TIFF, polygons, GeoJSON, statistics, overlay (synthetic masks)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import shapely.geometry
import tifffile
from PIL import Image
from scipy import ndimage
from shapely.geometry import Point, Polygon
from skimage.measure import label

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.outputs import (
    downsample_mask,
    mask_objects,
    read_mask_into,
    read_mask_tiff,
    render_overlay,
    tissue_stats,
    to_level0,
    update_summary_csv,
    write_geojson,
    write_mask_tiff,
)
from omniseg_rt.outputs.ome_tiff import pyramid_shapes
from omniseg_rt.tissues import TISSUES


class Spy:
    """A slice-only array (no ``__array__``): records the largest piece read, so a function that
    materialises the whole mask fails or shows up in ``largest``, and the columns [start, stop)
    of every read of a 2-D array."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype
        self.largest = 0
        self.columns: list[tuple[int, int]] = []

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.largest = max(self.largest, out.size)
        if self.ndim == 2:
            cols = key[1] if isinstance(key, tuple) and len(key) == 2 else slice(None)
            self.columns.append(cols.indices(self.shape[1])[:2] if isinstance(cols, slice) else (cols, cols + 1))
        return out


def memmap_of(tmp_path, array: np.ndarray, name: str = "masks.u8") -> np.memmap:
    mm = np.memmap(tmp_path / name, dtype=array.dtype, mode="w+", shape=array.shape)
    mm[:] = array
    mm.flush()
    return np.memmap(tmp_path / name, dtype=array.dtype, mode="r", shape=array.shape)


def blobs(shape, seed=0, sigma=5.0, threshold=0.53) -> np.ndarray:
    """Realistic-looking 0/255 uint8 mask: thresholded smoothed noise (round blobs, some holes)."""
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), sigma) > threshold).astype(np.uint8) * 255


# ---------------------------------------------------------------- OME-TIFF


def test_mask_tiff_round_trip_pyramid_tiled_compressed(tmp_path):
    masks = memmap_of(tmp_path, np.stack([blobs((1100, 1300), s) for s in range(3)]))
    path = tmp_path / "slide_10x.ome.tif"
    write_mask_tiff(path, masks, ["DT", "PT", "VES"], 0.75, tile=256)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    expected = pyramid_shapes(1100, 1300, 256)
    assert expected == [(1100, 1300), (550, 650), (275, 325), (138, 163)]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX"
        assert [lv.shape for lv in series.levels] == [(3, h, w) for h, w in expected]
        assert np.array_equal(series.levels[0].asarray(), masks)
        for k, level in enumerate(series.levels):
            assert np.array_equal(level.asarray(), masks[:, :: 2**k, :: 2**k])
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert len(page.subifds or ()) == len(expected) - 1
        assert sum(p.databytecounts and sum(p.databytecounts) for p in tif.pages) < masks.size / 4
    pixels, mpp, names = read_mask_tiff(path)
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, masks)
    assert mpp == pytest.approx(0.75) and names == ["DT", "PT", "VES"]
    small, mpp2, _ = read_mask_tiff(path, level=2)
    assert small.shape == (3, 275, 325) and mpp2 == pytest.approx(3.0)


def test_mask_tiff_streams_tiles_and_handles_one_channel(tmp_path):
    spy = Spy(blobs((700, 530), 4)[np.newaxis])
    write_mask_tiff(tmp_path / "ptc.ome.tif", spy, ["PTC"], np.float32(0.25), tile=128)
    assert 0 < spy.largest <= 128 * 128
    pixels, mpp, names = read_mask_tiff(tmp_path / "ptc.ome.tif")
    assert pixels.shape == (1, 700, 530) and np.array_equal(pixels[0], spy.array[0])
    assert (mpp, names) == (0.25, ["PTC"])
    with tifffile.TiffFile(tmp_path / "ptc.ome.tif") as tif:
        assert len(tif.series[0].levels) == len(pyramid_shapes(700, 530, 128)) == 4


def test_mask_tiff_rejects_bad_arguments(tmp_path):
    good = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(InvalidInputError, match="uint8"):
        write_mask_tiff(tmp_path / "a.tif", good.astype(np.float32), ["CAP", "TUFT"], 2.0)
    with pytest.raises(InvalidInputError, match="channel names"):
        write_mask_tiff(tmp_path / "a.tif", good, ["CAP"], 2.0)
    with pytest.raises(InvalidInputError, match="mpp"):
        write_mask_tiff(tmp_path / "a.tif", good, ["CAP", "TUFT"], 0.0)
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        write_mask_tiff(tmp_path / "a.tif", good, ["CAP", "TUFT"], 2.0, tile=100)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- polygons


def reference_objects(mask: np.ndarray):
    """(seed (row, col), pixel count) per 8-connected object, sorted by seed, via skimage."""
    labels = label(mask != 0, connectivity=2)
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    counts = np.bincount(flat)
    keep = ids > 0
    order = np.argsort(first[keep])
    return [(divmod(int(f), mask.shape[1]), int(counts[i])) for i, f in zip(ids[keep][order], first[keep][order])]


def check_objects(mask, objects, tol_big=0.02):
    ref = reference_objects(np.asarray(mask))
    assert [n for _, n in objects] == [n for _, n in ref]
    for (poly, count), ((r, c), _) in zip(objects, ref):
        assert isinstance(poly, Polygon) and poly.is_valid and not poly.is_empty
        assert poly.distance(Point(c + 0.5, r + 0.5)) < 1.0  # the seed pixel is on the polygon
        if count >= 100:
            assert abs(poly.area - count) <= tol_big * count
    return ref


def test_polygons_realistic_mask_areas_and_order(tmp_path):
    mask = memmap_of(tmp_path, blobs((1500, 1400), 7), "mask.u8")
    spy = Spy(mask)
    objects = list(mask_objects(spy, band_rows=97))
    assert len(objects) > 100
    ref = check_objects(mask, objects)
    assert sum(1 for _, n in ref if n >= 100) > 50
    total_area = sum(p.area for p, _ in objects)
    assert abs(total_area - np.count_nonzero(mask)) <= 0.01 * np.count_nonzero(mask)
    assert spy.largest <= max(97 * 1400, max((p.bounds[3] - p.bounds[1] + 2) * (p.bounds[2] - p.bounds[0] + 2)
                                             for p, _ in objects))
    unbanded = list(mask_objects(mask, band_rows=5000))
    assert [n for _, n in unbanded] == [n for _, n in objects]
    assert all(a.equals_exact(b, 1e-9) for (a, _), (b, _) in zip(objects, unbanded))


def test_polygons_unsimplified_follow_pixel_edges():
    mask = np.zeros((40, 50), np.uint8)
    mask[5:25, 10:40] = 255  # 20 x 30 rectangle
    [(poly, count)] = mask_objects(mask, tolerance=0)
    assert count == 600 and poly.area == pytest.approx(600, rel=1e-3)
    x0, y0, x1, y1 = poly.bounds
    assert (x0, y0, x1, y1) == pytest.approx((10, 5, 40, 25), abs=0.1)


def test_polygons_holes_islands_and_band_spanning():
    mask = np.zeros((300, 260), np.uint8)
    mask[20:220, 20:220] = 255
    mask[60:180, 60:180] = 0  # hole of 120 x 120
    mask[100:140, 100:140] = 255  # island inside the hole: its own object
    mask[230:290, 10:250] = 255  # an L below and right of the frame, not touching it
    mask[200:290, 230:250] = 255
    objects = list(mask_objects(mask, band_rows=7))
    check_objects(mask, objects)
    assert len(objects) == 3  # seeds: frame (20, 20), island (100, 100), L (200, 230)
    (frame, n_frame), (island, n_island) = objects[0], objects[1]
    assert n_frame == 200 * 200 - 120 * 120
    assert len(frame.interiors) == 1
    hole = Polygon(frame.interiors[0])
    assert abs(hole.area - 120 * 120) <= 0.02 * 120 * 120
    assert n_island == 1600 and not island.interiors and hole.contains(island)


def test_polygons_u_shape_joined_only_at_the_bottom():
    mask = np.zeros((400, 120), np.uint8)
    mask[0:400, 0:20] = 255  # left arm, touching the top and left borders
    mask[0:400, 100:120] = 255  # right arm, touching the right border
    mask[380:400, 0:120] = 255  # the bottom bar joins them in the last band only
    objects = list(mask_objects(mask, band_rows=16))
    assert len(objects) == 1
    poly, count = objects[0]
    assert count == 2 * 400 * 20 + 80 * 20
    assert abs(poly.area - count) <= 0.01 * count
    x0, y0, x1, y1 = poly.bounds
    assert -0.5 <= x0 < 0.5 and -0.5 <= y0 < 0.5 and 119.5 < x1 <= 120.5 and 399.5 < y1 <= 400.5


def test_polygons_diagonal_contacts_are_one_object():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:20, 10:20] = 255
    mask[20:30, 20:30] = 255  # touches the first square at one corner only, across a band border
    for r in range(40, 50):
        mask[r, r - 30] = 255  # a one-pixel diagonal line
    objects = list(mask_objects(mask, band_rows=20))
    assert [n for _, n in objects] == [200, 10]
    squares, line = objects[0][0], objects[1][0]
    assert squares.is_valid and isinstance(squares, Polygon)
    assert squares.area == pytest.approx(200, rel=0.02) and line.area == pytest.approx(10, rel=0.02)
    isolated = np.zeros((5, 5), np.uint8)
    isolated[2, 3] = 255
    [(dot, one)] = mask_objects(isolated)
    assert one == 1 and dot.area == pytest.approx(1, rel=0.01) and dot.centroid.equals_exact(Point(3.5, 2.5), 1e-6)


def test_traced_outlines_are_skimages_marching_squares():
    """The vectorised tracer draws, per object, the outline and holes that skimage's
    find_contours draws at 0.5 with 8-connected foreground, each ring from its smallest (y, x)
    vertex, outlines with a positive signed area and holes with a negative one."""
    from skimage.measure import find_contours

    from omniseg_rt.outputs.polygons import _polygons, _rings

    rng = np.random.default_rng(5)
    mask = ndimage.gaussian_filter(rng.random((140, 170)), 1.2) > 0.5  # specks, holes, diagonal contacts
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    row0, col0 = 7, 11
    rings = _rings(mask, row0, col0)
    objects, traced = _polygons(rings, labels[rings.pixel[:, 0], rings.pixel[:, 1]] - 1)
    assert objects.tolist() == list(range(n)) and n > 50
    assert sum(len(p.interiors) for p in traced) > 10
    for k, polygon in zip(objects, traced):
        padded = np.pad(labels == k + 1, 1).astype(np.float32)
        contours = [np.column_stack([c[:, 1] + col0 - 0.5, c[:, 0] + row0 - 0.5])
                    for c in find_contours(padded, 0.5, fully_connected="high")]
        outer = max(range(len(contours)), key=lambda i: Polygon(contours[i]).area)
        reference = Polygon(contours[outer], [c for i, c in enumerate(contours) if i != outer])
        assert polygon.is_valid and len(polygon.interiors) == len(reference.interiors)
        assert polygon.symmetric_difference(reference).area < 1e-9
        for ring in [polygon.exterior, *polygon.interiors]:
            xy = np.asarray(ring.coords)[:-1]
            assert tuple(xy[0]) == min(map(tuple, xy), key=lambda p: (p[1], p[0]))
        assert polygon.exterior.is_ccw and not any(ring.is_ccw for ring in polygon.interiors)
    assert (rings.area > 0).sum() == n  # one outline per object


def test_polygons_empty_and_bad_masks(tmp_path):
    assert list(mask_objects(np.zeros((100, 80), np.uint8), band_rows=9)) == []
    assert list(mask_objects(memmap_of(tmp_path, np.zeros((64, 64), np.uint8)))) == []
    assert list(mask_objects(np.zeros((0, 10), np.uint8))) == []
    with pytest.raises(InvalidInputError, match="2-D"):
        list(mask_objects(np.zeros((2, 10, 10), np.uint8)))
    with pytest.raises(InvalidInputError, match="band_rows"):
        list(mask_objects(np.zeros((10, 10), np.uint8), band_rows=0))


# ---------------------------------------------------------------- GeoJSON


def test_feature_ids_are_uuid5_of_slide_tissue_and_index():
    import uuid

    from omniseg_rt.outputs.geojson import _ID_NAMESPACE, _uuid5

    for name in ["CMU-1-Small-Region:5:0", "slide:0:129581", "ünïcode slide:3:7", ""]:
        assert _uuid5(name) == str(uuid.uuid5(_ID_NAMESPACE, name))


def test_geojson_features_classes_counts_and_determinism(tmp_path):
    tuft = blobs((300, 320), 1)
    cap = blobs((300, 320), 2, threshold=0.52)
    scale = 2.0 / 0.5  # 5x group at 2 um/px on a 0.5 um/px slide
    def objects():
        for task_id, mask in ((2, cap), (3, tuft)):
            for poly, _ in mask_objects(mask, band_rows=50):
                yield task_id, to_level0(poly, scale, scale)
    path = tmp_path / "slide.geojson"
    counts = write_geojson(path, objects())
    expected = {2: len(reference_objects(cap)), 3: len(reference_objects(tuft))}
    assert counts == expected and min(expected.values()) > 5
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == sum(expected.values())
    by_abbrev = {t.abbrev: t for t in TISSUES}
    seen = {2: 0, 3: 0}
    area = 0.0
    for feature in data["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        assert feature["geometry"]["type"] == "Polygon" and geom.is_valid
        props = feature["properties"]
        t = by_abbrev[props["tissue"]]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": t.name, "color": list(t.colour)}
        seen[t.task_id] += 1
        area += geom.area if t.task_id == 3 else 0.0
        coords = np.asarray(feature["geometry"]["coordinates"][0])
        assert np.allclose(coords * 100, np.round(coords * 100), atol=1e-6)
    assert seen == expected
    assert area == pytest.approx(np.count_nonzero(tuft) * scale * scale, rel=0.01)
    ids = [f["id"] for f in data["features"]]
    assert len(set(ids)) == len(ids)
    first = path.read_bytes()
    assert write_geojson(path, objects()) == expected and path.read_bytes() == first
    write_geojson(tmp_path / "other.geojson", objects())
    other = json.loads((tmp_path / "other.geojson").read_text())
    assert {f["id"] for f in other["features"]}.isdisjoint(ids)


def test_geojson_to_level0_and_bad_objects(tmp_path):
    square = Polygon([(1, 1), (3, 1), (3, 2), (1, 2)])
    assert to_level0(square, 4.0, 0.5).bounds == (4.0, 0.5, 12.0, 1.0)
    with pytest.raises(InvalidInputError):
        to_level0(square, 0, 1)
    with pytest.raises(InvalidInputError, match="unknown tissue"):
        write_geojson(tmp_path / "x.geojson", [(9, square)])
    with pytest.raises(InvalidInputError, match="Polygon"):
        write_geojson(tmp_path / "x.geojson", [(1, square.exterior)])
    assert list(tmp_path.iterdir()) == []
    assert write_geojson(tmp_path / "empty.geojson", []) == {}
    assert json.loads((tmp_path / "empty.geojson").read_text()) == {"type": "FeatureCollection", "features": []}


# ---------------------------------------------------------------- statistics


def test_tissue_stats_counts_band_by_band(tmp_path):
    masks = np.zeros((3, 500, 400), np.uint8)
    masks[0, :100, :100] = 255  # 10 000 px
    masks[1, 450:, :] = 255  # 20 000 px, in the last band
    masks = memmap_of(tmp_path, masks)
    rows = tissue_stats([0, 1, 4], masks, np.float32(0.5), 0.01, {0: 4, 1: 2})
    assert [r["abbrev"] for r in rows] == ["DT", "PT", "VES"]
    dt, pt, ves = rows
    assert dt["area_mm2"] == pytest.approx(10_000 * 0.25 / 1e6)
    assert pt["area_mm2"] == pytest.approx(20_000 * 0.25 / 1e6)
    assert dt["objects"] == 4 and dt["mean_object_area_um2"] == pytest.approx(2500 / 4)
    assert pt["fraction_of_tissue"] == pytest.approx(0.005 / 0.01)
    assert ves["objects"] == 0 and ves["area_mm2"] == 0 and ves["mean_object_area_um2"] == 0
    assert ves["name"] == "artery" and ves["task_id"] == 4
    assert all(r["fraction_of_tissue"] == 0 for r in tissue_stats([0, 1, 4], masks, 0.5, 0.0, {}))
    with pytest.raises(InvalidInputError):
        tissue_stats([0, 1], masks, 0.5, 1.0, {})


def test_summary_csv_add_replace_and_failures(tmp_path):
    path = tmp_path / "summary.csv"
    update_summary_csv(path, {"slide": "b", "status": "ok", "reason": "", "PT_objects": 5})
    update_summary_csv(path, {"slide": "a", "status": "failed", "reason": "unreadable file, see log"})
    update_summary_csv(path, {"slide": "b", "status": "ok", "reason": "", "PT_objects": 7, "seconds": 1.5})
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert reader.fieldnames == ["slide", "status", "reason", "PT_objects", "seconds"]
    assert [r["slide"] for r in rows] == ["a", "b"]
    assert rows[0] == {"slide": "a", "status": "failed", "reason": "unreadable file, see log",
                       "PT_objects": "", "seconds": ""}
    assert rows[1]["PT_objects"] == "7" and rows[1]["seconds"] == "1.5"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
    with pytest.raises(InvalidInputError, match="slide"):
        update_summary_csv(path, {"status": "ok"})
    for junk in (bytes(range(256)), b"name,size\nx,1\n", b"slide,status,reason\na,done,,extra\n"):
        path.write_bytes(junk)  # not ours: refused with the file's name, and left as it is
        with pytest.raises(InvalidInputError, match=f"{path}: .*move it away"):
            update_summary_csv(path, {"slide": "b", "status": "done"})
        assert path.read_bytes() == junk


def test_mask_tiff_read_into_a_canvas_tile_by_tile(tmp_path):
    masks = np.stack([blobs((700, 1100), s) for s in range(2)])
    path = tmp_path / "m.ome.tif"
    write_mask_tiff(path, masks, ["CAP", "TUFT"], 2.0, tile=256)
    canvas = np.memmap(tmp_path / "canvas.u8", dtype=np.uint8, mode="w+", shape=masks.shape)
    assert read_mask_into(path, canvas, ["CAP", "TUFT"]) and np.array_equal(canvas, masks)
    other = np.full_like(masks, 7)
    assert not read_mask_into(path, other, ["CAP", "DT"]) and (other == 7).all()  # other tissues
    assert not read_mask_into(path, other[:, :600], ["CAP", "TUFT"]) and (other == 7).all()  # other shape
    assert not read_mask_into(tmp_path / "missing.ome.tif", other, ["CAP", "TUFT"])


def test_polygons_are_clipped_to_the_slide():
    from omniseg_rt.runtime.finish import clip_to_slide

    inside = Polygon([(1, 1), (9, 1), (9, 9)])
    assert clip_to_slide(inside, 10, 10) == [inside]
    [edge] = clip_to_slide(Polygon([(5, 5), (12, 5), (12, 12), (5, 12)]), 10, 11)
    assert edge.bounds == (5, 5, 10, 11) and edge.area == 30
    arch = Polygon([(0, 0), (3, 0), (3, 15), (5, 15), (5, 0), (8, 0), (8, 20), (0, 20)])  # legs up to y 10
    assert len(clip_to_slide(arch, 10, 10)) == 2  # the slide's edge cuts the arch into its two legs
    assert clip_to_slide(Polygon([(20, 20), (30, 20), (30, 30)]), 10, 10) == []


# ---------------------------------------------------------------- overlay


def test_downsample_mask_keeps_small_objects(tmp_path):
    full = np.zeros((1000, 1300), np.uint8)
    spots = [(0, 0), (999, 1299), (505, 17), (123, 777)]
    for r, c in spots:
        full[r, c] = 255
    mm = memmap_of(tmp_path, full)
    low = downsample_mask(mm, (100, 130))
    assert low.dtype == bool and low.shape == (100, 130)
    assert {tuple(p) for p in np.argwhere(low)} == {(r // 10, c // 10) for r, c in spots}
    blobby = blobs((1000, 1300), 3)
    assert np.array_equal(downsample_mask(blobby, (100, 130)), blobby.reshape(100, 10, 130, 10).max(axis=(1, 3)) > 0)
    odd = downsample_mask(Spy(full), (77, 91))  # uneven ratios: every spot still lands somewhere
    assert {tuple(p) for p in np.argwhere(odd)} == {(r * 77 // 1000, c * 91 // 1300) for r, c in spots}
    up = downsample_mask(np.eye(3, dtype=np.uint8), (6, 6))
    assert np.array_equal(up, np.kron(np.eye(3), np.ones((2, 2))) > 0)
    with pytest.raises(InvalidInputError):
        downsample_mask(full, (0, 10))


class _Columns:
    """An ``occupied`` that knows the columns of some rows (as ``Occupancy`` does): rows [y0, y1),
    columns [x0, x1) of a mask, nothing elsewhere."""

    def __init__(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self.region = (y0, y1, x0, x1)

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        r0, r1, c0, c1 = self.region
        return y0 < r1 and r0 < y1 and x0 < c1 and c0 < x1

    def columns(self, y0: int, y1: int):
        r0, r1, c0, c1 = self.region
        return (c0, c1) if y0 < r1 and r0 < y1 else None


def test_downsample_mask_reads_only_the_occupied_columns_and_pools_the_same():
    rng = np.random.default_rng(3)
    for (height, width), region, out_shape in [((1000, 1300), (200, 700, 333, 901), (77, 91)),
                                               ((1000, 1300), (0, 1000, 0, 1), (100, 130)),
                                               ((40, 30), (5, 31, 7, 29), (97, 61)),   # upsampling both ways
                                               ((300, 50), (10, 250, 20, 50), (30, 120))]:
        full = np.zeros((height, width), np.uint8)
        y0, y1, x0, x1 = region
        full[y0:y1, x0:x1] = rng.integers(0, 2, (y1 - y0, x1 - x0)) * 255
        spy = Spy(full)
        got = downsample_mask(spy, out_shape, _Columns(*region))
        assert np.array_equal(got, downsample_mask(full, out_shape)), (region, out_shape)
        assert spy.columns and min(a for a, _ in spy.columns) >= x0 - width // out_shape[1] - 1
        assert max(b for _, b in spy.columns) <= x1 + width // out_shape[1] + 1


def test_render_overlay_paints_colours_and_legend(tmp_path):
    thumb = np.full((80, 120, 3), 200, np.uint8)
    pt = np.zeros((80, 120), bool)
    pt[10:40, 10:50] = True
    tuft = np.zeros((80, 120), np.uint8)
    tuft[50:70, 70:110] = 255
    path = tmp_path / "overlay.png"
    render_overlay(path, thumb, [(1, pt), (3, tuft)], alpha=0.5)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 80 and image.shape[1] >= 120  # legend strip below
    pt_colour, tuft_colour = np.array(TISSUES[1].colour), np.array(TISSUES[3].colour)
    assert np.abs(image[25, 30].astype(int) - (200 + pt_colour) / 2).max() <= 1
    assert np.array_equal(image[10, 30], pt_colour)  # outline, opaque
    assert np.array_equal(image[60, 90], np.rint((200 + tuft_colour) / 2).astype(np.uint8))
    assert np.array_equal(image[5, 5], [200, 200, 200])
    legend = image[80:].reshape(-1, 3)
    for colour in (pt_colour, tuft_colour):
        assert (legend == colour).all(axis=1).sum() >= 50
    assert not (tmp_path / ".overlay.png.tmp").exists()
    with pytest.raises(InvalidInputError, match="shape"):
        render_overlay(path, thumb, [(1, pt[:10])])


class _Guarded:
    """A [T, H, W] or [H, W] uint8 array that fails any read lying wholly inside ``forbidden``
    (y0, y1, x0, x1): a region known to be empty, which no reader needs to look at (``touching``:
    any read that reaches into it)."""

    def __init__(self, array: np.ndarray, forbidden: tuple[int, int, int, int], touching: bool = False) -> None:
        self.array, self.forbidden, self.touching = array, forbidden, touching
        self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (key[-2], key[-1]) if len(key) == self.ndim else (key[-1], slice(None))
        if self.ndim == 3 and len(key) == 2:
            rows, cols = key[1], slice(None)
        y0, y1, x0, x1 = self.forbidden
        r = range(*rows.indices(self.shape[-2])) if isinstance(rows, slice) else [rows]
        c = range(*cols.indices(self.shape[-1])) if isinstance(cols, slice) else [cols]
        inside = any if self.touching else all
        if r and c and inside(y0 <= v < y1 for v in r) and inside(x0 <= v < x1 for v in c):
            raise AssertionError(f"read {key} inside the region known to be empty {self.forbidden}")
        return self.array[key]


def test_writers_do_not_read_where_the_plan_has_no_cells(tmp_path):
    from omniseg_rt.outputs import downsample_mask, mask_objects, read_mask_tiff, tissue_stats, write_mask_tiff
    from omniseg_rt.slide.plan import Occupancy, plan_group
    from omniseg_rt.tissues import SCALE_GROUPS

    # a 2000 x 1500 canvas, tissue (cells) only in its top-left 600 x 600 px
    tissue = np.zeros((1500, 2000), bool)
    tissue[:600, :600] = True
    plan = plan_group(SCALE_GROUPS[1], 1.0, 1.0, (2000, 1500), (1.0,), lambda mpp: 0, 512, 128, tissue=tissue,
                      tissue_mpp=1.0)
    occupied = Occupancy(plan)
    assert occupied(0, 10, 0, 10) and not occupied(800, 1500, 0, 2000) and not occupied(0, 1500, 800, 2000)
    assert occupied.columns(0, 100) == (0, 768) and occupied.columns(800, 1500) is None
    assert occupied.rows(0, 1500) == (0, 768) and occupied.rows(500, 1000) == (500, 768)
    assert occupied.rows(800, 1500) is None
    masks = np.zeros((2, 1500, 2000), np.uint8)
    masks[0, 100:300, 50:500] = 255
    masks[1, 400:700, 200:760] = 255  # up to the last occupied cell's edge (768)
    guarded = _Guarded(masks, (800, 1500, 0, 2000))
    with pytest.raises(AssertionError, match="known to be empty"):  # the guard bites a writer that reads it all
        write_mask_tiff(tmp_path / "all.ome.tif", guarded, ["DT", "PT"], 1.0, tile=256)
    # not even the reduced levels, whose tiles span the whole canvas, read into the empty region
    write_mask_tiff(tmp_path / "sparse.ome.tif", _Guarded(masks, (800, 1500, 0, 2000), touching=True), ["DT", "PT"],
                    1.0, tile=256, occupied=occupied)
    write_mask_tiff(tmp_path / "dense.ome.tif", masks, ["DT", "PT"], 1.0, tile=256)
    for level in range(4):
        assert np.array_equal(read_mask_tiff(tmp_path / "sparse.ome.tif", level)[0],
                              read_mask_tiff(tmp_path / "dense.ome.tif", level)[0])
    assert (tmp_path / "sparse.ome.tif").stat().st_size <= (tmp_path / "dense.ome.tif").stat().st_size * 1.1
    for channel in range(2):
        sparse = [(p.area, n) for p, n in mask_objects(_Guarded(masks[channel], (800, 1500, 0, 2000)), band_rows=100,
                                                       occupied=occupied)]
        assert sparse == [(p.area, n) for p, n in mask_objects(masks[channel], band_rows=100)]
        spy = Spy(masks[channel])  # tracing reads only the columns of the plan's cells
        assert [(p.area, n) for p, n in mask_objects(spy, band_rows=100, occupied=occupied)] == sparse
        assert spy.columns and max(stop for _, stop in spy.columns) <= 768
        assert np.array_equal(downsample_mask(_Guarded(masks[channel], (800, 1500, 0, 2000)), (150, 200), occupied),
                              downsample_mask(masks[channel], (150, 200)))
    stats = tissue_stats([0, 1], guarded, 1.0, 1.0, {}, occupied=occupied)
    assert [r["area_mm2"] for r in stats] == [r["area_mm2"] for r in tissue_stats([0, 1], masks, 1.0, 1.0, {})]


def _resident_mb() -> float:
    """This process's resident memory (VmRSS, anonymous and file-backed pages) in MB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from Linux's /proc")
def test_writers_of_a_mostly_glass_slide_stay_within_a_memory_bound(tmp_path):
    """A 32,768^2 px canvas (1 GiB, memory-mapped, as segment keeps it) with tissue in one 2,048^2
    px square: the mask TIFF (every pyramid level), the polygons, the overlay's downsampling and the
    pixel counts together page in tens of MB, not the canvas (the reduced levels once read it all)."""
    from omniseg_rt.outputs import downsample_mask, mask_objects, write_mask_tiff
    from omniseg_rt.outputs.stats import foreground_pixels
    from omniseg_rt.slide.plan import Occupancy, plan_group
    from omniseg_rt.tissues import SCALE_GROUPS

    side, square, top = 32768, 2048, 15360
    tissue = np.zeros((side // 16, side // 16), bool)  # the tissue mask at 4 um/px
    tissue[top // 16:(top + square) // 16, top // 16:(top + square) // 16] = True
    plan = plan_group(SCALE_GROUPS[2], 0.25, 0.25, (side, side), (1.0,), lambda mpp: 0, 512, 128, tissue=tissue,
                      tissue_mpp=4.0)
    occupied = Occupancy(plan)
    canvas = np.memmap(tmp_path / "40x.u8", dtype=np.uint8, mode="w+", shape=(1, side, side))  # sparse on disk
    canvas[0, top:top + square, top:top + square] = blobs((square, square), seed=4)
    before = _resident_mb()
    write_mask_tiff(tmp_path / "mask_40x.ome.tif", canvas, ["PTC"], 0.25, occupied=occupied)
    objects = sum(1 for _ in mask_objects(canvas[0], band_rows=4096, occupied=occupied))
    low = downsample_mask(canvas[0], (2048, 2048), occupied)
    counted = foreground_pixels(canvas, occupied)
    grown = _resident_mb() - before
    assert objects > 100 and low.any() and counted[0] == np.count_nonzero(canvas[0, top:top + square, top:top + square])
    assert grown < 48, f"the writers paged in {grown:.0f} MB of a 1024 MB canvas with 4 MB of tissue"


def test_tracing_processes_give_the_same_polygons_in_the_same_order():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from omniseg_rt.outputs import mask_objects, masks_objects

    rng = np.random.default_rng(3)
    mask = (ndimage.gaussian_filter(rng.random((600, 500)), 3) > 0.52).astype(np.uint8) * 255
    others = [(ndimage.gaussian_filter(rng.random((200, 300)), 2) > 0.55).astype(np.uint8) for _ in range(3)]
    serial = list(mask_objects(mask, band_rows=97))
    serial_all = [(k, *o) for k, m in enumerate([mask, *others]) for o in mask_objects(m, band_rows=1000)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parallel = list(mask_objects(mask, band_rows=97, pool=pool, in_flight=2))
        # one band per mask: the look-ahead runs across the masks
        parallel_all = list(masks_objects([(m, 1000, None) for m in [mask, *others]], pool=pool, in_flight=3))
    assert len(serial) > 3 * 64, "more objects than a few chunks"
    assert [count for _, count in parallel] == [count for _, count in serial]
    assert all(a.equals_exact(b, 0) for (a, _), (b, _) in zip(serial, parallel))
    assert [(k, n) for k, _, n in parallel_all] == [(k, n) for k, _, n in serial_all]
    assert all(a.equals_exact(b, 0) for (_, a, _), (_, b, _) in zip(serial_all, parallel_all))
