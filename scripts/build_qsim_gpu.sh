#!/usr/bin/env bash
# Build a CUDA-enabled qsimcirq wheel from the qsimcirq sdist, offline.
#
# PyPI's qsimcirq wheels are CPU-only and 0.22.1 ships no sdist, so the GPU
# build starts from the qsimcirq 0.22.0 sdist (docs/gpu.md). One recipe for
# `make qsim-gpu` (this machine's Python) and scripts/gpu_check.sh (the lent
# GPU machine's Python 3.12): the wheel matches the interpreter that builds it.
#
# Environment:
#   PYTHON     interpreter to build for; needs setuptools, wheel and pybind11
#              importable and cmake >= 3.31 on PATH            (default python3)
#   SRC        folder holding qsimcirq-0.22.0.tar.gz and pybind11-3.1.0.tar.gz
#                                                              (default .whl/sdist)
#   DEST       folder the wheel is written to                  (default dist)
#   CUDA_ARCH  CUDA architectures to compile for, e.g. 90 for H100/H200,
#              "80;90" for several                             (default 90)
set -euo pipefail

PYTHON=${PYTHON:-python3}
SRC=${SRC:-.whl/sdist}
DEST=${DEST:-dist}
CUDA_ARCH=${CUDA_ARCH:-90}
QSIM_VERSION=0.22.0
PYBIND11_VERSION=3.1.0

die() { echo "build_qsim_gpu: $*" >&2; exit 1; }

command -v nvcc >/dev/null ||
    die "nvcc not found on PATH: install the CUDA toolkit (nvcc 12.x or 13.x) or add its bin/ to PATH."
cmake_version=$(cmake --version 2>/dev/null | head -1 | awk '{print $3}')
# qsim's CMakeLists.txt requires 3.31; an older cmake fails late and obscurely.
[ -n "$cmake_version" ] && [ "$(printf '%s\n' 3.31 "$cmake_version" | sort -V | head -1)" = 3.31 ] ||
    die "cmake ${cmake_version:-missing} is too old: qsim needs >= 3.31. Fix: $PYTHON -m pip install 'cmake~=3.31.0'."
for f in "qsimcirq-$QSIM_VERSION.tar.gz" "pybind11-$PYBIND11_VERSION.tar.gz"; do
    [ -f "$SRC/$f" ] ||
        die "$SRC/$f missing. Fix: make gpu-sdists (downloads both sdists into $SRC)."
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$SRC/pybind11-$PYBIND11_VERSION.tar.gz" -C "$work"
mkdir -p "$DEST"

# FETCHCONTENT_*: qsim would otherwise clone pybind11 from GitHub at configure
# time; PYBIND11_FINDPYTHON=OFF keeps pybind11 on the interpreter setup.py names.
CUDAARCHS=$CUDA_ARCH \
CMAKE_ARGS="-DFETCHCONTENT_SOURCE_DIR_PYBIND11=$work/pybind11-$PYBIND11_VERSION \
-DFETCHCONTENT_FULLY_DISCONNECTED=ON -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DPYBIND11_FINDPYTHON=OFF" \
    "$PYTHON" -m pip wheel --no-index --no-build-isolation --no-deps -q -w "$DEST" \
    "$SRC/qsimcirq-$QSIM_VERSION.tar.gz"

wheel=$(ls -t "$DEST"/qsimcirq-"$QSIM_VERSION"-*.whl | head -1)
# A wheel without the CUDA module would silently be CPU-only again. (No
# `grep -q`: it stops reading early and pipefail then fails on unzip's SIGPIPE.)
unzip -Z1 "$wheel" | grep 'qsimcirq/qsim_cuda' >/dev/null ||
    die "$wheel has no qsim_cuda module: nvcc was not picked up (see the build log above)."
echo "$wheel"
