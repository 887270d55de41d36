"""Data shipped inside the package.

``demo_model.pth``: the demo Omni-Seg model (scale-aware family, weights stored as float16)
trained on 72 public kidney patches; ``MODEL_CARD.md`` and ``demo_model.json`` beside it say how
it was made and how well it does. A demonstration, not a clinical model. ``demo_model_all.onnx``
(+ ``demo_model_all.json``): the same model exported for all six tissues (float16-stored weights,
float32 compute, identical numbers), so ``segment`` and ``demo`` build their default engine from
it without PyTorch.

``CMU-1-Small-Region.svs``: a small Aperio slide (2220 x 2967 px, 0.499 um/px, JPEG) from the
OpenSlide test data, CC0 1.0, Carnegie Mellon University. It shows H&E-stained human SKIN, not
kidney: it is real tissue for smoke tests, parity checks and the demo, not a kidney sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_SLIDE = Path(__file__).with_name("CMU-1-Small-Region.svs")
DEMO_MODEL = Path(__file__).with_name("demo_model.pth")
DEMO_CARD = Path(__file__).with_name("demo_model.json")
DEMO_GRAPH = Path(__file__).with_name("demo_model_all.onnx")


def demo_model() -> Path:
    """The bundled demo checkpoint; a clear error where this install lacks it."""
    if not DEMO_MODEL.is_file():
        from omniseg_rt.errors import MissingFileError

        raise MissingFileError(f"{DEMO_MODEL}: the bundled demo model is missing from this install; "
                               "pass a checkpoint explicitly or reinstall omniseg-rt")
    return DEMO_MODEL


def demo_graph() -> Path:
    """The bundled demo model's all-tissue ONNX graph (its sidecar manifest beside it)."""
    if not DEMO_GRAPH.is_file():
        from omniseg_rt.errors import MissingFileError

        raise MissingFileError(f"{DEMO_GRAPH}: the bundled demo graph is missing from this install; "
                               "pass --engine or reinstall omniseg-rt")
    return DEMO_GRAPH


def sample_windows(count: int, size: int) -> np.ndarray:
    """``count`` real tissue windows from the bundled slide: uint8 [count, 3, size, size] RGB.

    Deterministic: the slide's level 0 is cut into a grid of ``size`` windows, and the ``count``
    with the largest tissue fraction (pixels whose max - min channel exceeds 25, i.e. stained,
    not glass) are returned in grid order.
    """
    import openslide

    with openslide.OpenSlide(str(SAMPLE_SLIDE)) as slide:
        width, height = slide.dimensions
        xs = range(0, max(width - size, 0) + 1, size) or [0]
        ys = range(0, max(height - size, 0) + 1, size) or [0]
        tiles = []
        for y in ys:
            for x in xs:
                rgb = np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))
                stained = float((rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2) > 25).mean())
                tiles.append((-stained, len(tiles), rgb))
    chosen = sorted(sorted(tiles, key=lambda t: (t[0], t[1]))[:count], key=lambda t: t[1])
    picks = [t[2] for t in chosen]
    while len(picks) < count:  # more windows asked than the slide holds: repeat, flipped
        picks.append(picks[len(picks) % len(chosen)][::-1].copy())
    return np.ascontiguousarray(np.stack(picks).transpose(0, 3, 1, 2))
