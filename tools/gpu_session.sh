#!/usr/bin/env bash
# One call on a lent GPU machine (PyTorch there, no TensorRT, no network), from the repo root:
#   1. trains the demo model on the GPU until validation Dice stops improving (patience 40);
#   2. brings back the release checkpoint (float16) + history for tools/bundle_demo_model.py;
#   3. times and checks the torch backend on CUDA (benchmarks/gpu_torch.py);
#   4. segments the bundled sample slide end to end with the bundled model's torch fp16 engine on
#      CUDA, blended vs centre crops, against the engine alone (benchmarks/bench_segment.py).
# Needs, carried beside the tree: .whl/ (kornia, kornia_rs, openslide-python, openslide-bin and
# shapely wheels for cp312) and .gpu/shared/data/kidney_patches (a copy of ../shared/data/kidney_patches).
#   tools/gpu_session.sh OUT_DIR
set -uo pipefail
out=${1:?usage: tools/gpu_session.sh OUT_DIR}
. tools/gpu_env.sh kornia openslide

begin=$(date +%s)
timeout "${TRAIN_SECONDS:-420}" python3 -m omniseg_rt train .gpu/shared/data/kidney_patches --out runs/demo-gpu \
    --epochs 300 --patience 40 --optimizer adam --lr 1e-3 --seed 0 --device cuda --amp --workers 4 \
    >"$out/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - begin )) s"
grep -E "^epoch [0-9]+:|stopping|done|Error|error" "$out/train.log" | tail -8

python3 - "$out" <<'PY' || exit 1
import json, sys
from pathlib import Path
import torch
from omniseg_rt.train.checkpoints import save_for_release
out = Path(sys.argv[1])
save_for_release(Path("runs/demo-gpu/best.pth"), out / "best.pth")
last = torch.load("runs/demo-gpu/last.pth", map_location="cpu", weights_only=True)
(out / "history.json").write_text(json.dumps({"history": last["history"], "train_seconds": last["train_seconds"]}))
print("release checkpoint and history written")
PY

timeout "${BENCH_SECONDS:-240}" python3 benchmarks/gpu_torch.py --checkpoint "$out/best.pth" 2>&1 | tee "$out/gpu_torch.log"
cp benchmarks/results/gpu_torch.json "$out/" 2>/dev/null

python3 -m omniseg_rt build omniseg_rt/data/demo_model.pth --backend torch --precision fp16 --device cuda \
    --out "$out/engine-torch-fp16" >"$out/build.log" 2>&1 || tail -5 "$out/build.log"
timeout "${SEGMENT_SECONDS:-240}" python3 benchmarks/bench_segment.py --engine "$out/engine-torch-fp16" --skip-rss \
    --blends gaussian none 2>&1 | tee "$out/segment.log"
cp benchmarks/results/segment_CMU-1-Small-Region.json "$out/" 2>/dev/null
exit 0
