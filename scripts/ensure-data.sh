#!/usr/bin/env bash
# Make sure Debian's dataset-fashion-mnist is installed (the embedded default data set).
set -euo pipefail
root=/usr/share/datasets/fashion-mnist
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
missing=0
for f in "${files[@]}"; do [ -s "$root/$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
cmd="apt-get update && apt-get install -y dataset-fashion-mnist"
if [ "$(id -u)" != 0 ]; then
  echo "Fashion-MNIST is missing from $root. Install it as root with:" >&2
  echo "  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "Installing Fashion-MNIST: $cmd"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
