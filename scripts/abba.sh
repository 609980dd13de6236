#!/usr/bin/env bash
# Compares two whole commands that print a load report (`twophase demo`, `twophase bench`)
# in balanced blocks A B B A, so that the machine's drift and the position of a run within a
# block weigh on both sides alike.
#
#   scripts/abba.sh BLOCKS LABEL_A "COMMAND A" LABEL_B "COMMAND B"
#   scripts/abba.sh 6 metrics "twophase demo --quiet --duration 10s" \
#                     traced  "twophase demo --quiet --duration 10s --trace-sample 0.01"
#
# Each run: CPU time of the whole process tree per committed transaction (`perf stat -e
# task-clock`, so perf must be installed) and throughput. At the end: B/A per block and
# their mean and standard deviation. On a shared 2-core VM one block's ratio scatters by
# about ±0.05; six blocks put the mean within about ±0.02.
set -euo pipefail
if [ $# -ne 5 ]; then
  sed -n 2,12p "$0"
  exit 2
fi
blocks=$1 label_a=$2 command_a=$3 label_b=$4 command_b=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # label command
  sleep 2 # let the previous run's processes go
  local out ms committed throughput
  out=$(perf stat -x, -e task-clock -o "$work/stat" $2 2>&1)
  ms=$(grep task-clock "$work/stat" | cut -d, -f1)
  committed=$(echo "$out" | grep -E '^committed' | awk '{print $2}')
  throughput=$(echo "$out" | grep -E '^committed' | grep -o 'throughput [0-9]*' | awk '{print $2}')
  if [ -z "$committed" ]; then
    echo "no load report from: $2" >&2
    echo "$out" | tail -5 >&2
    exit 1
  fi
  echo "$1 $(python3 -c "print(round($ms * 1000 / $committed, 2))") $throughput"
}

for block in $(seq 1 "$blocks"); do
  for side in A B B A; do
    if [ "$side" = A ]; then line=$(run "$label_a" "$command_a"); else line=$(run "$label_b" "$command_b"); fi
    echo "block $block $line" | tee -a "$work/runs"
  done
done

python3 - "$label_a" "$label_b" "$work/runs" <<'PY'
import statistics, sys
label_a, label_b, runs = sys.argv[1:]
blocks = {}
for line in open(runs):
    _, block, label, cpu_us, throughput = line.split()
    blocks.setdefault(block, {}).setdefault(label, []).append((float(cpu_us), float(throughput)))
def ratios(index):
    return [statistics.mean(r[index] for r in b[label_b]) / statistics.mean(r[index] for r in b[label_a]) for b in blocks.values()]
for name, index in (("throughput", 1), ("cpu_us_per_tx", 0)):
    values = ratios(index)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"{name} {label_b}/{label_a} per block: {' '.join(f'{v:.3f}' for v in values)}  mean {statistics.mean(values):.3f}  sd {spread:.3f}")
PY
