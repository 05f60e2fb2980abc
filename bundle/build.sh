#!/usr/bin/env bash
# Builds the plugin and assembles the OpenFX bundle:
#   target/bundle/MakeYourAnchor.ofx.bundle/Contents/{Info.plist, <arch>/MakeYourAnchor.ofx,
#                                                      Resources/org.makeyouranchor.Anchor.png}
# Usage: bash bundle/build.sh [--profile release|test|dev] [--features cuda] [--out DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=release
features=()
out="$root/target/bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --features) features=(--features "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "bundle/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cd "$root"
cargo build -p make-your-anchor --lib --profile "$profile" ${features[@]+"${features[@]}"}

# Cargo puts the `dev` and `test` profiles in target/debug.
case "$profile" in dev|test) dir=debug ;; *) dir=$profile ;; esac
target_dir=${CARGO_TARGET_DIR:-$root/target}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)  arch=Linux-x86-64;  lib=libmake_your_anchor.so ;;
  Linux-aarch64) arch=Linux-arm-64;  lib=libmake_your_anchor.so ;;
  Darwin-*)      arch=MacOS;         lib=libmake_your_anchor.dylib ;;
  MINGW*|MSYS*|CYGWIN*) arch=Win64;  lib=make_your_anchor.dll ;;
  *) echo "bundle/build.sh: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
bundle="$out/MakeYourAnchor.ofx.bundle"
rm -rf "$bundle"
mkdir -p "$bundle/Contents/$arch" "$bundle/Contents/Resources"
cp "$target_dir/$dir/$lib" "$bundle/Contents/$arch/MakeYourAnchor.ofx"
sed "s/@VERSION@/$version/g" resources/Info.plist > "$bundle/Contents/Info.plist"
cp resources/org.makeyouranchor.Anchor.png "$bundle/Contents/Resources/"
echo "$bundle"
