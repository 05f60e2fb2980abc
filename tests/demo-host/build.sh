#!/usr/bin/env bash
# Build the OpenFX association's example host ("hostDemo") as a second, independent test host.
#
# Its sources come from the `openfx-sys` 0.1.0 crate package, fetched through cargo (nothing
# else is downloaded and none of its code is committed here). The build patches two things at
# build time, so the plugin id and the number of frames become arguments:
#
#   hostDemo [PLUGIN_ID [FRAMES]]     (or env OFX_DEMO_PLUGIN_ID / OFX_DEMO_FRAMES)
#
# and a missing plugin or instance exits non-zero instead of silently doing nothing. As shipped
# it renders frames 0..=1 of a 720x576 RGBA8 filter instance of net.sf.openfx:invertPlugin; the
# patched host renders frames 0..FRAMES-1 (Begin/EndSequenceRender over [0, FRAMES-1]) and
# writes Output.<t>.ppm into the current directory. Plugins are looked up in OFX_PLUGIN_PATH.
#
# Needs: cargo, g++ (C++14), libexpat1-dev (/usr/include/expat.h). Output:
#   ${CARGO_TARGET_DIR:-<repo>/target}/demo-host/bin/hostDemo
# Prints the binary's path on its last line. Idempotent: a second run reuses the build
# (DEMO_HOST_REBUILD=1 rebuilds; DEMO_HOST_FORCE_FETCH=1 runs `cargo fetch` even when the crate
# package is already in cargo's cache).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$target/demo-host"
bin="$work/bin/hostDemo"
version="0.1.0"

# Concurrent callers (parallel tests, two cargo runs) take turns: the build unpacks and patches
# one shared copy, and a second build racing the first would patch it twice.
mkdir -p "$target"
exec 9>"$target/demo-host.lock"
flock 9

if [[ -x "$bin" && "${DEMO_HOST_REBUILD:-0}" != 1 ]]; then
    echo "$bin"
    exit 0
fi

command -v g++ >/dev/null || { echo "demo-host: g++ not found" >&2; exit 3; }
[[ -f /usr/include/expat.h ]] || { echo "demo-host: /usr/include/expat.h not found (apt-get install libexpat1-dev)" >&2; exit 3; }

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
find_crate() {
    ls "$cargo_home"/registry/cache/*/"openfx-sys-$version.crate" 2>/dev/null | head -n 1 || true
}

crate="$(find_crate)"
if [[ -z "$crate" || "${DEMO_HOST_FORCE_FETCH:-0}" == 1 ]]; then
    # A throwaway project that depends on exactly this version; `cargo fetch` puts the .crate
    # package in cargo's cache. Its own target dir and lock file keep it away from the
    # workspace's build lock.
    fetch="$work/fetch"
    mkdir -p "$fetch/src"
    cat > "$fetch/Cargo.toml" <<TOML
[package]
name = "demo-host-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
openfx-sys = "=$version"

[workspace]
TOML
    echo "" > "$fetch/src/lib.rs"
    (cd "$fetch" && CARGO_TARGET_DIR="$fetch/target" cargo fetch --quiet --target x86_64-unknown-linux-gnu)
    crate="$(find_crate)"
    [[ -n "$crate" ]] || { echo "demo-host: cargo fetch did not leave openfx-sys-$version.crate in $cargo_home/registry/cache" >&2; exit 1; }
fi

src="$work/openfx-sys-$version"
rm -rf "$src" "$work/obj"
mkdir -p "$work/obj" "$work/bin"
tar -xzf "$crate" -C "$work"
hs="$src/openfx/HostSupport"
demo="$hs/examples/hostDemo.cpp"

# --- patches (applied to the unpacked copy; each one is checked) ---------------------------
patch_line() { # file, sed expression, text that must appear afterwards
    sed -i "$2" "$1"
    grep -qF -- "$3" "$1" || { echo "demo-host: patch failed on $1: $2" >&2; exit 1; }
}
cat > "$work/args.inc" <<'CPP'
// Added by tests/demo-host/build.sh: plugin id and frame count from argv or the environment.
#include <cstdlib>
static const char *demoPluginId(int argc, char **argv)
{
  if (argc > 1) return argv[1];
  const char *e = std::getenv("OFX_DEMO_PLUGIN_ID");
  return e ? e : "net.sf.openfx:invertPlugin";
}
static int demoFrameCount(int argc, char **argv)
{
  const char *s = argc > 2 ? argv[2] : std::getenv("OFX_DEMO_FRAMES");
  int n = s ? std::atoi(s) : 2;
  return n > 0 ? n : 1;
}
CPP
patch_line "$demo" "/#include \"hostDemoClipInstance.h\"/r $work/args.inc" "demoFrameCount"
patch_line "$demo" 's|getPluginById("net.sf.openfx:invertPlugin")|getPluginById(demoPluginId(argc, argv))|' "getPluginById(demoPluginId(argc, argv))"
patch_line "$demo" 's|^  if(plugin) {|  if(!plugin) { std::cerr << "hostDemo: plugin " << demoPluginId(argc, argv) << " not found in OFX_PLUGIN_PATH" << std::endl; return 2; }\n  if(plugin) {|' "not found in OFX_PLUGIN_PATH"
patch_line "$demo" 's|^    if(instance.get())$|    if(!instance.get()) { std::cerr << "hostDemo: cannot create a filter instance" << std::endl; return 3; }\n    if(instance.get())|' "cannot create a filter instance"
patch_line "$demo" 's|int numFramesToRender = OFXHOSTDEMOCLIPLENGTH;|int numFramesToRender = demoFrameCount(argc, argv);|' "demoFrameCount(argc, argv);"
patch_line "$demo" 's|for(int t = 0; t <= numFramesToRender; ++t)|for(int t = 0; t < numFramesToRender; ++t)|' "t < numFramesToRender"
patch_line "$demo" 's|beginRenderAction(0, numFramesToRender,|beginRenderAction(0, numFramesToRender - 1,|' "beginRenderAction(0, numFramesToRender - 1,"
patch_line "$demo" 's|endRenderAction(0, numFramesToRender,|endRenderAction(0, numFramesToRender - 1,|' "endRenderAction(0, numFramesToRender - 1,"

# --- compile (asserts stay on: hostDemo checks every action status with assert) -------------
# -include cstring: the example sources use strcmp without including <cstring>.
flags=(-std=c++14 -O1 -w -fPIC -include cstring -I"$src/openfx/include" -I"$hs/include" -I"$hs/examples")
objs=()
for f in "$hs"/src/*.cpp "$hs"/examples/hostDemo*.cpp; do
    o="$work/obj/$(basename "${f%.cpp}").o"
    g++ "${flags[@]}" -c "$f" -o "$o"
    objs+=("$o")
done
g++ -o "$bin.partial" "${objs[@]}" -lexpat -ldl
mv "$bin.partial" "$bin"
echo "$bin"
