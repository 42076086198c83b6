#!/usr/bin/env bash
# The wheels a device run needs beside the device image's own packages (torch 2.11, numpy, scipy, pandas, pyarrow, ...):
# downloads them into .whl/ (git-ignored) at the versions of this checkout's venv. Run here, then `run` with
# carry [".whl", "shared_data"] and start the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# (2026-12-04: without them the package failed to import there: fastcore, torch-fidelity, then HF datasets and the
# httpx2 stack of huggingface_hub 2.x.) shared_data/ holds a copy of ../shared/data/cifar10-jpg.tar.gz (also ignored).
set -eu
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
mkdir -p .whl shared_data
for p in fastcore torch-fidelity datasets dill multiprocess huggingface_hub fsspec hf-xet httpx2 httpcore2 truststore click idna anyio; do
  v=$("$PY" -m pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
  [ -n "$v" ] || { echo "not installed here: $p"; continue; }
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "$p==$v"
done
[ -f ../shared/data/cifar10-jpg.tar.gz ] && cp -n ../shared/data/cifar10-jpg.tar.gz shared_data/ || true
du -sh .whl shared_data
