"""Many slides on many machines through Ray: slides are the unit of scheduling, each worker actor
opens the engine once and runs the same slide pipeline as a local run (``runtime.run_slide``).

``ray`` is imported here only, lazily; :func:`segment_on_ray` is what ``segment --ray`` calls.
"""

from omniseg_rt.distributed.scheduler import segment_on_ray

__all__ = ["segment_on_ray"]
