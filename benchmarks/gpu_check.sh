#!/usr/bin/env bash
# The GPU check, in one go on a CUDA machine: the CUDA tests, then the GPU figures (benchmarks/bench_gpu.py).
#
#     bash benchmarks/gpu_check.sh OUT_DIR [extra arguments for benchmarks/run.py --device cuda]
#
# Writes OUT_DIR/pytest.log, OUT_DIR/bench.log and OUT_DIR/benchmark.json (metrics/benchmark.json with the
# GPU figures under "cuda"). Where DVC and MLflow are not installed, wheels in .whl/ are installed into
# /tmp/site first (a machine without network: see README, GPU).
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
shift
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import mlflow, dvc" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
if ! command -v python >/dev/null; then  # dvc.yaml's stages run `python`
  mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python && export PATH=/tmp/bin:$PATH
fi
command -v git >/dev/null || echo "no git on this machine: the default dvc repro figure will fail"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_model.py tests/test_losses.py \
  tests/test_checkpoint.py 2>&1 | tee "$out/pytest.log"
cp metrics/benchmark.json "$out/benchmark.json"
python3 benchmarks/run.py --device cuda --out "$out/benchmark.json" "$@" 2>&1 | tee "$out/bench.log"
