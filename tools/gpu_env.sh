# Sourced by the one-call GPU scripts (tools/gpu_train_session.sh, tools/gpu_engine_session.sh), from
# the repo root: installs the carried cp312 wheels (.whl/, and .whl-train/ where carried) into
# /tmp/site, points Python at them, this tree and the carried data (.gpu/shared), names the GPU and
# checks that the modules given as arguments import beside torch:   . tools/gpu_env.sh openslide kornia
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl .whl-train/*.whl 2>/dev/null) || exit 1
export PYTHONPATH=/tmp/site:$PWD OMNISEG_SHARED=$PWD/.gpu/shared PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, $(IFS=,; echo "$*"); print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
