#!/usr/bin/env bash
# What benchmarks/gpu_session.sh takes along to a lent GPU, prepared on this machine (the GPU machine
# reaches no registry and gets no .git): the code before issue 11 in .bench_before/, optionally an
# earlier revision in .bench_prev/, and in .whl/ the wheels of what the GPU machine lacks (soundfile
# and its needs, for the CUDA tests and the old tree), for its Python 3.12. All three are ignored by git;
# pass them to the device's `carry`.
#
#   bash benchmarks/gpu_carry.sh             # .bench_before/ and .whl/
#   bash benchmarks/gpu_carry.sh 2988577     # also .bench_prev/ from that revision
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=4d1d8f0  # the last commit before issue 11's changes: gpu_session.sh's baseline
PYTHON=${PYTHON:-python3}

unpack() {  # unpack REV's clmr_ray into DIR, afresh
    rm -rf "$2" && mkdir -p "$2"
    git archive "$1" clmr_ray | tar -x -C "$2"
    echo "$2: clmr_ray of $(git rev-parse --short "$1")"
}

unpack "$BEFORE" .bench_before
if [ $# -ge 1 ]; then
    unpack "$1" .bench_prev
fi

rm -rf .whl && mkdir -p .whl
# soundfile and what it needs; the versions this project's own install resolved, where it has one
for name in soundfile cffi pycparser; do
    version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d .whl "$name${version:+==$version}"
done
du -sh .bench_before .whl ${1:+.bench_prev} | sed 's/^/carry: /'
