#!/usr/bin/env bash
# Packs what the GPU check needs beyond the git tree into plugin/benches/gpu/carry/bins.tar.xz
# (git-ignored), one path for the run tool's `carry`: target/release/anchor,
# target/release/ofx-render, target/bundle/MakeYourAnchor.ofx.bundle and, unzipped under pydeps/,
# the wheel(s) of plugin/benches/gpu/wheels/ (diffusers: 6.1 MiB as a wheel, 1.9 MiB in the xz).
# One solid xz archive also stores the CUDA kernels that anchor and the plugin both embed once.
# check.sh unpacks it on the device. Prints the sizes against the 64 MiB that may travel
# (working tree + carried paths).
# Usage: bash plugin/benches/gpu/pack.sh   (after the CUDA builds, see README.md)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"

bins=(target/release/anchor target/release/ofx-render target/bundle/MakeYourAnchor.ofx.bundle)
for b in "${bins[@]}"; do
  [ -e "$b" ] || { echo "pack.sh: $b is missing: build it first (README.md)" >&2; exit 1; }
done
if ! grep -aq '^\.version [0-9]' target/release/anchor; then
  echo "pack.sh: WARNING: target/release/anchor holds no PTX: not a --features cuda build" >&2
fi
lib=$(ls target/bundle/MakeYourAnchor.ofx.bundle/Contents/*/MakeYourAnchor.ofx)
if ! grep -aq '^\.version [0-9]' "$lib"; then
  echo "pack.sh: WARNING: $lib holds no PTX: run bash bundle/build.sh --features cuda" >&2
fi

out=plugin/benches/gpu/carry
rm -rf "$out"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/pydeps"
wheels=(plugin/benches/gpu/wheels/*.whl)
if [ -e "${wheels[0]}" ]; then
  for w in "${wheels[@]}"; do (cd "$stage/pydeps" && unzip -q -o "$root/$w"); done
else
  echo "pack.sh: no wheel in plugin/benches/gpu/wheels/ (README.md): PyTorch's half of step 3 needs diffusers" >&2
fi
XZ_OPT=${XZ_OPT:--9} tar -cJf "$out/bins.tar.xz" "${bins[@]}" -C "$stage" pydeps

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
       awk '{ s += $1 } END { print s + 0 }')
carry=$(du -sb "$out" | cut -f1)
raw=$(du -scb "${bins[@]}" | tail -n 1 | cut -f1)
echo "binaries, uncompressed:            $(mib "$raw")"
for b in "${bins[@]}"; do echo "  $b: $(mib "$(du -sb "$b" | cut -f1)")"; done
echo "carry ($out):  $(mib "$carry")  (bins.tar.xz $(mib "$(stat -c %s "$out/bins.tar.xz")"))"
echo "working tree that travels:          $(mib "$tree")"
total=$((tree + carry))
echo "total:                              $(mib "$total") of 64 MiB"
[ "$total" -le $((64 * 1048576)) ] || { echo "pack.sh: over the 64 MiB limit" >&2; exit 1; }
