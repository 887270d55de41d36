"""``omniseg-rt segment`` and ``omniseg-rt demo``: thin shells over :func:`omniseg_rt.segment`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, err_console, print_json, rows_table
from omniseg_rt.errors import UsageError

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def segment(
    slides: Annotated[list[Path], typer.Argument(help="Slide files or folders (a DICOM slide is a folder).")],
    engine: Annotated[Optional[Path], typer.Option(
        help="Engine directory (omniseg-rt build). Default: the bundled model's CPU engine, built once.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder: one sub-folder per slide, summary.csv.")] = Path(
        "segmentations"),
    tissues: Annotated[str, typer.Option(help="all, a scale group (5x, 10x, 40x) or e.g. CAP,TUFT.")] = "all",
    mpp: Annotated[Optional[float], typer.Option(
        help="Level-0 pixel size in um/px, for slides that lack it or state it wrongly.")] = None,
    overlap: Annotated[Optional[int], typer.Option(
        help="Context pixels shared by neighbouring windows (even; default 128).")] = None,
    blend: Annotated[Optional[str], typer.Option(
        help="How overlapping windows combine: gaussian (weighted mean, no seams; default) or none (centre crops).")] = None,
    exclusive: Annotated[bool, typer.Option(
        help="Also write one tissue label per pixel (labels.ome.tif, objects_exclusive.geojson), merged as the "
             "original Omni-Seg pipeline does.")] = False,
    batch: Annotated[Optional[int], typer.Option(help="Windows per engine call (default: the engine's).")] = None,
    readers: Annotated[int, typer.Option(help="Windows read at once (threads or processes).")] = 2,
    read_with: Annotated[str, typer.Option(
        help="threads (enough for CPU engines) or processes (each with its own slide handle: feeds a GPU engine; "
             "OpenSlide stops scaling at 6-8 threads).")] = "threads",
    write_processes: Annotated[Optional[int], typer.Option(
        help="Processes tracing polygons while outputs are written (default: a quarter of the cores, half with "
             "a GPU engine, at most 8; 0: in the writing thread).")] = None,
    write_slides: Annotated[Optional[int], typer.Option(
        help="Slides whose outputs are written at once while the next one computes (default: 1 + cores / 8, "
             "at most 4).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue interrupted slides from their journal.")] = True,
    force: Annotated[bool, typer.Option(
        help="Redo slides already complete, for exactly this request (outputs it does not list are removed).")] = False,
    wait: Annotated[bool, typer.Option(
        help="If another run is writing into --out, wait for it to finish instead of stopping.")] = False,
    ray: Annotated[Optional[str], typer.Option(
        help="Spread slides over Ray: 'local' (a cluster on this machine) or a cluster address.")] = None,
    worker_cpus: Annotated[Optional[int], typer.Option(
        help="With --ray on CPUs: cores per worker (default 4). GPU clusters: one worker per GPU.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the per-slide results as JSON.")] = False,
) -> None:
    """Segment whole slides for every tissue type at its own magnification."""
    from omniseg_rt.runtime.segment import check_request

    check_request(tissues=tissues, mpp=mpp, overlap=overlap, batch=batch, readers=readers, engine=engine, blend=blend,
                  read_with=read_with, write_processes=write_processes, write_slides=write_slides)
    options = dict(engine=engine, out=out, tissues=tissues, mpp=mpp, overlap=overlap, blend=blend, exclusive=exclusive,
                   batch=batch, readers=readers, read_with=read_with, write_processes=write_processes,
                   write_slides=write_slides, resume=resume, force=force, wait=wait)
    if ray is not None:
        options.update(address=ray, worker_cpus=worker_cpus)
    elif worker_cpus is not None:
        raise UsageError("--worker-cpus goes with --ray")
    results = _run(slides, quiet=json_out, **options)
    if json_out:
        from dataclasses import asdict

        print_json([asdict(r) for r in results])
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_SOME_FAILED)


def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("omniseg-demo"),
    force: Annotated[bool, typer.Option(help="Redo it even if it is complete.")] = False,
    patches: Annotated[Optional[Path], typer.Option(
        help="Labelled kidney patches (Omni-Seg layout): also score the model on them and draw each tissue's "
             "predicted outlines beside the reference ones (OUT/kidney_patches.png).")] = None,
) -> None:
    """Segment the bundled sample slide with the bundled model: see what segment writes."""
    from omniseg_rt.data import SAMPLE_SLIDE

    if patches is not None and not patches.is_dir():
        raise UsageError(f"--patches {patches}: not a folder of labelled patches")
    results = _run([SAMPLE_SLIDE], out=out, tissues="all", force=force)
    if results and results[0].status != "failed":
        console.print(f"open {Path(results[0].out) / 'overlay.png'} for a picture (the sample slide is skin, not "
                      f"kidney); import {Path(results[0].out) / 'objects.geojson'} into QuPath (File > Import "
                      f"objects) over the slide {SAMPLE_SLIDE}")
    if patches is not None:
        _score_patches(patches, out / "kidney_patches.png")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_SOME_FAILED)


def _score_patches(patches: Path, sheet: Path) -> None:
    """The bundled model's Dice per tissue on ``patches`` and a picture of its outlines (no PyTorch:
    the bundled graph in ONNX Runtime)."""
    from omniseg_rt.data import demo_graph
    from omniseg_rt.evaluate import evaluate, predictor

    result = evaluate(patches, predictor(demo_graph())[0], sheet=sheet)
    rows = [(r["abbrev"], r["patches"], f"{r['dice']:.3f}") for r in result["tissues"]]
    console.print(rows_table(f"the bundled model on {patches}", ("tissue", "patches", "Dice"), rows))
    console.print(f"open {sheet}: per tissue, reference outlines (white) beside predicted ones")


def _run(slides, quiet: bool = False, **options):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if "address" in options:
        from omniseg_rt.distributed import segment_on_ray as run
    else:
        from omniseg_rt.runtime import segment as run

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    bars = not quiet and err_console.is_terminal  # no bars in --json runs, pipes and log files
    with Progress(*columns, console=err_console, disable=not bars, transient=True) as progress:
        overall = progress.add_task("slides", total=None, info="")
        current: dict[str, dict] = {}  # slide -> its bar (the next slide computes while one is written)

        def show(event: dict) -> None:
            import time

            kind = event["event"]
            if kind == "build":
                progress.update(overall, info=event["message"])
            elif kind == "slide":
                progress.update(overall, total=event["slides"], completed=event["index"], info="")
            elif kind == "slide_start":
                current[event["slide"]] = {"task": progress.add_task(event["slide"], total=event["windows"], info=""),
                                           "start": time.perf_counter(), "base": None}
            elif kind == "windows" and event["slide"] in current:
                bar = current[event["slide"]]
                if bar["base"] is None:  # windows done before a resume do not count for the rate
                    bar["base"] = event["done"] - 1
                rate = (event["done"] - bar["base"]) / max(1e-9, time.perf_counter() - bar["start"])
                progress.update(bar["task"], completed=event["done"], info=f"{rate:.2f} windows/s")
                if event["done"] == event["total"]:
                    progress.update(bar["task"], info="writing outputs")
            elif kind == "slide_done":
                progress.advance(overall)
                bar = current.pop(event["slide"], None)
                if bar is not None:
                    progress.remove_task(bar["task"])
                reason = f": {event['reason']}" if event.get("reason") else ""
                style = "red" if event["status"] == "failed" else None
                progress.console.print(f"{event['slide']}: {event['status']}{reason}", style=style, markup=False,
                                       highlight=False, soft_wrap=True)  # one line per slide, for grep
                if "cluster_windows_per_s" in event:
                    progress.update(overall, info=f"{event['cluster_windows_per_s']:.2f} windows/s across the cluster")

        try:
            results = run(slides, on_progress=show, **options)
        except KeyboardInterrupt:
            progress.stop()
            out = options.get("out")
            sys.stderr.write(f"omniseg-rt: interrupted. Slides finished so far are in {out}; run the same command "
                             "again to resume: it skips them and continues the interrupted slide where it stopped.\n")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if not quiet:
        rows = [(r.slide, r.status, r.out or "-", f"{r.seconds.get('total', 0):.1f}" if r.seconds else "-",
                 sum(r.windows.values()) if r.windows else "-") for r in results]
        console.print(rows_table("segment", ("slide", "status", "output", "seconds", "windows"), rows))
    return results


def register(app: typer.Typer) -> None:
    app.command("segment")(domain_errors(segment))
    app.command("demo")(domain_errors(demo))
