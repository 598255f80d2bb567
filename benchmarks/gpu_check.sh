#!/usr/bin/env bash
# The GPU path, measured (docs/performance.md#the-gpu-path): on a machine with one CUDA GPU, from the repo,
#
#     bash benchmarks/gpu_check.sh            # about 3 minutes once the wheels are cached, under 8 in all
#
# makes its own venv ($TMPDIR/pairfilter-gpu-venv, or $PAIRFILTER_GPU_VENV), installs the CUDA build of torch and a torchvision built
# for it (PyPI's Linux wheels are the CUDA builds; a torch with CUDA already on the machine is used instead), the
# project's scoring dependencies and the project, then runs `python -m benchmarks.gpu_check` (arguments are passed
# on). It prints pairs/s for float32, float16 and bfloat16 on the full ViT-B/32 architecture, the share of the time
# spent waiting for decoding, and the score deviation of each path; the table at the end goes to performance.md.
set -euo pipefail

TORCH_WHEEL=${PAIRFILTER_TORCH:-torch==2.13.0}
TORCHVISION_WHEEL=${PAIRFILTER_TORCHVISION:-torchvision==0.28.0}   # the release built against torch 2.13
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${PAIRFILTER_GPU_VENV:-${TMPDIR:-/tmp}/pairfilter-gpu-venv}
started=$SECONDS

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv"   # sees a torch the machine already has
fi
py="$venv/bin/python"
has_cuda_torch() { "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if ! has_cuda_torch; then
    "$py" -m pip install -q "$TORCH_WHEEL"
fi
has_cuda_torch || { echo "gpu_check: torch in $venv sees no CUDA GPU" >&2; exit 1; }
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
if ! "$py" -c 'import torchvision.io' 2>/dev/null; then
    if [ "$TORCH_WHEEL" = "torch==$torch_version" ] || [ -n "${PAIRFILTER_TORCHVISION:-}" ]; then
        "$py" -m pip install -q --no-deps "$TORCHVISION_WHEEL" \
            || echo "gpu_check: no torchvision; decoding runs in CPU worker processes only"
    else
        echo "gpu_check: torch $torch_version: set PAIRFILTER_TORCHVISION to the torchvision built for it for GPU decoding"
    fi
fi
# What the scoring code imports (not Dagster, the webserver or Ray: they are not on this path), then the project.
"$py" -m pip install -q "transformers>=5.0" "safetensors>=0.4" "pillow>=10.0" "numpy>=1.26" "duckdb>=1.1" \
    "pandas>=2.2" "pyarrow>=14"
"$py" -m pip install -q --no-deps --no-build-isolation -e "$repo" 2>/dev/null \
    || echo "gpu_check: the project runs from $repo (PYTHONPATH) without being installed"
echo "gpu_check: environment ready after $((SECONDS - started)) s"

cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" timeout 420 "$py" -m benchmarks.gpu_check "$@"
echo "gpu_check: done in $((SECONDS - started)) s"
