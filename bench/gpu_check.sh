#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU:   bash bench/gpu_check.sh
#
# 1. pycuda (source-only on PyPI: it builds only where a CUDA driver is) and its dependencies are
#    installed from wheels beside the repository (../shared/wheels, or $BITTTT_WHEELS) into a
#    private folder ($BITTTT_SITE, default /tmp/bitttt-gpu-site): nothing is downloaded;
#    nvidia-ml-py too when its wheel is there (the monitor's GPU figures; optional).
# 2. The extension is built in place when the checkout has none for this Python.
# 3. The GPU tests: every kernel against the cpu backend on the real GPU, a 20-step training run
#    against the CPU run's losses (1e-3 relative), trained on the GPU and run on the CPU, resumed
#    on the GPU from a CPU checkpoint (tests/test_cuda_gpu.py), plus the CPU-side cuda tests.
# 4. bench/bench_gpu.py --quick: GEMV vs copy bandwidth, decode vs a float16 cuBLAS chain, training
#    vs PyTorch (ratios measured in the same run, appended to bench/RESULTS.md).
# Each step has a time limit; the whole script stays under 8 minutes.  One summary at the end;
# the exit status is 0 only when every step passed.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WHEELS=${BITTTT_WHEELS:-$ROOT/../shared/wheels}
SITE=${BITTTT_SITE:-/tmp/bitttt-gpu-site}
PY=${PYTHON:-python3}
LOG=$(mktemp -d)/gpu_check
T0=$(date +%s)
status=()
step() { status+=("$1: $2"); }

cd "$ROOT" || exit 2
echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG.smi"

echo "== 1. pycuda from $WHEELS"
if $PY -c "import pycuda.driver" 2>/dev/null; then
    step install "pycuda already importable"
elif ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl > "$LOG.pip" 2>&1 \
        && step install "ok ($(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE)" \
        || { step install "FAILED (see $LOG.pip)"; cat "$LOG.pip"; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    step install "FAILED: no wheels in $WHEELS"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

echo "== 2. the extension"
if ! $PY -c "import bitttt" 2>/dev/null; then
    timeout 120 $PY setup.py build_ext --inplace -q > "$LOG.build" 2>&1 \
        && step build "built in place" || { step build "FAILED (see $LOG.build)"; tail -20 "$LOG.build"; }
else
    step build "present"
fi
$PY -c "from bitttt.backend import cuda; ok, why = cuda.available(); print('cuda backend:', why); raise SystemExit(0 if ok else 1)" \
    && step open "ok" || step open "FAILED: the GPU did not open"

echo "== 3. GPU tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py tests/test_cuda_backend.py tests/test_cuda_ptx.py \
    2>&1 | tee "$LOG.tests"
rc=${PIPESTATUS[0]}
step tests "$( [ "$rc" = 0 ] && echo ok || echo "FAILED (rc $rc)" ): $(tail -1 "$LOG.tests")"

echo "== 4. bench/bench_gpu.py --quick"
timeout 120 $PY bench/bench_gpu.py --quick 2>&1 | tee "$LOG.bench"
rc=${PIPESTATUS[0]}
step bench "$( [ "$rc" = 0 ] && echo ok || echo "FAILED (rc $rc)" ): $(grep '^summary:' "$LOG.bench" | cut -c10-)"

echo
echo "== summary ($(( $(date +%s) - T0 )) s, $(head -1 "$LOG.smi"))"
fail=0
for s in "${status[@]}"; do
    echo "  $s"
    case "$s" in *FAILED*) fail=1 ;; esac
done
exit $fail
