"""Regenerate the README's "What you get" section from real runs: nothing in it is typed by hand.

    python tools/readme_figures.py [--data ../shared/data/kidney_patches] [--engines benchmarks/results/engines.json]

1. Runs ``omniseg-rt demo --patches DATA`` into a temporary folder (a fresh engine for the bundled
   model; no torch needed) and writes a downscaled copy of the sample slide's ``overlay.png`` to
   ``docs/demo-overlay.jpg``. The kidney-patch picture it also draws is not copied into the repo:
   the patches are not ours to republish; the README says how to draw it.
2. Runs ``omniseg-rt evaluate DATA --json`` (all patches, and the training run's train / val
   split from the bundled card's recipe) and tabulates the per-tissue Dice.
3. Tabulates ``benchmarks/bench_engines.py``'s JSON (run it first, alone on the machine).

The section is rewritten in place between ``<!-- what-you-get:start -->`` and
``<!-- what-you-get:end -->``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- what-you-get:start -->", "<!-- what-you-get:end -->"
PICTURE = REPO / "docs" / "demo-overlay.jpg"


def cli(*args: str) -> str:
    """Run ``omniseg-rt ARGS`` in this interpreter's environment; its stdout."""
    done = subprocess.run([sys.executable, "-m", "omniseg_rt", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"omniseg-rt {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def demo_picture(data: Path, width: int = 720) -> str:
    """Run the demo; the downscaled overlay's README path."""
    with tempfile.TemporaryDirectory() as tmp:
        cli("demo", "--out", tmp, "--patches", str(data))
        overlay = next(Path(tmp).glob("*/overlay.png"))
        image = Image.open(overlay).convert("RGB")
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        PICTURE.parent.mkdir(exist_ok=True)
        image.save(PICTURE, quality=85, optimize=True)
    return PICTURE.relative_to(REPO).as_posix()


def dice_table(data: Path) -> str:
    """Markdown: per tissue, Dice on the held-out / training / all patches (``evaluate --json``)."""
    from omniseg_rt.data import DEMO_CARD

    recipe = json.loads(DEMO_CARD.read_text())["recipe"]
    split = ["--val-fraction", str(recipe["val_fraction"]), "--seed", str(recipe["seed"])]
    runs = {side: json.loads(cli("evaluate", str(data), "--json", *(["--split", side, *split] if side != "all" else [])))
            for side in ("val", "train", "all")}
    by = {side: {row["abbrev"]: row for row in run["tissues"]} for side, run in runs.items()}
    lines = ["| tissue | held-out patches | Dice, held out | Dice, training patches | Dice, all 72 |",
             "|---|---|---|---|---|"]
    for row in runs["all"]["tissues"]:
        t = row["abbrev"]
        lines.append(f"| {t} ({row['name']}) | {by['val'][t]['patches']} | {by['val'][t]['dice']:.3f} | "
                     f"{by['train'][t]['dice']:.3f} | {row['dice']:.3f} |")
    means = {side: run["mean_dice"] for side, run in runs.items()}
    lines.append(f"| mean | {sum(by['val'][t]['patches'] for t in by['val'])} | {means['val']:.3f} | "
                 f"{means['train']:.3f} | {means['all']:.3f} |")
    return "\n".join(lines)


def engine_table(path: Path) -> str:
    """Markdown: ``bench_engines.py``'s rows (windows/s and speed-up over the six-pass loop)."""
    result = json.loads(path.read_text())
    env = result["environment"]
    head = (f"{result['batch']} windows of {result['window']}x{result['window']} px, {result['threads']} threads, "
            f"{env.get('cpu', '?')} ({', '.join(env.get('cpu_flags', [])) or 'flags not recorded'}):")
    lines = [head, "", "| variant | windows/s | vs the original loop (one pass per tissue) |", "|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {result['batch'] / row['seconds']:.2f} | {row['speedup_vs_loop']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "kidney_patches")
    parser.add_argument("--engines", type=Path, default=REPO / "benchmarks" / "results" / "engines.json")
    args = parser.parse_args()

    picture = demo_picture(args.data)
    dice = dice_table(args.data)
    section = f"""{START}
## What you get

`omniseg-rt demo` segments the bundled sample slide (CMU-1-Small-Region, public domain): per-tissue
masks as pyramidal OME-TIFF, polygons that QuPath imports, statistics and this overlay. The slide
is skin, not kidney: the kidney heads mark much of it, glass next to tissue included, so read it
for what the outputs look like, not for accuracy. Overlapping windows are blended (Gaussian
weights), so no window grid shows; `segment --exclusive` also writes one tissue label per pixel.

![Overlay of the demo slide: every tissue's outline over the slide]({picture})

`omniseg-rt demo --patches ../shared/data/kidney_patches` also scores the bundled model on the 72
labelled kidney patches and draws `omniseg-demo/kidney_patches.png`: per tissue, patches with the
reference outlines beside the predicted ones (not reproduced here: the patches are not ours to
republish). `omniseg-rt evaluate ../shared/data/kidney_patches --json` gives these figures (the
held-out patches are split off by source image, as in training; `--split val`):

{dice}

Engines for this network, measured side by side in one run by `python benchmarks/bench_engines.py
--checkpoint omniseg_rt/data/demo_model.pth`:

{engine_table(args.engines) if args.engines.is_file() else "(run benchmarks/bench_engines.py first)"}
{END}"""
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.replace("\n## Use\n", f"\n{section}\n\n## Use\n", 1)
    readme.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
