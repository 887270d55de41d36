"""Slides: find them, open them (OpenSlide, or plain images as one-level slides), know their
pixel size, read regions as RGB uint8, and find the tissue on them.

- :func:`find_slides`: files and folders -> slide paths (a DICOM slide is a folder);
- :func:`open_slide` -> :class:`SlideReader` (``geometry``: :class:`SlideGeometry`, ``read``,
  ``thumbnail``), pixel size resolved by :func:`resolve_mpp`;
- :func:`detect_tissue`: a low-resolution tissue mask.
"""

from omniseg_rt.slide.discover import find_slides, slide_name
from omniseg_rt.slide.mpp import MissingPixelSizeError, resolve_mpp
from omniseg_rt.slide.reader import SlideGeometry, SlideReader, open_slide
from omniseg_rt.slide.tissue import detect_tissue

__all__ = ["MissingPixelSizeError", "SlideGeometry", "SlideReader", "detect_tissue", "find_slides", "open_slide",
           "resolve_mpp", "slide_name"]
