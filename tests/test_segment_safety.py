"""``segment`` never loses or falsifies results: one writer per output folder, "complete" means
complete for this request, a full disk fails one slide with a clear error, every bad input
ends in one line with the documented exit code. Real slides, real engine, real processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import REPO, SLIDES, run_cli
from omniseg_rt.outputs import read_mask_tiff
from omniseg_rt.runtime import segment

CMU = SLIDES / "CMU-1-Small-Region.svs"
DICOM = SLIDES / "dicom-camelyon"
NAME = "CMU-1-Small-Region"
# Ctrl-C raises KeyboardInterrupt in the run even when this test runs as a background job (whose
# children inherit SIGINT ignored, and Python then installs no handler)
CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "from omniseg_rt.cli import main; sys.argv = ['omniseg-rt', *sys.argv[1:]]; main()")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _rows(path: Path, drop=("seconds",)) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def _same_outputs(slide_dir: Path, reference: Path) -> None:
    """The same masks (pixels: a TIFF holds its write time) and byte-identical other outputs."""
    mask = "mask_10x.ome.tif"
    assert np.array_equal(read_mask_tiff(slide_dir / mask)[0], read_mask_tiff(reference / mask)[0])
    for name in ("objects.geojson", "summary.json", "overlay.png", "tissue_mask.png"):
        assert (slide_dir / name).read_bytes() == (reference / name).read_bytes(), name


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_runs_into_one_folder_one_gets_the_lock_error_the_other_waits(demo_engine, cmu_10x, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(CMU), "--engine", str(demo_engine), "--out", str(out), "--tissues", "10x"]
    first = _start(*args)
    _wait_for(lambda: (out / ".omniseg-rt.lock.json").exists(), first)
    holder = json.loads((out / ".omniseg-rt.lock.json").read_text())
    assert holder["pid"] == first.pid
    waiting = _start(*args, "--wait")
    refused = run_cli(*args)
    assert refused.returncode == 1, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert str(out) in line and f"PID {first.pid}" in line and "--wait" in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    _, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stderr
    assert "waiting for the other omniseg-rt run" in stderr and f"{NAME}: skipped" in stderr

    reference = cmu_10x.parent
    assert _rows(out / "summary.csv") == _rows(reference / "summary.csv")
    _same_outputs(out / NAME, reference / NAME)
    assert not (out / ".omniseg-rt.lock.json").exists()
    assert not [p for p in out.rglob("*.tmp")]


def test_interrupted_run_says_how_to_resume_and_the_rerun_takes_the_lock_over(demo_engine, cmu_10x, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(CMU), "--engine", str(demo_engine), "--out", str(out), "--tissues", "10x"]
    run = _start(*args)
    journal = out / NAME / ".work" / "journal.jsonl"
    _wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 1, run)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert not (out / ".omniseg-rt.lock.json").exists()  # released on the way out

    # a run killed outright leaves its note: the next run takes the lock over, with a warning
    (out / ".omniseg-rt.lock.json").write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "taking over the lock left by PID 999999999 on gone" in " ".join(resumed.stderr.split())
    manifest = json.loads((out / NAME / "manifest.json").read_text())
    assert manifest["resumed"] is True
    _same_outputs(out / NAME, cmu_10x)


def test_complete_means_complete_for_this_request(demo_engine, cmu_10x, tmp_path):
    shutil.copytree(cmu_10x.parent, tmp_path, dirs_exist_ok=True)
    slide_dir = tmp_path / NAME
    events = []

    # tissues added: CAP is computed (the 5x group), the 10x group is taken from its mask file
    [added] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="10x,CAP", on_progress=events.append)
    assert added.status == "done" and "adding CAP" in added.reason
    manifest = json.loads((slide_dir / "manifest.json").read_text())
    assert manifest["request"]["tissues"] == [0, 1, 2, 4]
    assert {g["group"]: g["reused"] for g in manifest["groups"]} == {"5x": False, "10x": True}
    computed = [e for e in events if e["event"] == "windows"]
    assert {e["group"] for e in computed} == {"5x"}
    ten_x = "mask_10x.ome.tif"
    assert np.array_equal(read_mask_tiff(slide_dir / ten_x)[0], read_mask_tiff(cmu_10x / ten_x)[0])
    cap, _, names = read_mask_tiff(slide_dir / "mask_5x.ome.tif")
    assert names == ["CAP"] and cap.any()

    # a subset of what is there: complete
    [again] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP,PT")
    assert again.status == "skipped"

    # other settings: refused, pointing to --force; the done row and the outputs stay
    [other] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", overlap=64)
    assert other.status == "failed" and "overlap 128 then, 64 now" in other.reason and "--force" in other.reason
    [other] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", blend="none")
    assert other.status == "failed" and 'blend "gaussian" then, "none" now' in other.reason
    [other] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", exclusive=True)
    assert other.status == "failed" and "--exclusive now" in other.reason
    [row] = _rows(tmp_path / "summary.csv")
    assert row["status"] == "done" and row["CAP_objects"] != ""
    assert json.loads((slide_dir / "manifest.json").read_text())["status"] == "complete"

    # --force with fewer tissues: exactly this request, no stale files
    [forced] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", overlap=64, force=True)
    assert forced.status == "done"
    assert sorted(p.name for p in slide_dir.iterdir()) == [
        "manifest.json", "mask_5x.ome.tif", "objects.geojson", "overlay.png", "summary.json", "tissue_mask.png"]
    features = json.loads((slide_dir / "objects.geojson").read_text())["features"]
    assert {f["properties"]["tissue"] for f in features} == {"CAP"}
    [row] = _rows(tmp_path / "summary.csv")
    assert row["DT_objects"] == "" and row["CAP_objects"] == str(len(features))

    # outputs with the exclusive label map serve requests without it; forcing without drops it
    [exclusive] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", overlap=64, exclusive=True, force=True)
    assert exclusive.status == "done" and (slide_dir / "labels.ome.tif").is_file()
    [plain] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", overlap=64)
    assert plain.status == "skipped"
    [forced] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="CAP", overlap=64, force=True)
    assert forced.status == "done"
    assert not (slide_dir / "labels.ome.tif").exists() and not (slide_dir / "objects_exclusive.geojson").exists()


def test_bad_input_ends_in_one_line_with_the_documented_exit_code(demo_engine, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "summary.csv").write_bytes(bytes(range(256)))
    broken = tmp_path / "broken-engine"
    shutil.copytree(demo_engine, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["backend"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    base = ["segment", str(CMU), "--engine", str(demo_engine), "--tissues", "CAP"]
    cases = {  # arguments -> (exit code, words the line must hold)
        ("--out", str(a_file)): (2, [str(a_file), "a file is in the way"]),
        ("--out", str(garbage)): (1, [str(garbage / "summary.csv"), "move it away"]),
        ("--batch", "0"): (2, ["--batch 0"]),
        ("--tissues", ""): (2, ["--tissues ''", "'all'"]),
        ("--mpp", "0"): (2, ["--mpp 0"]),
        ("--mpp", "-1"): (2, ["--mpp -1"]),
        ("--mpp", "1000"): (2, ["--mpp 1000", "um/px"]),
        ("--overlap", "7"): (2, ["--overlap 7", "even"]),
        ("--overlap", "300"): (2, ["--overlap 300", "half the window"]),
        ("--readers", "0"): (2, ["--readers 0"]),
    }
    runs = {}
    with ThreadPoolExecutor(4) as pool:
        for extra in cases:
            out = [] if "--out" in extra else ["--out", str(tmp_path / f"unused-{len(runs)}")]
            runs[extra] = pool.submit(run_cli, *base, *out, *extra)
        runs["engine"] = pool.submit(run_cli, "segment", str(CMU), "--engine", str(broken), "--out",
                                     str(tmp_path / "unused-engine"))
    cases["engine"] = (1, [str(broken / "manifest.json"), "'backend' is missing", "omniseg-rt build"])
    for extra, (code, words) in cases.items():
        result = runs[extra].result()
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code and len(lines) == 1, (extra, result.returncode, result.stderr)
        assert lines[0].startswith("omniseg-rt: error: ") and all(w in lines[0] for w in words), (extra, lines)
        assert result.stdout == "", extra
    assert not any(p.name.startswith("unused-") and p.name != "unused-engine" for p in tmp_path.iterdir())
    assert (garbage / "summary.csv").read_bytes() == bytes(range(256))  # left as it was


def test_json_is_one_document_and_warnings_reach_the_terminal(demo_engine, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    result = run_cli("segment", str(bad), str(DICOM), "--mpp", "4", "--tissues", "CAP", "--engine",
                     str(demo_engine), "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 3, result.stderr
    statuses = {r["slide"]: r["status"] for r in json.loads(result.stdout)}
    assert statuses == {"bad": "failed", "dicom-camelyon": "done"}
    stderr = " ".join(result.stderr.split())
    assert "windows are upsampled 2x" in stderr  # a warning of the plan, on the terminal
    assert stderr.count("bad: failed") == 1 and stderr.count("neither a slide") == 1  # a failure is said once


# -- a full disk ---------------------------------------------------------------------------------

DISK_SCRIPT = textwrap.dedent("""
    set -eu
    mount -t tmpfs -o size=40m tmpfs "$DISK"
    mount -t tmpfs -o size=1m,ro tmpfs "$READ_ONLY"
    cli() {{ {python} -c "{cli}" "$@"; }}
    # leave about 19 MB free: the small slide's 10x run needs about 16, the CMU slide's about 22
    head -c $((21 * 1000 * 1000)) /dev/zero > "$DISK/filler"
    set +e
    cli segment "{cmu}" --engine "{engine}" --out "$READ_ONLY/out" > "$HOST/ro.out" 2> "$HOST/ro.err"
    echo $? > "$HOST/ro.rc"
    run() {{ cli segment "{cmu}" "$CROP" --engine "{engine}" --out "$DISK/out" --tissues 10x; }}
    run > "$HOST/first.out" 2> "$HOST/first.err"
    echo $? > "$HOST/first.rc"
    {python} - "$DISK" > "$HOST/units.out" 2> "$HOST/units.err" <<'PY'
    import errno, json, os, sys
    from pathlib import Path
    from omniseg_rt.errors import OutputError
    from omniseg_rt.fileutil import atomic_write_text
    from omniseg_rt.runtime.store import WorkStore
    disk = Path(sys.argv[1])
    store = WorkStore(disk / "units", {{"key": 1}})
    with open(disk / "filler2", "wb") as fh:  # fill what is left
        try:
            while True:
                fh.write(b"0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    results = {{}}
    try:
        store.canvas("10x", (3, 4000, 4000))
    except OutputError as exc:
        results["canvas"] = [str(exc), exc.errno]
    try:
        atomic_write_text(disk / "units" / "summary.json", "x" * (4 << 20))
    except OutputError as exc:
        results["text"] = [str(exc), exc.errno]
    results["left"] = sorted(p.name for p in (disk / "units").rglob("*"))
    os.remove(disk / "filler2")
    print(json.dumps(results))
    PY
    rm "$DISK/filler"
    run > "$HOST/second.out" 2> "$HOST/second.err"
    echo $? > "$HOST/second.rc"
    cp -r "$DISK/out" "$HOST/out"
    umount "$DISK" "$READ_ONLY"
""")


def _mount_namespace() -> list[str] | None:
    """A command prefix that runs a shell in a private mount namespace where tmpfs can be mounted."""
    for prefix in (["unshare", "-m", "--propagation", "private"], ["unshare", "-rm", "--propagation", "private"]):
        try:
            probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def test_a_full_disk_or_read_only_out_fails_clearly_and_a_rerun_completes(demo_engine, cmu_10x, tmp_path):
    prefix = _mount_namespace()
    if prefix is None:
        pytest.skip("mounting a small tmpfs needs root or user namespaces (unshare -m / -rm), not allowed here")
    crop = tmp_path / "crop.tif"  # a small real slide: 640 x 640 px of the CMU slide, 0.499 um/px
    import openslide

    with openslide.OpenSlide(str(CMU)) as slide:
        rgb = np.asarray(slide.read_region((600, 800), 0, (640, 640)).convert("RGB"))
    tifffile.imwrite(crop, rgb, resolution=(1e4 / 0.499, 1e4 / 0.499), resolutionunit="CENTIMETER",
                     photometric="rgb")
    disk, host, read_only = tmp_path / "disk", tmp_path / "host", tmp_path / "read-only"
    for folder in (disk, host, read_only):
        folder.mkdir()
    script = DISK_SCRIPT.format(python=sys.executable, cli=CLI, cmu=CMU, engine=demo_engine)
    done = subprocess.run([*prefix, "bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DISK": str(disk), "HOST": str(host), "CROP": str(crop),
                               "READ_ONLY": str(read_only)})
    assert done.returncode == 0, done.stderr

    # --out on a read-only file system: a usage error, one line
    assert (host / "ro.rc").read_text().strip() == "2"
    [line] = (host / "ro.err").read_text().strip().splitlines()
    assert line.startswith(f"omniseg-rt: error: --out {read_only / 'out'}: cannot write there (Read-only file system)")

    # the first run: the CMU slide is refused before any work, the small one is done
    assert (host / "first.rc").read_text().strip() == "3", (host / "first.err").read_text()
    first = " ".join((host / "first.err").read_text().split())
    assert f"{NAME}: failed: {disk / 'out' / NAME}: this slide needs about" in first
    assert "free space on that disk" in first and "crop: done" in first
    # work files and writes that meet a full disk: an error naming the file, not SIGBUS
    units = json.loads((host / "units.out").read_text())
    assert units["canvas"][1] == 28 and str(disk / "units" / ".work" / "10x.u8") in units["canvas"][0]
    assert units["text"][1] == 28 and str(disk / "units" / "summary.json") in units["text"][0]
    assert "disk is full" in units["text"][0] and units["left"] == [".work", "key.json"]  # nothing half-written

    # after freeing space the rerun completes the slide, identical to a run that never met a full disk
    assert (host / "second.rc").read_text().strip() == "0", (host / "second.err").read_text()
    assert "crop: skipped" in (host / "second.err").read_text()
    _same_outputs(host / "out" / NAME, cmu_10x)
    assert {r["slide"]: r["status"] for r in _rows(host / "out" / "summary.csv")} == {NAME: "done", "crop": "done"}


def test_overlapped_slides_match_one_at_a_time_and_survive_kill_minus_9(demo_engine, cmu_10x, tmp_path):
    """A folder of three slides (and one that fails: too coarse for 10x): each slide's outputs
    are written while the next is computed, two slides at once. They equal the outputs of
    segmenting each slide alone; killed (-9) in the middle of the second slide and resumed: the
    same outputs again, the first slide skipped."""
    folder = tmp_path / "slides"
    folder.mkdir()
    names = [NAME, "cmu-copy", "cmu-third"]
    for name in names:
        shutil.copy(CMU, folder / f"{name}.svs")
    shutil.copytree(DICOM, folder / DICOM.name)
    alone = {NAME: cmu_10x}
    for name in names[1:]:
        [result] = segment(folder / f"{name}.svs", engine=demo_engine, out=tmp_path / "alone", tissues="10x")
        assert result.status == "done", result.reason
        alone[name] = tmp_path / "alone" / name

    results = segment(folder, engine=demo_engine, out=tmp_path / "together", tissues="10x", write_slides=2)
    assert [(r.slide, r.status) for r in results] == [*((n, "done") for n in names), (DICOM.name, "failed")]
    for name in names:
        _same_outputs(tmp_path / "together" / name, alone[name])

    out = tmp_path / "killed"
    args = ("segment", str(folder), "--engine", str(demo_engine), "--out", str(out), "--tissues", "10x",
            "--write-slides", "2")
    process = _start(*args)
    second = out / "cmu-copy" / ".work" / "journal.jsonl"
    _wait_for(lambda: (out / NAME / "manifest.json").exists() and second.exists()
              and second.read_text().count("\n") >= 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "cmu-copy" / "manifest.json").exists()
    resumed = run_cli(*args, "--json")
    assert resumed.returncode == 3, resumed.stderr  # the DICOM slide fails again
    statuses = {r["slide"]: r["status"] for r in json.loads(resumed.stdout)}
    assert statuses == {NAME: "skipped", "cmu-copy": "done", "cmu-third": "done", DICOM.name: "failed"}
    assert json.loads((out / "cmu-copy" / "manifest.json").read_text())["resumed"] is True
    for name in names:
        _same_outputs(out / name, alone[name])
    assert [row["slide"] for row in _rows(out / "summary.csv")] == [*names, DICOM.name]
