"""Reading windows on threads and on worker processes (runtime/readers.py), on the real slides."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from conftest import SLIDES
from omniseg_rt.runtime.readers import Prefetcher, ReadProcesses, ReadWorkerError
from omniseg_rt.slide import open_slide
from omniseg_rt.slide.plan import plan_group
from omniseg_rt.tissues import SCALE_GROUPS

# (slide, the pixel size to give it: the JPEG 2000 one states none)
REAL = [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5), ("dicom-camelyon", None)]


def _specs(reader, count: int = 10):
    """Windows of every scale group (different levels and resizing), ``count`` of each at most."""
    g = reader.geometry
    specs = []
    for group in SCALE_GROUPS:
        plan = plan_group(group, group.nominal_mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, 256, 32)
        specs += [s for band in plan.bands for s in band][:count]
    return specs


@pytest.mark.parametrize(("name", "mpp"), REAL)
def test_processes_read_the_same_windows_as_threads(name, mpp):
    path = SLIDES / name
    with open_slide(path, mpp) as reader:
        specs = _specs(reader)
        threads = Prefetcher(reader, 2, ahead=4)
        try:
            want = [pixels for _, pixels in threads.iterate(specs)]
        finally:
            threads.close()
    with ReadProcesses(path, mpp, 2) as processes:
        prefetch = processes.prefetcher(ahead=4)
        got = list(prefetch.iterate(specs))
        # consecutive windows in chunks of 4 (the last one short): the same windows, in order
        chunked = list(processes.prefetcher(ahead=7, chunk=4).iterate(specs))
    assert [spec for spec, _ in got] == specs == [spec for spec, _ in chunked], "windows come back in the order asked"
    assert len(got) >= 10 and prefetch.seconds > 0 and len(specs) % 4
    for (_, pixels), (_, again), expected in zip(got, chunked, want):
        np.testing.assert_array_equal(pixels, expected)
        np.testing.assert_array_equal(again, expected)
    with ReadProcesses(path, mpp, 2) as processes:  # as read at the level, for an engine that resizes
        raw = list(processes.prefetcher(ahead=4, resize=False).iterate(specs))
    assert [pixels.shape for _, pixels in raw] == [(3, *spec.read_size[::-1]) for spec in specs]
    assert any(spec.read_size != (spec.window, spec.window) for spec in specs)


def test_a_reading_process_that_dies_is_named_with_the_slide():
    path = SLIDES / "CMU-1-Small-Region.svs"
    with open_slide(path) as reader:
        specs = _specs(reader) * 3
    with ReadProcesses(path, None, 2) as processes:
        windows = processes.prefetcher(ahead=2).iterate(specs)
        next(windows)
        for pid in list(processes.pool._processes):  # what an out-of-memory kill does to a worker
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ReadWorkerError, match=r"CMU-1-Small-Region\.svs: a reading process died.*resume"):
            for _ in windows:
                pass
