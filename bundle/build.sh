#!/usr/bin/env bash
# Builds the plugin and assembles the OpenFX bundle:
#   target/bundle/MakeYourAnchor.ofx.bundle/Contents/{Info.plist, <arch>/MakeYourAnchor.ofx,
#                                                      Resources/org.makeyouranchor.Anchor.png}
# Usage: bash bundle/build.sh [--profile release|test|dev] [--features cuda] [--out DIR] [--glibc VERSION]
#   --glibc 2.28   Linux only: link against glibc VERSION with cargo-zigbuild (for Rocky/Alma 8,
#                  the VFX Reference Platform); needs `pip install ziglang` and
#                  `cargo install cargo-zigbuild`. On Linux the script always prints the highest
#                  GLIBC_x.y symbol version the library requires; with --glibc it fails above VERSION.
#        bash bundle/build.sh --check-only FILE [VERSION]   only that check, on any ELF file
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The GLIBC_x.y symbol versions FILE requires, one per line, oldest first.
glibc_versions() {
  local file=$1 dump
  if command -v objdump >/dev/null 2>&1; then
    dump=$(objdump -T "$file") || return 1
  elif command -v readelf >/dev/null 2>&1; then
    dump=$(readelf --version-info "$file") || return 1
  else
    echo "bundle/build.sh: neither objdump nor readelf found (install binutils)" >&2
    return 1
  fi
  printf '%s\n' "$dump" | { grep -o 'GLIBC_[0-9][0-9.]*[0-9]' || true; } | sed 's/^GLIBC_//' \
    | sort -u -V
}

# Prints the highest GLIBC version FILE requires; with MAX, fails when any is above MAX.
check_glibc() {
  local file=$1 max=${2:-} versions highest above=()
  versions=$(glibc_versions "$file") || return 1
  highest=$(printf '%s\n' "$versions" | tail -n 1)
  echo "bundle/build.sh: $file requires glibc ${highest:-(no versioned symbols)}" >&2
  [ -n "$max" ] || return 0
  local v
  for v in $versions; do
    # v > max  <=>  "v, max" is not in version order.
    if ! printf '%s\n%s\n' "$v" "$max" | sort -C -V; then above+=("GLIBC_$v"); fi
  done
  if [ ${#above[@]} -gt 0 ]; then
    echo "bundle/build.sh: $file needs glibc newer than $max (${above[*]}): it will not load on a" \
         "system with glibc $max" >&2
    return 1
  fi
  echo "bundle/build.sh: OK, nothing above glibc $max" >&2
}

profile=release
features=()
out="$root/target/bundle"
glibc=
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --features) features=(--features "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --glibc) glibc=$2; shift 2 ;;
    --check-only) check_glibc "${2:?usage: --check-only FILE [VERSION]}" "${3:-}"; exit ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "bundle/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)  arch=Linux-x86-64;  lib=libmake_your_anchor.so; triple=x86_64-unknown-linux-gnu ;;
  Linux-aarch64) arch=Linux-arm-64;  lib=libmake_your_anchor.so; triple=aarch64-unknown-linux-gnu ;;
  Darwin-*)      arch=MacOS;         lib=libmake_your_anchor.dylib ;;
  MINGW*|MSYS*|CYGWIN*) arch=Win64;  lib=make_your_anchor.dll ;;
  *) echo "bundle/build.sh: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

if [ -n "$glibc" ]; then
  case "$arch" in
    Linux-*) ;;
    *) echo "bundle/build.sh: --glibc is for Linux x86_64/aarch64 only" >&2; exit 2 ;;
  esac
  if ! printf '%s\n' "$glibc" | grep -Eq '^2\.[0-9]+$'; then
    echo "bundle/build.sh: --glibc wants a version like 2.28, not '$glibc'" >&2; exit 2
  fi
  if ! cargo zigbuild --help >/dev/null 2>&1; then
    echo "bundle/build.sh: --glibc needs cargo-zigbuild: cargo install cargo-zigbuild" >&2; exit 1
  fi
  # cargo-zigbuild runs `zig` from PATH, else `python3 -m ziglang` (the ziglang PyPI wheel).
  if ! "${CARGO_ZIGBUILD_PYTHON_PATH:-python3}" -m ziglang version >/dev/null 2>&1 &&
     ! "${CARGO_ZIGBUILD_ZIG_PATH:-zig}" version >/dev/null 2>&1; then
    echo "bundle/build.sh: --glibc needs zig: pip install ziglang (into the python3 on PATH," \
         "or a venv whose bin/ comes first on PATH), or a zig on PATH" >&2
    exit 1
  fi
fi

cd "$root"
if [ -n "$glibc" ]; then
  cargo zigbuild -p make-your-anchor --lib --profile "$profile" --target "$triple.$glibc" \
    ${features[@]+"${features[@]}"}
else
  cargo build -p make-your-anchor --lib --profile "$profile" ${features[@]+"${features[@]}"}
fi

# Cargo puts the `dev` and `test` profiles in target/debug.
case "$profile" in dev|test) dir=debug ;; *) dir=$profile ;; esac
target_dir=${CARGO_TARGET_DIR:-$root/target}
built="$target_dir/$dir/$lib"
[ -z "$glibc" ] || built="$target_dir/$triple/$dir/$lib"

# Without --glibc the check only informs (a missing objdump/readelf does not stop the build).
case "$arch" in Linux-*) check_glibc "$built" "$glibc" || [ -z "$glibc" ] || exit 1 ;; esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
bundle="$out/MakeYourAnchor.ofx.bundle"
rm -rf "$bundle"
mkdir -p "$bundle/Contents/$arch" "$bundle/Contents/Resources"
cp "$built" "$bundle/Contents/$arch/MakeYourAnchor.ofx"
sed "s/@VERSION@/$version/g" resources/Info.plist > "$bundle/Contents/Info.plist"
cp resources/org.makeyouranchor.Anchor.png "$bundle/Contents/Resources/"
cp resources/licenses/* "$bundle/Contents/Resources/"
echo "$bundle"
