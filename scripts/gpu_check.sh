#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (CI has none): the GPU tests (Triton kernels compiled for
# this device vs their torch references; engine with Triton == engine with the references), the
# interpreter and sm_80/sm_90 compile tests under this machine's Triton, then the kernel and engine
# benchmarks (Triton, and the torch references for comparison). Results land in ${OUT:-out/gpu}.
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
rc=0
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest_gpu.log" | tail -25 || rc=1
python3 -m worldsim bench kernels --json "$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.log" || rc=1
python3 -m worldsim bench engine --device cuda --dtypes bf16,fp32 --iters 200 --long 2000 \
  --json "$out/bench_engine_cuda.json" 2>&1 | tee "$out/bench_engine_cuda.log" || rc=1
python3 -m worldsim bench engine --device cuda --kernels torch --dtypes bf16 --iters 200 \
  --json "$out/bench_engine_cuda_torch.json" 2>&1 | tee "$out/bench_engine_cuda_torch.log" || rc=1
python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_kernels_attention.py tests/test_kernels_schedule_update.py \
  tests/test_kernels_compile.py tests/test_engine.py 2>&1 | tee "$out/pytest_kernels.log" | tail -8 || rc=1
exit $rc
