#!/usr/bin/env bash
# Makes a CUDA toolkit installed from PyPI wheels (README.md "CUDA") linkable for the `cuda` build.
#
# candle 0.11 links cudarc *dynamically* (its `dynamic-linking` feature): the final link of
# `anchor` and of the plugin passes -lcuda -lcublas -lcublasLt -lcurand -lnvrtc, and candle-kernels
# adds -lcudart. `cargo check` never links, so it passes without them; `cargo build` needs, in
# $CUDA_ROOT/lib (one of the folders cudarc's build script gives the linker):
#   - the unversioned names: the wheels ship only libcublas.so.13, libcurand.so.10, …;
#   - a libcuda.so: the driver's library, absent on a machine without a GPU driver. A stub with the
#     driver API's names (taken from cudarc's own bindings) and the soname libcuda.so.1 stands in at
#     link time; at run time the GPU machine's driver provides the real one.
# Usage: bash plugin/benches/gpu/cuda_link_stubs.sh "$CUDA_ROOT"     (after `cargo fetch`)
set -euo pipefail
root=${1:?usage: cuda_link_stubs.sh CUDA_ROOT (e.g. \$HOME/cuda-tk/nvidia/cu13)}
lib="$root/lib"
[ -d "$lib" ] || { echo "cuda_link_stubs.sh: $lib is not a folder" >&2; exit 1; }

for name in cublas cublasLt curand nvrtc cudart; do
  if [ -e "$lib/lib$name.so" ]; then
    echo "lib$name.so: present"
    continue
  fi
  versioned=$(cd "$lib" && ls "lib$name.so."* 2>/dev/null | grep -E "^lib$name\.so\.[0-9]+$" | sort -V | tail -n 1 || true)
  if [ -z "$versioned" ]; then
    echo "cuda_link_stubs.sh: no lib$name.so.N in $lib: install its wheel (README.md)" >&2
    exit 1
  fi
  ln -s "$versioned" "$lib/lib$name.so"
  echo "lib$name.so -> $versioned"
done

if [ -e "$lib/libcuda.so" ] || [ -e "$lib/stubs/libcuda.so" ]; then
  echo "libcuda.so: present"
  exit 0
fi
bindings=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null |
           sort -V | tail -n 1 || true)
[ -n "$bindings" ] || { echo "cuda_link_stubs.sh: cudarc's sources are not in the cargo registry: run" \
                             "\`cargo fetch\` in the repository first" >&2; exit 1; }
mkdir -p "$lib/stubs"
src=$(mktemp --suffix=.c)
trap 'rm -f "$src"' EXIT
grep -oE '\bfn cu[A-Za-z0-9_]+\(' "$bindings" | sed -E 's/^fn (.*)\($/\1/' | sort -u |
  awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$src"
n=$(wc -l < "$src")
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so" "$src"
echo "libcuda.so: link-time stub with $n driver API names from $bindings in $lib/stubs (soname libcuda.so.1)"
