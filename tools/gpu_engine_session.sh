#!/usr/bin/env bash
# One call on a lent GPU machine (PyTorch + CUDA there, no TensorRT, no network), from the repo root,
# for the compiled GPU engine (issue 14) and the pipeline that feeds it (issue 15). Stages, in the
# order they run (STAGES="engines pipeline reading" by default; each has its own timeout):
#   engines   eager vs compiled fp16 torch engines alone: cold build / warm open, Dice vs ONNX Runtime
#             fp32, windows/s at batch 32 64 8 1 with the host copy of the output apart
#             (benchmarks/bench_torch_engine.py; MAX_AUTOTUNE=1 adds max-autotune at batch 32:
#             about 5 minutes of tuning on an H200, raise ENGINES_SECONDS and drop other stages);
#   pipeline  a lab's batch: three 20480^2 px slides written from real tissue, segmented with the
#             compiled and the eager engine (both built first, batch 32), reading on threads and on
#             processes, against each engine alone, with the GPU's busy share (bench_pipeline.py);
#   reading   what the host can feed: windows/s read with 8 and 16 threads and processes, no engine,
#             on a 20480^2 px kidney slide (bench_reading.py);
#   writing   that slide segmented with the compiled engine, then its polygons traced and its GeoJSON
#             written on one core (bench_writing.py): the host's writing cost per slide;
#   real      the real JPEG 2000 slide (TCGA sample, 0.5 um/px) end to end with the compiled engine
#             (bench_segment.py);
#   cpu       the same slide with a CPU engine (ONNX Runtime fp32, 16 threads): issue 15's "CPU ratio
#             >= 0.9" on a CPU with cores to spare for reading and writing (the 2-core sessions cannot).
# The default stages' timeouts add up to under 10 minutes (one device call). Everything is printed
# as it goes (tee it to a file under OUT: a stage cut short still reports its finished rows); OUT
# gets the result JSONs, the compiled engine's manifest and nvidia-smi dmon's log (at most seven
# files: a device call brings back eight).
# Needs, carried beside the tree: .whl/ (openslide-python, openslide-bin, shapely, imagecodecs
# (JPEG, zlib) and, for the cpu stage's build, onnx + protobuf + ml_dtypes wheels for cp312) and .gpu/shared/data (kidney_patches and slides/tcga-*.svs copied
# from ../shared/data).
#   [STAGES="..."] tools/gpu_engine_session.sh OUT_DIR 2>&1 | tee OUT_DIR/session.log
set -uo pipefail
out=${1:?usage: tools/gpu_engine_session.sh OUT_DIR}
stages=" ${STAGES:-engines pipeline reading} "
. tools/gpu_env.sh openslide shapely imagecodecs
nvidia-smi dmon -s u -o T -d 1 >"$out/dmon.log" 2>&1 &
stage() { echo "== $(date +%T) $*"; }
wanted() { [[ "$stages" == *" $1 "* ]]; }

if wanted engines; then
    stage engines alone
    modes="default"; [ "${MAX_AUTOTUNE:-0}" = 1 ] && modes="default max-autotune"
    timeout "${ENGINES_SECONDS:-190}" python3 benchmarks/bench_torch_engine.py --device cuda --modes $modes \
        --threads 16 2>&1
    cp benchmarks/results/torch_engine_cuda.json "$out/" 2>/dev/null
fi

if wanted pipeline || wanted writing || wanted real; then
    stage builds
    timeout 40 python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend torch --precision fp16 \
        --device cuda --tissues all --out /tmp/engine-eager 2>&1
    timeout 70 python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend torch --precision fp16 \
        --device cuda --tissues all --compile default --out /tmp/engine-compiled 2>&1
    cp /tmp/engine-compiled/manifest.json "$out/engine-compiled-manifest.json" 2>/dev/null
fi

if wanted pipeline; then
    stage pipeline
    timeout "${PIPELINE_SECONDS:-170}" python3 benchmarks/bench_pipeline.py --readers 8 --read-with threads processes \
        --engine /tmp/engine-compiled --engine /tmp/engine-eager 2>&1
    cp benchmarks/results/pipeline_cuda.json "$out/" 2>/dev/null
fi

if wanted reading || wanted writing; then
    stage kidney slide
    (cd benchmarks && python3 -c "from pathlib import Path; from bench_pipeline import kidney_slide, _patches; \
kidney_slide(Path('/tmp/kidney.svs'), 20480, 0, _patches())") 2>&1
fi

if wanted reading; then
    stage reading
    timeout "${READING_SECONDS:-60}" python3 benchmarks/bench_reading.py --slide /tmp/kidney.svs --counts 8 16 \
        --windows 800 2>&1
    cp benchmarks/results/reading_kidney.json "$out/" 2>/dev/null
fi

if wanted writing; then
    stage writing
    timeout "${WRITING_SECONDS:-120}" python3 benchmarks/bench_writing.py --slide /tmp/kidney.svs \
        --engine /tmp/engine-compiled --repeats 1 2>&1
    cp benchmarks/results/writing_kidney.json "$out/" 2>/dev/null
fi

if wanted real; then
    stage real slide
    timeout "${SEGMENT_SECONDS:-60}" python3 benchmarks/bench_segment.py --engine /tmp/engine-compiled --skip-rss \
        --slide .gpu/shared/data/slides/tcga-cr-7395-01a-01-ts1.svs --mpp 0.5 --readers 8 --read-with threads processes \
        2>&1
    cp benchmarks/results/segment_tcga-cr-7395-01a-01-ts1.json "$out/" 2>/dev/null
fi
if wanted cpu; then
    stage cpu engine
    timeout 90 python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend onnxruntime --precision fp32 \
        --device cpu --tissues all --out /tmp/engine-ort 2>&1
    slide=${CPU_SLIDE:-.gpu/shared/data/slides/tcga-cr-7395-01a-01-ts1.svs}
    timeout "${CPU_SECONDS:-200}" python3 benchmarks/bench_segment.py --engine /tmp/engine-ort --skip-rss \
        --slide "$slide" --mpp 0.5 --readers 4 2>&1
    # its own name in OUT: the real stage's JSON of the same slide (compiled GPU engine) is already there
    name=$(basename "$slide"); cp "benchmarks/results/segment_${name%.*}.json" "$out/cpu_segment_${name%.*}.json" 2>/dev/null
fi
stage end
exit 0
