"""The TensorRT runner's own logic, with TensorRT and pycuda absent: stand-ins that count.

TensorRT itself was NOT executed here (it cannot be installed on these machines). What these tests
run is ``omniseg_rt/engines/tensorrt_backend.py`` against small stand-ins of the TensorRT 10/11
and pycuda calls it makes, each with the real call's name, arguments and return convention
(booleans from ``set_input_shape`` / ``set_tensor_address`` / ``set_timing_cache``, ``None`` from a
failed ``deserialize_cuda_engine`` or ``create_timing_cache``): I/O validation, checked return
values, the CUDA context pushed and popped on every path, device memory freed, timing caches.
"""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest

from omniseg_rt.engines.base import GraphSpec
from omniseg_rt.hardware import visible_gpus
from omniseg_rt.errors import InvalidInputError

GPU = {"name": "NVIDIA RTX 4000 Ada Generation", "compute_capability": "8.9"}


class FakeTrt:
    __version__ = "10.3.0.26"
    TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    DataType = types.SimpleNamespace(UINT8="UINT8", FLOAT="FLOAT", HALF="HALF")

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            self.level = level

    def __init__(self, engine=None):
        self.engine = engine
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return trt.engine

        self.Runtime = Runtime


class FakeEngine:
    def __init__(self, io=None, refuse_address=False, tasks=2):
        self.io = io or [("image", "INPUT", "UINT8"), ("logits", "OUTPUT", "FLOAT")]
        self.num_io_tensors = len(self.io)
        self.refuse_address, self.tasks = refuse_address, tasks

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return next(m for n, m, _ in self.io if n == name)

    def get_tensor_dtype(self, name):
        return next(d for n, _, d in self.io if n == name)

    def create_execution_context(self):
        return FakeExecutionContext(self)


class FakeExecutionContext:
    """Computes a known function: each tissue's output is the window's mean over channels minus
    128 plus the tissue index."""

    max_batch = 4

    def __init__(self, engine):
        self.engine, self.addresses, self.shape = engine, {}, None

    def set_tensor_address(self, name, address):
        if self.engine.refuse_address:
            return False
        self.addresses[name] = address
        return True

    def set_input_shape(self, name, shape):
        if shape[0] > self.max_batch:
            return False
        self.shape = shape
        return True

    def execute_async_v3(self, stream_handle):
        src = FakeCuda.memory[self.addresses["image"]]
        mean = src[:self.shape[0]].astype(np.float32).mean(axis=1) - 128
        FakeCuda.memory[self.addresses["logits"]] = np.stack([mean + t for t in range(self.engine.tasks)], axis=1)
        return True


class FakeCuda:
    """pycuda.driver: a primary context whose push/pop are counted, device buffers as arrays."""

    memory: dict[int, np.ndarray] = {}

    def __init__(self):
        self.depth, self.detached, self.freed, self.allocated = 0, 0, 0, 0
        cuda = self

        class PrimaryContext:
            def push(self):
                cuda.depth += 1

            def detach(self):
                cuda.detached += 1

        class Device:
            def __init__(self, ordinal):
                assert ordinal == 0

            def retain_primary_context(self):
                return PrimaryContext()

        class Context:
            @staticmethod
            def pop():
                assert cuda.depth > 0, "pop without push"
                cuda.depth -= 1

        self.Device, self.Context = Device, Context

    class Stream:
        handle = 1234

    class Event:
        def record(self, stream):
            pass

        def synchronize(self):
            pass

    def _need_context(self):
        assert self.depth > 0, "a CUDA call without a current context"

    def pagelocked_empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    def mem_alloc(self, nbytes):
        self._need_context()
        self.allocated += 1
        cuda = self

        class Allocation:
            def __init__(self):
                self.address = id(self)
                FakeCuda.memory[self.address] = None

            def __int__(self):
                return self.address

            def free(self):
                cuda.freed += 1

        return Allocation()

    def memcpy_htod_async(self, dev, host, stream):
        self._need_context()
        FakeCuda.memory[int(dev)] = host.copy()

    def memcpy_dtoh_async(self, host, dev, stream):
        self._need_context()
        host[...] = FakeCuda.memory[int(dev)][:len(host)]


def _manifest():
    from omniseg_rt.engines.manifest import EngineManifest, GraphEntry

    return EngineManifest(
        backend="tensorrt", precision="fp16", window=32, source={}, family="scale", profile={}, settings={},
        built_on={}, versions={}, graphs=[GraphEntry("all", "graphs/all.onnx", [0, 1], plan="plans/all.plan")],
        tensorrt={"version": FakeTrt.__version__, "gpu": GPU["name"], "compute_capability": GPU["compute_capability"],
                  "profile": {"batch": [1, 2, 4], "window": 32}},
        rebuild={"source": "m.pth", "backend": "tensorrt", "precision": "fp16"})


def _open(tmp_path, trt, cuda):
    from omniseg_rt.engines.tensorrt_backend import TensorRTRunner

    FakeCuda.memory = {}
    (tmp_path / "plans").mkdir(exist_ok=True)
    (tmp_path / "plans" / "all.plan").write_bytes(b"plan")
    spec = GraphSpec("all", (0, 1), None, None, "graphs/all.onnx")
    gpus = ({"name": GPU["name"], "compute_capability": GPU["compute_capability"]},)
    return TensorRTRunner(spec, tmp_path, _manifest(), trt=trt, cuda=cuda, gpus=gpus)


def _expected(images):
    mean = images.astype(np.float32).mean(axis=1) - 128
    return np.stack([mean, mean + 1], axis=1)


def test_runs_batches_with_the_context_pushed_only_around_each_call(tmp_path):
    cuda = FakeCuda()
    runner = _open(tmp_path, FakeTrt(FakeEngine()), cuda)
    assert cuda.depth == 0  # nothing left pushed on the opening thread
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(runner.infer(images), _expected(images), rtol=1e-6)  # split over both slots
    tickets = [runner.submit(images[i:i + 2]) for i in range(0, 6, 2)]  # more batches than slots in flight
    np.testing.assert_allclose(np.concatenate([t.result() for t in tickets]), _expected(images), rtol=1e-6)
    assert cuda.depth == 0
    runner.close()
    assert (cuda.depth, cuda.detached, cuda.freed) == (0, 1, cuda.allocated) and cuda.allocated == 4
    runner.close()  # twice is harmless
    assert cuda.detached == 1


def test_a_batch_outside_the_profile_fails_cleanly_and_the_runner_goes_on(tmp_path):
    cuda = FakeCuda()
    runner = _open(tmp_path, FakeTrt(FakeEngine()), cuda)
    FakeExecutionContext.max_batch = 2  # TensorRT refuses shapes outside the engine's profile
    try:
        images = np.zeros((3, 3, 32, 32), np.uint8)
        with pytest.raises(InvalidInputError, match="refused the input shape"):
            runner.submit(images).result()
        assert cuda.depth == 0
        np.testing.assert_allclose(runner.infer(images[:2]), _expected(images[:2]))
        with pytest.raises(InvalidInputError, match="up to 4 windows of 32x32"):
            runner.submit(np.zeros((1, 3, 64, 64), np.uint8))
        assert cuda.depth == 0
    finally:
        FakeExecutionContext.max_batch = 4
        runner.close()


@pytest.mark.parametrize("engine, words", [
    (None, "could not deserialise plans/all.plan; rebuild with: omniseg-rt build m.pth --backend tensorrt"),
    (FakeEngine(io=[("image", "INPUT", "FLOAT"), ("logits", "OUTPUT", "FLOAT")]), "image is INPUT FLOAT, expected INPUT UINT8"),
    (FakeEngine(io=[("input", "INPUT", "UINT8"), ("logits", "OUTPUT", "HALF")]), "I/O tensors ['input', 'logits']"),
    (FakeEngine(refuse_address=True), "refused the device address of image"),
])
def test_a_bad_engine_fails_with_the_context_popped_and_memory_freed(tmp_path, engine, words):
    cuda = FakeCuda()
    with pytest.raises(InvalidInputError) as error:
        _open(tmp_path, FakeTrt(engine), cuda)
    assert words in str(error.value)
    assert (cuda.depth, cuda.detached, cuda.freed) == (0, 1, cuda.allocated)


def test_an_engine_from_another_gpu_or_tensorrt_says_how_to_rebuild(tmp_path):
    from omniseg_rt.engines.tensorrt_backend import TensorRTRunner

    trt = FakeTrt(FakeEngine())
    trt.__version__ = "10.8.0.43"
    cuda = FakeCuda()
    spec = GraphSpec("all", (0, 1), None, None, "graphs/all.onnx")
    with pytest.raises(InvalidInputError, match="built with TensorRT 10.3.0.26, this machine has 10.8.0.43.*rebuild"):
        TensorRTRunner(spec, tmp_path, _manifest(), trt=trt, cuda=cuda, gpus=(GPU,))
    assert cuda.depth == 0


class FakeTimingCache:
    def __init__(self, entries):
        self.entries = set(entries)

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return ",".join(sorted(self.entries)).encode()


class FakeBuilderConfig:
    """create_timing_cache returns None for bytes it cannot read; set_timing_cache a boolean."""

    def __init__(self, learned=()):
        self.cache, self.learned = None, set(learned)

    def create_timing_cache(self, data):
        if data.startswith(b"garbage"):
            return None
        return FakeTimingCache(e for e in data.decode().split(",") if e)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        if self.cache is not None:
            self.cache.entries |= self.learned
        return self.cache


def test_timing_caches_live_in_the_cache_folder_per_gpu_model_and_merge(tmp_path, monkeypatch, caplog):
    from omniseg_rt.engines.tensorrt_backend import attach_timing_cache, save_timing_cache, timing_cache_path

    monkeypatch.setenv("OMNISEG_RT_CACHE", str(tmp_path / "cache"))
    path = timing_cache_path({"gpu": GPU["name"], "compute_capability": "8.9"}, "10.3.0.26")
    assert path.parent == tmp_path / "cache" / "tensorrt"
    assert path != timing_cache_path({"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "10.3.0.26")
    # first build: no file yet -> an empty cache, then the timings learned are written
    config = FakeBuilderConfig(learned={"conv1"})
    assert attach_timing_cache(config, path).entries == set()
    save_timing_cache(config, path)
    assert path.read_bytes() == b"conv1"
    # a concurrent build wrote "conv2" meanwhile: both survive
    config = FakeBuilderConfig(learned={"conv3"})
    attach_timing_cache(config, path)
    path.write_bytes(b"conv1,conv2")
    save_timing_cache(config, path)
    assert path.read_bytes() == b"conv1,conv2,conv3"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]  # no temporaries
    # a corrupt file: warned, replaced by an empty cache, not passed on as None
    path.write_bytes(b"garbage")
    config = FakeBuilderConfig()
    with caplog.at_level(logging.WARNING):
        assert attach_timing_cache(config, path).entries == set()
    assert "not a timing cache this TensorRT and GPU can use" in caplog.text


def test_timing_cache_that_tensorrt_refuses_is_an_error_not_ignored(tmp_path):
    from omniseg_rt.engines.tensorrt_backend import attach_timing_cache

    config = FakeBuilderConfig()
    config.set_timing_cache = lambda cache, ignore_mismatch: False
    with pytest.raises(InvalidInputError, match="could not create or set a timing cache"):
        attach_timing_cache(config, tmp_path / "none.cache")


def test_visible_gpus_follow_cuda_visible_devices():
    smi = ("0, GPU-aaaa1111, NVIDIA H200, 9.0, 143771 MiB\n"
           "1, GPU-bbbb2222, NVIDIA L4, 8.9, 23034 MiB\n")
    assert [g["name"] for g in visible_gpus(smi, None)] == ["NVIDIA H200", "NVIDIA L4"]
    assert [g["name"] for g in visible_gpus(smi, "1")] == ["NVIDIA L4"]  # pycuda's device 0 is the L4
    assert [g["name"] for g in visible_gpus(smi, "GPU-bbbb,0")] == ["NVIDIA L4", "NVIDIA H200"]
    assert visible_gpus(smi, "") == () and visible_gpus(smi, "-1") == ()
    assert [g["name"] for g in visible_gpus(smi, "0,7,1")] == ["NVIDIA H200"]  # CUDA stops at an unknown id
    assert visible_gpus(smi, None)[1]["compute_capability"] == "8.9"
