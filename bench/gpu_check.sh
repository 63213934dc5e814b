#!/usr/bin/env bash
# The GPU checks, as one short run on a machine with a CUDA GPU: the tests marked `cuda`
# (in-process engine, no Ray needed) and `bench/batched.py` on the GPU. Logs and the
# benchmark's JSON go to $OUT (default bench/out).
#
#   bash bench/gpu_check.sh                      # where raysim's requirements are installed
#   PY=python3 WHEELS=.whl bash bench/gpu_check.sh   # an image with CUDA torch: pure-Python wheels carried in
#
# The wheels (pydantic and its needs, 2.7 MB; the rest of raysim's requirements but Ray are in
# common GPU images, and these checks need no Ray). Made here, then carried (`.whl`, ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection typing-extensions
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# raysim from this checkout, installed or not (a GPU image has torch but not raysim)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/raysim-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/raysim-site
fi
"$PY" - <<'EOF' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch.cuda.is_available() is false here: run this on a machine with a CUDA GPU")
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
status=0
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_batched.py 2>&1 | tee "$OUT/gpu-tests.log" || status=1
timeout 300 "$PY" bench/batched.py --device cuda --rounds 4 2>&1 | tee "$OUT/gpu-bench.log" || status=1
[ "$OUT" = bench/out ] || cp bench/out/batched-*.json "$OUT"/ 2>/dev/null || true
exit $status
