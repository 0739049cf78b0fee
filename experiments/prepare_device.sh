#!/usr/bin/env bash
# Prepares, on the CPU machine, what a GPU session's device calls carry (docs/RESULTS.md,
# "How a GPU session runs the queue"; experiments/device_run.sh runs them there):
#   .whl/          the pinned pure-Python packages the device image lacks (its own JAX, PyTorch
#                  and numpy are used), as wheels: flax, optax, orbax-checkpoint, chex,
#                  ml_collections, tensorboardX, at the versions of requirements.txt
#   .device-data/  the CIFAR-10 archive in 44 MB parts (c10.part-00 ...), one per call
# Both are git-ignored: name them in the device tool's `carry`, e.g. the first call
#   carry [".whl", ".device-data/c10.part-00"], then ".device-data/c10.part-01", ...
#
#   bash experiments/prepare_device.sh [ARCHIVE]   # default ../shared/data/cifar-10-binary.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-../shared/data/cifar-10-binary.tar.gz}
[ -f "$archive" ] || { echo "no CIFAR-10 archive at $archive; pass its path" >&2; exit 1; }
rm -rf .whl && mkdir -p .whl
for pkg in flax optax orbax-checkpoint chex ml_collections tensorboardX; do
  pin=$(grep -i "^${pkg}==" requirements.txt) || { echo "no pin for $pkg in requirements.txt" >&2; exit 1; }
  python -m pip download -q --no-deps --only-binary=:all: -d .whl "$pin"
done
mkdir -p .device-data && rm -f .device-data/c10.part-*
split -b 44m -d "$archive" .device-data/c10.part-
ls -la .whl .device-data
du -sh .whl .device-data
