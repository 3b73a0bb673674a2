#!/usr/bin/env bash
# The GPU check, in one run on a lent GPU machine (no TVM compiler there: only what a deployment has).
# Prepared here (no GPU needed):
#   python tests/test_cuda.py --bundle .cuda_bundle --arch sm_90 --tar .cuda_bundle.tar
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl apache-tvm-ffi==0.1.14.post1
# then run this there with .whl and .cuda_bundle.tar carried. Writes logs and JSON under $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/tvm_gru_gpu_out}"
mkdir -p "$OUT" /tmp/bundle
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/apache_tvm_ffi-0.1.14.post1-*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
tar xf .cuda_bundle.tar -C /tmp/bundle || exit 1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import time; t=time.time(); import torch, tvm_ffi, numpy; print('torch', torch.__version__, 'tvm_ffi', tvm_ffi.__version__, 'numpy', numpy.__version__, 'import %.1fs' % (time.time()-t))"
  python3 -c "import sys, tvm_gru; from tvm_gru.runtime.artifact import load; c = load('/tmp/bundle/sigmoid_ra'); print(c); print('tvm imported:', 'tvm' in sys.modules)"
  # the artifact alone (its bundled runtime copy, no tvm_gru package): what a deployment has
  (cd /tmp && PYTHONPATH=/tmp/site python3 -c "import sys; sys.path.insert(0, '/tmp/bundle/v1_default/python/tvm_gru_runtime.zip'); import numpy as np, tvm_gru_runtime as rt; c = rt.load('/tmp/bundle/v1_default'); o, _ = c(np.ones((3, 32), 'float32'), [np.zeros((3, 64), 'float32')]); print('bundled runtime:', c, o.shape, float(abs(o).max()))")
} 2>&1 | tee "$OUT/env.log"
TVM_GRU_CUDA_BUNDLE=/tmp/bundle timeout 200 python3 -m pytest tests/test_cuda.py -q -m gpu -p no:cacheprovider -rs 2>&1 \
  | tee "$OUT/pytest.log"
timeout 240 python3 benchmarks/cuda_bench.py /tmp/bundle --json "$OUT/cuda_bench.json" 2>&1 | tee "$OUT/bench.log"
