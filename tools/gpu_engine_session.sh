#!/usr/bin/env bash
# One call on a lent GPU machine (PyTorch + CUDA there, no TensorRT, no network), from the repo root,
# for the compiled GPU engine (issue 14) and the pipeline that feeds it (issue 15):
#   1. eager vs compiled fp16 torch engines alone: cold build / warm open, Dice vs ONNX Runtime fp32,
#      windows/s at batch 1 8 32 64 with the host copy of the output apart (benchmarks/bench_torch_engine.py);
#   2. builds eager and compiled fp16 engines (one all-tissue graph, batch 32) and segments the
#      bundled sample slide end to end with the compiled one, reading on
#      threads and on processes, against the same engine alone (benchmarks/bench_segment.py);
#   3. a lab's batch: three 20480^2 px slides written from real tissue, segmented with the eager and
#      the compiled engine, reading on threads and on processes, against each engine alone
#      (benchmarks/bench_pipeline.py).
# MAX_AUTOTUNE=1 adds max-autotune at batch 32 (about 5 minutes of tuning on an H200: raise
# BENCH_SECONDS and lower the others). The timeouts add up to under 10 minutes (one device call).
# Needs, carried beside the tree: .whl/ (openslide-python, openslide-bin, shapely wheels for cp312)
# and .gpu/shared/data/kidney_patches (a copy of ../shared/data/kidney_patches).
#   tools/gpu_engine_session.sh OUT_DIR
set -uo pipefail
out=${1:?usage: tools/gpu_engine_session.sh OUT_DIR}
. tools/gpu_env.sh openslide

modes="default"; [ "${MAX_AUTOTUNE:-0}" = 1 ] && modes="default max-autotune"
timeout "${BENCH_SECONDS:-180}" python3 benchmarks/bench_torch_engine.py --device cuda --modes $modes \
    --threads 16 2>&1 | tee "$out/torch_engine.log"
cp benchmarks/results/torch_engine_cuda.json "$out/" 2>/dev/null

timeout 60 python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend torch --precision fp16 --device cuda --tissues all \
    --out /tmp/engine-eager >"$out/build-eager.log" 2>&1 || tail -5 "$out/build-eager.log"
timeout 60 python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend torch --precision fp16 --device cuda --tissues all \
    --compile default --out /tmp/engine-compiled >"$out/build.log" 2>&1 || tail -5 "$out/build.log"
cp /tmp/engine-compiled/manifest.json "$out/engine-compiled-manifest.json" 2>/dev/null
timeout "${SEGMENT_SECONDS:-90}" python3 benchmarks/bench_segment.py --engine /tmp/engine-compiled --skip-rss \
    --readers 8 --read-with threads processes 2>&1 | tee "$out/segment.log"
cp benchmarks/results/segment_CMU-1-Small-Region.json "$out/" 2>/dev/null

timeout "${PIPELINE_SECONDS:-180}" python3 benchmarks/bench_pipeline.py --readers 8 --read-with threads processes \
    --engine /tmp/engine-eager --engine /tmp/engine-compiled \
    2>&1 | tee "$out/pipeline.log"
cp benchmarks/results/pipeline_cuda.json "$out/" 2>/dev/null
exit 0
