"""The slide pipeline: window plan per scale group, threaded readers, batches in flight through
the engine, stitching into journalled on-disk canvases, and the outputs.

``segment(slides, engine=..., out=...)`` is the public entry (also ``omniseg_rt.segment``).
"""

from omniseg_rt.runtime.pipeline import SlideResult
from omniseg_rt.runtime.segment import segment
from omniseg_rt.runtime.settings import SegmentSettings

__all__ = ["SegmentSettings", "SlideResult", "segment"]
