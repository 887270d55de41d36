"""Writing a slide's objects: polygon tracing and the GeoJSON, this code vs another checkout.

Segments a real slide once (all tissues; ``--engine`` or the default CPU engine; or takes a
finished slide folder, ``--outputs``), reads its masks back from ``mask_<group>.ome.tif``, then in
a fresh process per code tree (this one, and ``--before CHECKOUT`` when given), single-threaded,
best of ``--repeats``:

  - tracing: ``mask_objects`` over every tissue's mask (what ``segment`` writes to the GeoJSON);
  - GeoJSON: those polygons scaled to level 0 and written by ``write_geojson``;

with the objects found and the worst |polygon area - pixel count| / pixel count. The trees run
the same masks, so the ratio is the code's. ``segment``'s own write seconds (all outputs, by the
code that wrote the folder) come from the slide's manifest.

    python benchmarks/bench_writing.py [--slide PATH --mpp X] [--engine DIR] [--outputs SLIDE_DIR]
        [--before CHECKOUT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import REPO, SHARED, environment, write_result

TIMING = r"""
import json, sys, time
import numpy as np, shapely, tifffile
from pathlib import Path
from omniseg_rt.outputs import mask_objects, to_level0, write_geojson

folder, repeats = Path(sys.argv[1]), int(sys.argv[2])
manifest = json.loads((folder / "manifest.json").read_text())
scales = {g["group"]: g["mpp"] / manifest["geometry"]["mpp"] for g in manifest["groups"]}
masks = []
for group, scale in scales.items():
    with tifffile.TiffFile(folder / f"mask_{group}.ome.tif") as tif:
        pixels = tif.series[0].levels[0].asarray()
    masks += [(m, scale) for m in (pixels if pixels.ndim == 3 else pixels[None])]
best = {"tracing": 1e9, "geojson": 1e9}
for _ in range(repeats):
    start = time.perf_counter()
    found = [(scale, list(mask_objects(m))) for m, scale in masks]
    best["tracing"] = min(best["tracing"], time.perf_counter() - start)
    start = time.perf_counter()
    objects = ((0, to_level0(p, s, s)) for s, pairs in found for p, _ in pairs)
    write_geojson(folder.parent / "bench.geojson", objects)
    best["geojson"] = min(best["geojson"], time.perf_counter() - start)
errors = [abs(p.area - n) / n for _, pairs in found for p, n in pairs]
print(json.dumps({**best, "objects": len(errors), "max_area_error": max(errors, default=0.0),
                  "vertices": int(sum(shapely.get_num_coordinates(p) for _, pairs in found for p, _ in pairs))}))
"""


def timed(tree: Path, folder: Path, repeats: int) -> dict:
    """The timing script run with ``tree``'s omniseg_rt, one thread for numpy and GEOS alike."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TIMING, str(folder), str(repeats)], capture_output=True, text=True,
                         env=env, cwd=tree, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, default=SHARED / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs")
    p.add_argument("--mpp", type=float, help="the slide's pixel size, if it states none (the TCGA sample: 0.5)")
    p.add_argument("--engine", default=None)
    p.add_argument("--outputs", type=Path, default=None, help="a finished slide folder instead of segmenting")
    p.add_argument("--before", type=Path, default=None, help="another checkout of this repository to compare")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.outputs
        if folder is None:
            from omniseg_rt.runtime import segment

            mpp = args.mpp or (0.5 if args.slide.name.startswith("tcga-cr-7395") else None)
            [result] = segment(args.slide, engine=args.engine, out=Path(tmp) / "seg", mpp=mpp)
            assert result.status == "done", result.reason
            folder = Path(result.out)
        write_seconds = json.loads((folder / "manifest.json").read_text())["seconds"]["write"]
        trees = [("this code", REPO)] + ([("before", args.before.resolve())] if args.before else [])
        rows = [{"code": name, "tree": str(tree), **timed(tree, folder, args.repeats)} for name, tree in trees]
    table = Table(title=f"writing the objects of {args.slide.name if args.outputs is None else folder.name} "
                        f"(one thread, best of {args.repeats}), {environment()['cpu']}")
    for column in ("code", "objects", "vertices", "tracing s", "GeoJSON s", "max area error", "x this code"):
        table.add_column(column, justify="left" if column == "code" else "right")
    ours = rows[0]["tracing"] + rows[0]["geojson"]
    for r in rows:
        table.add_row(r["code"], str(r["objects"]), str(r["vertices"]), f"{r['tracing']:.2f}", f"{r['geojson']:.2f}",
                      f"{100 * r['max_area_error']:.2f} %", f"{(r['tracing'] + r['geojson']) / ours:.2f}")
    Console(width=140).print(table)
    print(f"segment's write phase (all outputs), from the slide's manifest: {write_seconds:.1f} s")
    path = write_result(f"writing_{args.slide.stem if args.outputs is None else folder.name}", {"environment": environment(), "rows": rows,
                                                        "segment_write_seconds": write_seconds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
