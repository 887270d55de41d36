"""Does segment's cost follow the tissue or the slide's area? The same 2048x2048 px tissue square
(synthetic stain blocks, JPEG tiles) in the middle of ever larger glass slides (Aperio-style
pyramid, 0.25 um/px), the peritubular-capillary group (40x: a canvas the size of level 0).

One subprocess per slide: windows, seconds per stage (writing is what follows the area when the
writers read empty canvas), peak RSS.

    python benchmarks/bench_glass.py [--engine DIR] [--sides 16384 32768] [--tissues PTC]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import REPO, environment, parser, write_result
from omniseg_rt.engines import build_engine

TILE, SQUARE = 512, 2048

RUN = """
import json, resource, sys
from pathlib import Path
from omniseg_rt.runtime import segment
slide, engine, out, tissues = sys.argv[1:5]
[r] = segment(slide, engine=engine, out=out, tissues=tissues, force=True)
print(json.dumps({"status": r.status, "reason": r.reason, "windows": r.windows, "seconds": r.seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


PHASE = 3072  # 8 strides of the default plan (384 px), 6 tiles, 96 px of the tissue detector at 8 um/px


def _origin(side: int) -> int:
    """Top-left of the tissue square: near the middle, at the same place relative to the window
    grid and the tissue detector's pixels on every slide, so every slide has the same windows."""
    return (side // 2) // PHASE * PHASE


def glass_slide(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` px slide at 0.25 um/px, white but for a tissue square near the middle."""
    import tifffile

    sys.path.insert(0, str(REPO / "tests"))
    from synthetic import tissue_pattern

    square = tissue_pattern(SQUARE, SQUARE, block=64, glass_from=1.0)
    white = np.full((TILE, TILE, 3), 255, np.uint8)

    def tiles(level: int):
        down = 2**level
        size, part = -(-side // down), square[::down, ::down]
        start = _origin(side) // down
        for ty in range(0, size, TILE):
            for tx in range(0, size, TILE):
                ys, xs = max(ty, start), max(tx, start)
                ye, xe = min(ty + TILE, start + part.shape[0]), min(tx + TILE, start + part.shape[1])
                if ys >= ye or xs >= xe:
                    yield white
                    continue
                tile = white.copy()
                tile[ys - ty:ye - ty, xs - tx:xe - tx] = part[ys - start:ye - start, xs - start:xe - start]
                yield tile

    description = f"Aperio Image Library v12.0.0\r\n{side}x{side} ({TILE}x{TILE}) JPEG/RGB Q=90|AppMag = 40|MPP = 0.25"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(4):
            size = -(-side // 2**level)
            tif.write(tiles(level), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      photometric="rgb", description=description if level == 0 else None, metadata=None)
    return path


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--engine", default=None)
    p.add_argument("--sides", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--tissues", default="PTC")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine = args.engine or build_engine(None, out=tmp / "engine", threads=args.threads)[0]
        for side in args.sides:
            slide = glass_slide(tmp / f"glass-{side}.svs", side)
            done = subprocess.run([sys.executable, "-c", RUN, str(slide), str(engine), str(tmp / "out"), args.tissues],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            assert result["status"] == "done", result["reason"]
            rows.append({"side": side, "tissues": args.tissues, **result})
            slide.unlink()
    table = Table(title=f"the same {SQUARE}^2 px tissue square on larger glass ({args.tissues}, 0.25 um/px)")
    for column in ("slide", "windows", "seconds: tissue / infer / write / total", "peak RSS"):
        table.add_column(column)
    for r in rows:
        s = r["seconds"]
        table.add_row(f"{r['side']}^2", str(sum(r["windows"].values())),
                      f"{s['tissue']:.1f} / {s['infer']:.1f} / {s['write']:.1f} / {s['total']:.1f}",
                      f"{r['peak_rss_mb']:.0f} MB")
    Console().print(table)
    print(f"wrote {write_result('glass', {'environment': environment(), 'rows': rows})}")


if __name__ == "__main__":
    main()
