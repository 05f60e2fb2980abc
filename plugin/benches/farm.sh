#!/usr/bin/env bash
# Farm benchmark (issue 15): K `anchor render` processes started together on K chunks of one
# clip, sharing one --shared-cache folder, against a single process rendering the whole clip.
# Prints the network calls of each process, their total against the single render's, the largest
# share, wall times, and whether every frame is byte-identical to the single render.
#
#   cargo build --release -p anchor-cli --bin anchor && bash plugin/benches/farm.sh
#   PROCS="2 4 8" FRAMES=240 bash plugin/benches/farm.sh
#
# ANCHOR (binary), MODEL (model folder), POSES (pose folder; its first FRAMES frames are used,
# repeated when it holds fewer), FRAMES, PROCS, OUT and EXTRA (more render flags) are settable.
# On a machine with fewer cores than processes the wall times are shared-CPU numbers: the
# calls are the measure of work.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
ANCHOR=${ANCHOR:-target/release/anchor}
MODEL=${MODEL:-resources/models/tiny-anchor}
POSES=${POSES:-examples/poses}
FRAMES=${FRAMES:-96}
PROCS=${PROCS:-4}
OUT=${OUT:-target/farm-bench}
EXTRA=${EXTRA:-}
rm -rf "$OUT"; mkdir -p "$OUT/poses"
mapfile -t src < <(ls "$POSES" | sort)
for ((i = 0; i < FRAMES; i++)); do
  cp "$POSES/${src[$((i % ${#src[@]}))]}" "$OUT/poses/$(printf 'mesh.%04d.png' $((i + 1)))"
done
render() { # out, log, more flags
  local out=$1 log=$2; shift 2
  # shellcheck disable=SC2086
  "$ANCHOR" render --model "$MODEL" --poses "$OUT/poses" --appearance examples/appearance.png \
    --out "$out" --progress none $EXTRA "$@" >"$log" 2>&1
}
calls() { sed -n 's/.*: \([0-9]*\) network calls.*/\1/p' "$1"; }
t0=$(date +%s%N)
render "$OUT/single" "$OUT/single.log"
single_s=$(( ($(date +%s%N) - t0) / 1000000 ))
single=$(calls "$OUT/single.log")
echo "| frames | processes | calls per process | total calls | total / single | largest / single | wall (s) | identical |"
echo "|---|---|---|---|---|---|---|---|"
echo "| $FRAMES | 1 | $single | $single | 1.00 | 1.00 | $((single_s / 1000)) | yes |"
for k in $PROCS; do
  rm -rf "$OUT/shared-$k" "$OUT/farm-$k"
  chunk=$(( (FRAMES + k - 1) / k ))
  t0=$(date +%s%N)
  pids=()
  for ((p = 0; p < k; p++)); do
    a=$((p * chunk + 1)); b=$(( (p + 1) * chunk < FRAMES ? (p + 1) * chunk : FRAMES ))
    render "$OUT/farm-$k" "$OUT/farm-$k.$p.log" --frames "$a-$b" --shared-cache "$OUT/shared-$k" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  wall=$(( ($(date +%s%N) - t0) / 1000000 ))
  per=(); total=0; most=0
  for ((p = 0; p < k; p++)); do
    c=$(calls "$OUT/farm-$k.$p.log"); per+=("$c"); total=$((total + c)); ((c > most)) && most=$c
  done
  same=yes
  for f in "$OUT/single"/*.png; do cmp -s "$f" "$OUT/farm-$k/$(basename "$f")" || same=no; done
  ratio=$(awk "BEGIN{printf \"%.2f\", $total/$single}")
  share=$(awk "BEGIN{printf \"%.2f\", $most/$single}")
  echo "| $FRAMES | $k | ${per[*]} | $total | $ratio | $share | $((wall / 1000)) | $same |"
done
