"""Slides/hour: one local ``segment`` vs ``segment --ray local`` on this machine, and Ray's
scheduling overhead per slide (same compute: one worker with all cores vs the local run).

Slides: the three shared real slides (Aperio JPEG, Aperio JPEG 2000, DICOM), 5x group, in two
calls: the Aperio slides with pixel size 0.5 um/px, the DICOM with 2.0 (at its own 29 um/px no
group could run). Each ``--ray local`` call starts its own local cluster, so the overhead per
slide includes two cluster starts for three slides.

    python benchmarks/bench_ray.py [--engine DIR] [--threads 2]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import SHARED, environment, parser, write_result
from omniseg_rt.engines import build_engine

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--engine", default=None)
    args = p.parse_args()
    from omniseg_rt.distributed import segment_on_ray
    from omniseg_rt.runtime import segment

    slides = SHARED / "data" / "slides"
    jobs = [([slides / "CMU-1-Small-Region.svs", slides / "tcga-cr-7395-01a-01-ts1.svs"], 0.5),
            ([slides / "dicom-camelyon"], 2.0)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine = args.engine or build_engine(None, out=tmp / "engine", threads=args.threads)[0]

        def timed(run, label: str, **extra) -> None:
            seconds, count = 0.0, 0
            out = tmp / label.replace(" ", "-")
            for paths, mpp in jobs:
                start = time.perf_counter()
                results = run(paths, engine=engine, out=out, tissues="5x", mpp=mpp, **extra)
                seconds += time.perf_counter() - start
                assert all(r.status == "done" for r in results), [r.reason for r in results]
                count += len(results)
            rows.append({"run": label, "slides": count, "seconds": seconds, "slides_per_hour": count * 3600 / seconds})
            shutil.rmtree(out)

        timed(segment, "local")
        timed(segment_on_ray, "ray local, 1 worker x 2 CPUs", address="local", num_cpus=2, worker_cpus=2)
        timed(segment_on_ray, "ray local, 2 workers x 1 CPU", address="local", num_cpus=2, worker_cpus=1)
    overhead = (rows[1]["seconds"] - rows[0]["seconds"]) / rows[0]["slides"]
    table = Table(title="slides/hour, 3 real slides in 2 calls, 5x group, this machine")
    for column in ("run", "slides", "seconds", "slides/hour"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["run"], str(r["slides"]), f"{r['seconds']:.1f}", f"{r['slides_per_hour']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"Ray overhead per slide (cluster start + actor + engine open, amortised): {overhead:.1f} s")
    print(f"wrote {write_result('ray', {'environment': environment(), 'rows': rows, 'overhead_per_slide_s': overhead})}")


if __name__ == "__main__":
    main()
