#!/usr/bin/env bash
# One call on a lent GPU machine (PyTorch + CUDA there, no TensorRT, no network), from the repo root,
# for the demo model (issues 17 and 18): the training schedule from scratch on the GPU with the
# consistency term and averaged weights all along, then its held-out and training Dice beside the
# bundled model's.
#   1. a 2-epoch probe times an epoch of the recipe on this GPU; the run then gets as many epochs
#      as fit TRAIN_SECONDS (default 380), at most MAX_EPOCHS (default 600);
#   2. trains: the default recipe (LR=... to change its learning rate) + --consistency ${CONSISTENCY:-8}
#      --ema 0.995, DT and VES patches twice and PTC's three times per epoch, AMP, 4 loader workers
#      (INIT=CKPT: from those weights instead of from scratch; CONTEXT=W adds --context W, each patch
#      learnt again inside other tissue: steadier slide masks, about 4x the compute per step);
#   3. evaluates the new best and last weights and the bundled model on the held-out and training
#      patches (CPU, the same code as `omniseg-rt evaluate --split val|train`): eval.json;
#   4. brings back best.pth and last.pth as release checkpoints (float16) and history.json:
#      `tools/bundle_demo_model.py OUT_DIR --checkpoint best|last --command "..."` bundles one, and
#      `omniseg-rt build OUT_DIR/last.pth --out ENGINE` + `bench_overlap.py --engine ENGINE --cases
#      kidney` measure its agreement with the dense reference here (issue 18).
# Fits one device call (600 s) with the defaults. Needs, carried beside the tree (64 MiB in all, so
# only these): .whl-train/ (kornia and kornia_rs wheels for cp312), .whl/'s openslide-python,
# openslide-bin and shapely wheels, and .gpu/shared/data/kidney_patches (a copy of
# ../shared/data/kidney_patches). Run as (carry naming those paths):
#   mkdir -p $OUT && bash tools/gpu_train_session.sh $OUT 2>&1 | tee $OUT/session.log
set -uo pipefail
out=${1:?usage: tools/gpu_train_session.sh OUT_DIR}
device=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the script here (with small TRAIN_SECONDS)
if [ "$device" = cuda ]; then . tools/gpu_env.sh kornia openslide shapely; fi
data=${DATA:-.gpu/shared/data/kidney_patches}
stage() { echo "== $(date +%T) $*"; }
recipe=(${LR:+--lr "$LR"} --consistency "${CONSISTENCY:-8}" ${CONTEXT:+--context "$CONTEXT"} --ema 0.995 --repeat DT=2 --repeat VES=2 --repeat PTC=3
        --seed 0 --device "$device" --amp --workers 4 ${INIT:+--init "$INIT"})

rm -rf /tmp/probe /tmp/run  # a warm machine keeps /tmp between calls
stage probe
python3 -m omniseg_rt train "$data" --out /tmp/probe --epochs 2 "${recipe[@]}" >/tmp/probe.log 2>&1 \
    || { tail -20 /tmp/probe.log; exit 1; }
epochs=$(python3 - <<PY
import torch
state = torch.load("/tmp/probe/last.pth", map_location="cpu", weights_only=True)
per_epoch = state["train_seconds"] / state["epoch"]
print(f"{per_epoch:.1f}", max(2, min(${MAX_EPOCHS:-600}, int((${TRAIN_SECONDS:-380} - 20) / per_epoch))))
PY
)
echo "probe: ${epochs% *} s per epoch; training ${epochs#* } epochs"
epochs=${epochs#* }

stage train
begin=$(date +%s)
timeout $(( ${TRAIN_SECONDS:-380} + 45 )) python3 -m omniseg_rt train "$data" --out /tmp/run --epochs "$epochs" \
    "${recipe[@]}" >"$out/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - begin )) s"
grep -E "^epoch [0-9]+:|^VES|done|Error|error" "$out/train.log" | tail -6

stage release
python3 - "$out" <<'PY' || exit 1
import json, sys
from pathlib import Path
import torch
from omniseg_rt.train.checkpoints import save_for_release
out = Path(sys.argv[1])
for name in ("best", "last"):
    save_for_release(Path(f"/tmp/run/{name}.pth"), out / f"{name}.pth")
last = torch.load("/tmp/run/last.pth", map_location="cpu", weights_only=True)
(out / "history.json").write_text(json.dumps({"history": last["history"], "train_seconds": last["train_seconds"]}))
print(f"release checkpoints and history of {last['epoch']} epochs written")
PY

stage evaluate
timeout 90 python3 - "$out" "$data" <<'PY'
import json, sys
from pathlib import Path
from omniseg_rt.data import DEMO_MODEL
from omniseg_rt.evaluate import evaluate, predictor
out, data = Path(sys.argv[1]), sys.argv[2]
scores = {}
for name, model in (("best", out / "best.pth"), ("last", out / "last.pth"), ("bundled", DEMO_MODEL)):
    predict = predictor(model)[0]
    for split in ("val", "train"):
        dice = {t["abbrev"]: round(t["dice"], 4) for t in evaluate(data, predict, split=split)["tissues"]}
        scores[f"{name} {split}"] = {**dice, "mean": round(sum(dice.values()) / len(dice), 4)}
        print(f"{name:8s}{split:6s}", " ".join(f"{k} {v:.3f}" for k, v in scores[f"{name} {split}"].items()))
(out / "eval.json").write_text(json.dumps(scores, indent=2))
PY

stage end
exit 0
