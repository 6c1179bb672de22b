#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping (stacklab.layers ->
# layers/), so type-check a throw-away tree of symlinks laid out the way the
# package installs.
set -euo pipefail
mypy=$(realpath "${1:-$(command -v mypy)}")


root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
rm -rf "$tree"
mkdir -p "$tree/stacklab"
for entry in "$root"/stacklab/*; do
    ln -s "$entry" "$tree/stacklab/$(basename "$entry")"
done
for sub in layers services analysis transport sim tools; do
    ln -s "$root/$sub" "$tree/stacklab/$sub"
done
cd "$tree"
"$mypy" --config-file "$root/pyproject.toml" --no-incremental -p stacklab
