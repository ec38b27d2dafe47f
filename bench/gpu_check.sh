#!/usr/bin/env bash
# The GPU check, run ON the device machine from the repository root with .whl carried (made here by
# bench/gpu_wheels.sh): installs the carried wheels (polars, a trimmed imagecodecs) into /tmp/site, makes
# `import nucleiscreen` resolve, runs the CUDA tests (pytest -m cuda) and `nucleiscreen bench gpu`, and leaves in
# $OUT: pytest-cuda.log, bench.log, gpu.json, gpu.md, summary.txt (and install.log when the editable install
# was needed and failed). It fits 8 minutes: tests 150 s, bench 280 s, setup well under a minute.
#
#   OUT=/some/folder bash bench/gpu_check.sh        (QUICK=1: the bench's --quick; WHL=dir: wheels elsewhere)
set -euo pipefail

fail() { echo "gpu_check: $*" >&2; exit 2; }

[ -n "${OUT:-}" ] || fail "\$OUT is not set: name the folder for the results (OUT=/tmp/o bash bench/gpu_check.sh)"
[ -f pyproject.toml ] && [ -d engine ] || fail "run it from the nucleiscreen repository root"
mkdir -p "$OUT"
WHL=${WHL:-.whl}
shopt -s nullglob
wheels=("$WHL"/*.whl)
shopt -u nullglob
[ ${#wheels[@]} -gt 0 ] || fail "no wheels in $WHL/: run bench/gpu_wheels.sh on the dev machine and carry .whl"
python3 -c "import torch" 2>/dev/null || fail "python3 has no PyTorch: nothing to measure"
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "no CUDA device (torch.cuda.is_available() is False): nothing to check"

t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${wheels[@]}" || fail "installing ${wheels[*]} into /tmp/site failed"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

# engine/, kernels/, trainer/, bench/ are nucleiscreen.engine, ... by pyproject.toml's package-dir: with no install,
# the repository root and a folder of links nucleiscreen/engine -> engine, ... on PYTHONPATH import the project (the
# checkout's nucleiscreen/__init__.py extends its __path__ to the links); should that fail, an editable install
# without dependencies is the fallback.
links=/tmp/nucleiscreen-links
rm -rf "$links" && mkdir -p "$links/nucleiscreen"
for f in engine kernels trainer bench; do ln -s "$PWD/$f" "$links/nucleiscreen/$f"; done
export PYTHONPATH=$PYTHONPATH:$PWD:$links
how="the repository root on PYTHONPATH"
if ! python3 -c "import nucleiscreen.engine.pipeline" 2>/dev/null; then
    how="an editable install"
    python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
        || fail "nucleiscreen does not import from the repository root, and the editable install failed: see install.log"
    rm -f "$OUT/install.log"
fi
python3 -c "import nucleiscreen.engine.pipeline, nucleiscreen.engine.backends.torch, polars, imagecodecs
imagecodecs.png_decode, imagecodecs.deflate_decode" || fail "the project does not import after the install ($how)"

# the lab's validation frames: ../shared beside the checkout does not travel; gpu_wheels.sh puts them in .whl/data
DATA=../shared/data/aitslab-bioimaging1
data_note="$DATA"
if [ ! -d "$DATA/val/images" ] && [ -d "$WHL/data/aitslab-bioimaging1/val/images" ] && [ ! -e ../shared ]; then
    if mkdir -p ../shared/data && ln -s "$(cd "$WHL/data/aitslab-bioimaging1" && pwd)" "$DATA"; then
        data_note="$DATA -> $WHL/data/aitslab-bioimaging1 (linked here)"
    fi
fi
[ -d "$DATA/val/images" ] || data_note="missing (parity and the tests that need it skip)"

nvidia=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi failed")
versions=$(python3 -c "import sys, torch, numpy, polars, imagecodecs, onnx, onnxruntime, numba
print(f'python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, '
      f'numba {numba.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, '
      f'polars {polars.__version__}, imagecodecs {imagecodecs.__version__}')")
echo "gpu_check: $nvidia"
echo "gpu_check: $versions"
echo "gpu_check: nucleiscreen via $how; lab data: $data_note; setup $(($(date +%s) - t0)) s"

t1=$(date +%s)
set +e
timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee "$OUT/pytest-cuda.log"
tests=${PIPESTATUS[0]}
t2=$(date +%s)
timeout 280 python3 -m nucleiscreen bench gpu --out "$OUT" ${QUICK:+--quick} 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
set -e
t3=$(date +%s)

status() { case $1 in 0) echo "passed (exit 0)";; 124) echo "TIMED OUT after $2 s";; 5) echo "no tests collected (exit 5)";;
                      *) echo "FAILED (exit $1)";; esac; }
{
    echo "device: $nvidia"
    echo "versions: $versions"
    echo "nucleiscreen: $how; lab data: $data_note"
    echo "pytest -m cuda: $(status "$tests" 150) in $((t2 - t1)) s: $(tail -1 "$OUT/pytest-cuda.log")"
    echo "bench gpu: $(status "$bench" 280) in $((t3 - t2)) s; results in gpu.json, gpu.md"
    [ -f "$OUT/gpu.md" ] && { echo; cat "$OUT/gpu.md"; }
} >"$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
