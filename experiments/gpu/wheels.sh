#!/usr/bin/env bash
# Run HERE, in the project's venv, before a GPU check: fetches into .whl/ (git-ignored) the wheels of
# noisyseg's dependencies that the device machines' image lacks (it has torch, numpy, OpenCV, pytest,
# tqdm, tensorboard, matplotlib, ...; nothing can be installed there from the network). Versions are
# the ones this venv resolved, so the device runs what CI tests. PY: the device's Python (3.12).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-3.12}
PKGS=(hydra-core omegaconf albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types
      typing-inspection higher segmentation-models-pytorch)  # smp: the image has timm and torchvision
pins=()
for name in "${PKGS[@]}"; do
  version=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  pins+=("$name${version:+==$version}")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
# omegaconf's parser runtime is published as a source archive only: build its (pure-Python) wheel here.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(python3 -m pip show antlr4-python3-runtime | sed -n 's/^Version: //p')"
ls .whl && du -sh .whl
