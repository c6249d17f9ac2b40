#!/usr/bin/env bash
# The GPU check, one prepared command for a device machine (README, "GPU check"). After
# `bash experiments/gpu/wheels.sh` here:  run(command="bash experiments/gpu/check.sh", carry=[".whl"])
# Installs the carried wheels, then: the CUDA tests (and the meta/tangent suites, on that torch), the
# meta-step benchmark (float32; sizes and batches; bf16 autocast, also with channels_last), the
# meta step on an smp network, the MC-dropout benchmark, the meta training job and a short CEAL + meta loop on the GPU. Everything
# lands in $OUT: check.log and 7 more files, the most a device run returns.
# A dry run on CPU: OUT=/tmp/gpu_out DEVICE=cpu QUICK=1 bash experiments/gpu/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TQDM_DISABLE=1  # no progress bars in the log

checks() {
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  size=(); train=()
  if [ -n "${QUICK:-}" ]; then  # tiny shapes and a short job: checks the plumbing, not the numbers
    size=(--size 32 --depth 2 --base-width 4 --warmup 1 --no-memory); train=(debug=fast)
  fi
  failed=(); n=0
  step() {  # run one step, log its time, remember failures and go on
    n=$((n + 1)); echo; echo "== [$n] $* ($(date +%T))"
    "$@" || failed+=("[$n] ${*:3:2}")
  }
  python3 -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.is_available() and torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  step python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_meta.py tests/test_tangents.py
  step python3 -m noisyseg.bench meta --device "$DEVICE" --repeats 30 "${size[@]}" --json "$OUT/meta_gpu.json"
  step python3 -m noisyseg.bench meta --device "$DEVICE" --backends jvp,jvp_ad,higher --scaling "${size[@]}" \
    --scaling-repeats 10 --json "$OUT/meta_scaling_gpu.json" --plot "$OUT/meta_scaling_gpu.png"
  step python3 -m noisyseg.bench meta --device "$DEVICE" --backends jvp,jvp_ad,higher,jvp@2 --amp --repeats 30 "${size[@]}" \
    --json "$OUT/meta_gpu_amp.json"
  step python3 -m noisyseg.bench meta --device "$DEVICE" --backends jvp,jvp_ad --amp --channels-last --repeats 30 "${size[@]}" \
    --json "$OUT/meta_gpu_amp_cl.json"  # the README's one-GPU setting
  # smp U-Net/ResNet-34 (docs/performance.md); its table goes to check.log ($OUT holds 8 files at most)
  step python3 -m noisyseg.bench meta --device "$DEVICE" --model smp --arch Unet --encoder resnet34 --backends jvp,higher \
    ${QUICK:+--sizes 64 --batch 2 --repeats 1 --warmup 1 --no-memory} ${QUICK:---sizes 128,256 --repeats 10}
  step python3 -m noisyseg.bench mc --device "$DEVICE" ${QUICK:+--size 32 --depth 2 --base-width 4 --repeats 1} \
    --json "$OUT/mc_gpu.json"
  step python3 -m noisyseg.train method=meta device="$DEVICE" "${train[@]}" hydra.run.dir=/tmp/gpu_train_meta
  cp /tmp/gpu_train_meta/results.json "$OUT/train_meta_gpu.json" 2>/dev/null
  step python3 -m noisyseg.active method=meta device="$DEVICE" debug=fast hydra.run.dir=/tmp/gpu_active  # a smoke test
  echo; echo "== done ($(date +%T)); failed: ${failed[*]:-none}"
  [ ${#failed[@]} -eq 0 ]
}

checks 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
