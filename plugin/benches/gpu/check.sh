#!/usr/bin/env bash
# The GPU check of issue 18: CUDA parity, speed and memory of `anchor` and the OpenFX bundle, in
# one unattended run that fits a short GPU lease. See plugin/benches/gpu/README.md.
#
# Usage (from the repository root):
#   bash plugin/benches/gpu/check.sh RESULTS_DIR [--dry-run] [--budget SECONDS] [--only 2,3,4,5]
#                                    [--work DIR]
#
#   RESULTS_DIR  gets RESULTS.md, results.json and step1.log … step5.log (7 small files);
#                the bulky work (model folders, renders, latents) goes to --work
#                (default $WORK, else /tmp/mya-gpucheck)
#   --dry-run    everything on the CPU at tiny sizes (tests the script itself; no GPU needed)
#   --budget S   global deadline in seconds (default 450 on the GPU, 600 dry): each step gets at
#                most its cap, less the minimum of the cheap checks still to come (steps 2 and 5);
#                a step that cannot get its own minimum is skipped. So the slow steps (3, then 4)
#                are the ones cut when time runs short; step 4 shortens itself (fewer DDIM steps,
#                extrapolated) when its estimate does not fit
#   --only LIST  steps to run besides step 1 (always run: it sets the library path), e.g. 4,5 for
#                a rerun; a step not selected keeps its JSON from an earlier run in --work
# Environment: ANCHOR (target/release/anchor), OFX_RENDER (target/release/ofx-render),
#   BUNDLE (target/bundle/MakeYourAnchor.ofx.bundle), PYTHON (python3), PTX_PATCH=0 (no PTX
#   `.version` rewrite when the driver is older than the binaries' PTX), GPUCHECK_FORCE_WHEELS=1
#   (install the carried diffusers wheel even when diffusers imports).
# When plugin/benches/gpu/carry/bins.tar.xz exists (pack.sh), it is unpacked into the work folder:
# its binaries stand in for those not at their paths, and its pydeps/ (diffusers) is used when
# `import diffusers` fails.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root" || exit 2

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
results="" dry=0 budget="" only="2,3,4,5" work="${WORK:-/tmp/mya-gpucheck}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --budget) budget=${2:?}; shift 2 ;;
    --only) only=${2:?}; shift 2 ;;
    --work) work=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "check.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$results" ] || usage; results=$1; shift ;;
  esac
done
[ -n "$results" ] || usage
[ -n "$budget" ] || budget=$([ "$dry" = 1 ] && echo 600 || echo 450)
mkdir -p "$results" "$work" || exit 2
results=$(cd "$results" && pwd) work=$(cd "$work" && pwd)

abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$root/$1" ;; esac; }
ANCHOR=$(abs "${ANCHOR:-target/release/anchor}")
OFX_RENDER=$(abs "${OFX_RENDER:-target/release/ofx-render}")
BUNDLE=$(abs "${BUNDLE:-target/bundle/MakeYourAnchor.ofx.bundle}")
PYTHON=${PYTHON:-python3}

# Binaries and diffusers carried as one compressed archive (pack.sh).
carry="$here/carry/bins.tar.xz"
GPUCHECK_PYDEPS=""
if [ -f "$carry" ]; then
  rm -rf "$work/carry" && mkdir -p "$work/carry" && tar -xJf "$carry" -C "$work/carry" &&
    echo "check.sh: unpacked $carry into $work/carry"
  [ -x "$ANCHOR" ] || ANCHOR="$work/carry/target/release/anchor"
  [ -x "$OFX_RENDER" ] || OFX_RENDER="$work/carry/target/release/ofx-render"
  [ -d "$BUNDLE" ] || BUNDLE="$work/carry/target/bundle/MakeYourAnchor.ofx.bundle"
  [ ! -d "$work/carry/pydeps" ] || GPUCHECK_PYDEPS="$work/carry/pydeps"
fi
export ANCHOR OFX_RENDER BUNDLE PYTHON GPUCHECK_PYDEPS
# The driver's PTX JIT cache, shared by the runs (the first CUDA process compiles the kernels).
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-1073741824}

start=$(date +%s)
deadline=$((start + budget))
git_info=$(git rev-parse --short HEAD 2>/dev/null || true)
[ -z "$git_info" ] || git_info="commit $git_info$(git status --porcelain 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
export GPUCHECK_DRY=$dry GPUCHECK_WORK=$work GPUCHECK_RESULTS=$results GPUCHECK_START=$start \
  GPUCHECK_BUDGET=$budget GPUCHECK_GIT="${git_info:-no git}" PYTHONUNBUFFERED=1

# Per step: cap (s) and the least it needs (s).
if [ "$dry" = 1 ]; then
  caps=(0 120 240 300 240 240); mins=(0 10 30 60 30 30)
else
  caps=(0 60 150 220 300 90);   mins=(0 10 30 60 45 30)
fi
selected() { [ "$1" = 1 ] || case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
names=("" "GPU, driver, CUDA libraries" "CUDA vs CPU parity (tiny)" "one 16x64² window vs PyTorch"
       "48-frame render at 512²" "ofx-render vs anchor on CUDA")

echo "check.sh: $([ "$dry" = 1 ] && echo 'DRY RUN (CPU, tiny sizes)' || echo 'GPU run'), budget ${budget} s," \
     "results in $results, work in $work"
echo "check.sh: anchor=$ANCHOR ofx-render=$OFX_RENDER bundle=$BUNDLE python=$PYTHON; ${GPUCHECK_GIT}"
rm -f "$results"/step*.log "$results"/RESULTS.md "$results"/results.json "$work/env.sh"
for n in 1 2 3 4 5; do
  rm -f "$work/step$n.status"
  if ! selected "$n"; then
    printf '{"status": "not selected"}\n' > "$work/step$n.status"
    continue
  fi
  rm -f "$work/step$n.json"
  now=$(date +%s)
  reserve=0
  for k in 2 5; do [ "$k" -gt "$n" ] && selected "$k" && reserve=$((reserve + mins[k])); done
  allowed=$((deadline - now - reserve))
  [ "$allowed" -le "${caps[n]}" ] || allowed=${caps[n]}
  # Step 1 always runs: the later steps need the library path it finds.
  [ "$n" != 1 ] || [ "$allowed" -ge "${mins[1]}" ] || allowed=${caps[1]}
  if [ "$allowed" -lt "${mins[n]}" ]; then
    reason="skipped: $((deadline - now)) s left of the budget, ${reserve} s kept for the later steps"
    printf '{"status": "skip", "reason": "%s", "seconds": 0}\n' "$reason" > "$work/step$n.status"
    echo "step $n (${names[n]}): $reason" | tee "$results/step$n.log"
    continue
  fi
  export GPUCHECK_STEP_DEADLINE=$((now + allowed))
  echo "step $n (${names[n]}): up to ${allowed} s ..."
  t0=$(date +%s)
  timeout -k 10 $((allowed + 20)) "$PYTHON" -u "$here/gpucheck.py" "step$n" > "$results/step$n.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  case $rc in
    0) st=ok ;;
    124|137) st=timeout ;;
    *) st=crashed ;;
  esac
  printf '{"status": "%s", "rc": %d, "seconds": %d, "allowed": %d, "reason": "runner: %s (exit %d)"}\n' \
    "$st" "$rc" "$secs" "$allowed" "$st" "$rc" > "$work/step$n.status"
  # Logs stay small (the device returns files of at most 16 MiB).
  if [ "$(wc -c < "$results/step$n.log")" -gt 2000000 ]; then
    tail -c 2000000 "$results/step$n.log" > "$results/step$n.log.tmp" && mv "$results/step$n.log.tmp" "$results/step$n.log"
  fi
  line=$(grep "^step $n: " "$results/step$n.log" | tail -n 1)
  echo "  ${line:-step $n: $st (exit $rc), see step$n.log: $(tail -n 2 "$results/step$n.log" | tr '\n' ' ')} [${secs} s]"
  if [ "$n" = 1 ] && [ -f "$work/env.sh" ]; then
    # shellcheck disable=SC1091
    . "$work/env.sh"
    export LD_LIBRARY_PATH ANCHOR BUNDLE
  fi
done

echo
if ! timeout 120 "$PYTHON" -u "$here/gpucheck.py" report; then
  {
    echo "# GPU check (issue 18): the report failed"
    echo
    for n in 1 2 3 4 5; do echo "- step $n: $(cat "$work/step$n.status" 2>/dev/null)"; done
    echo
    echo "See step1.log … step5.log and $work/step*.json."
  } > "$results/RESULTS.md"
  cat "$results/RESULTS.md"
fi
echo "check.sh: done in $(($(date +%s) - start)) s; results in $results"
