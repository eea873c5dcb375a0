#!/usr/bin/env bash
# One command for a lent GPU machine (an H200 for 15 minutes, no network):
# install the carried wheels, build the CUDA qsimcirq wheel unless one was
# carried, run the GPU tests and the GPU benchmark, and leave logs in $OUT.
#
# Here, once:        make gpu-wheels        (fills the git-ignored .whl/, ~57 MiB)
# On the machine:    bash scripts/gpu_check.sh        (carry .whl; about 6-8 minutes)
#
# $OUT/qsimcirq-*.whl comes back when the wheel was built there: put it in
# .whl/ and the next run skips the build (about 2 minutes).
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
# UCX settings GPU.md gives for dask-cuda tests on this machine.
export UCX_WARN_UNUSED_ENV_VARS=n UCX_MEMTYPE_CACHE=n DASK_CUDA_WAIT_WORKERS_MIN_TIMEOUT=20

step() { echo; echo "== $* ($(date +%T))"; }
status=0

{
    step "machine"
    nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv
    python3 --version; nvcc --version | tail -1; cmake --version | head -1

    step "install the carried wheels into $SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH=$SITE
    # qdask from this checkout, with its metadata: the backend registry reads entry points.
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
        --target "$SITE" . || exit 1

    if python3 -c "import qsimcirq, sys; sys.exit(qsimcirq.qsim_gpu is None)" 2>/dev/null; then
        step "qsimcirq with CUDA: carried"
    else
        step "qsimcirq with CUDA: building it (python3 $(python3 -c 'import sys; print(sys.version.split()[0])'))"
        # The build script prints the wheel's path last.
        if wheel=$(PYTHON=python3 SRC=.whl/sdist DEST="$OUT" bash scripts/build_qsim_gpu.sh 2>"$OUT/qsim-build.log" | tail -1); then
            python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$wheel"
            echo "built $wheel"
        else
            echo "qsim GPU build failed: tail of $OUT/qsim-build.log"; tail -20 "$OUT/qsim-build.log"
            status=1
        fi
    fi
    python3 -c "import qsimcirq, qdask; print('qsimcirq', qsimcirq.__version__, 'cuda', qsimcirq.qsim_gpu is not None, '| backends', qdask.backends())"

    step "tests: tests/test_gpu.py (CPU mapping with the real dask-cuda, and -m gpu)"
    # -W default: warnings from the CUDA stack are reported, not turned into errors.
    python3 -m pytest tests/test_gpu.py -v -ra -s -W default -p no:cacheprovider \
        --junitxml="$OUT/pytest-gpu.xml" || status=1

    step "benchmark: benchmarks/gpu.py"
    python3 benchmarks/gpu.py --json "$OUT/gpu-bench.json" || status=1

    step "done: status $status"
    exit "$status"
} 2>&1 | tee "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
