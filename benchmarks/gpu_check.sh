#!/usr/bin/env bash
# One prepared GPU check: the whole test suite on CUDA (obsviz.prune picks CUDA when present),
# then every method at the S3 paper's layer shape. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh [OUTPUT_DIR]
#
# Logs and JSON land in OUTPUT_DIR (default benchmarks/results). PYTHON overrides the interpreter.
set -u
PY=${PYTHON:-python}
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name() if ok else ''); sys.exit(0 if ok else 1)" || { echo "no CUDA device: stopping"; exit 2; }
"$PY" -m pytest -q -p no:cacheprovider --ignore=tests/e2e tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 30
tests=${PIPESTATUS[0]}
PYTHONPATH=. "$PY" benchmarks/bench_gpu.py --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests != 0 || bench != 0 ))
