"""Which paths are slides: files OpenSlide or Pillow opens, and DICOM folders."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from omniseg_rt.errors import InvalidInputError, MissingFileError

#: Extensions taken when a folder is scanned (a file named explicitly is always tried).
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide",
                  ".png", ".jpg", ".jpeg"}


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def find_slides(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Slide paths from files and folders, in the order given (folders sorted by name).

    A folder holding ``.dcm`` files is one DICOM slide; any other folder is scanned (not
    recursively, but DICOM sub-folders count) for files with a slide extension.
    Raises MissingFileError for a path that does not exist and InvalidInputError for a folder
    with no slides or two slides of the same name (their outputs would collide).
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise MissingFileError(f"{path}: no such slide file or folder")
        if path.is_file() or is_dicom_folder(path):
            found.append(path)
            continue
        inside = [p for p in sorted(path.iterdir())
                  if (p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES) or is_dicom_folder(p)]
        if not inside:
            raise InvalidInputError(f"{path}: a folder with no slides in it (looked for "
                                    f"{', '.join(sorted(SLIDE_SUFFIXES))} files and DICOM folders)")
        found.extend(inside)
    names: dict[str, Path] = {}
    for path in found:
        other = names.setdefault(slide_name(path), path)
        if other != path:
            raise InvalidInputError(f"{other} and {path} have the same name {slide_name(path)!r}: their outputs "
                                    f"would collide; segment them into different --out folders")
    return found


def slide_name(path: Path) -> str:
    """The name of a slide's output folder: the file name without extension, or the folder name."""
    return path.name if path.is_dir() else path.stem
