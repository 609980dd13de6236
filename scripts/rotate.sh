#!/usr/bin/env bash
# Compares several whole commands that print a load report (`twophase demo`, `twophase
# bench`) in rotated rounds: every arm runs once per round, the order turned by one each
# round (and, with three arms or more, reversed every other round), so that the
# machine's drift and a run's place in its round weigh on every arm alike. How
# docs/TRACE_COST.md measures (scripts/sample_rate_fit.py reads this script's output).
#
#   scripts/rotate.sh ROUNDS BASE LABEL "COMMAND" [LABEL "COMMAND"]...
#   scripts/rotate.sh 15 off off "twophase demo --quiet --duration 6s --no-metrics" \
#                            on  "twophase demo --quiet --duration 6s" \
#                            1%  "twophase demo --quiet --duration 6s --trace-sample 0.01"
#
# A command runs under `bash -c` (so `env NAME=VALUE twophase ...` works) at niceness
# $NICE (default -15 as root, else unchanged). Each run's line: round, label, throughput
# and the host's steal time during the run (ticks of /proc/stat, 100 a second per CPU). A
# virtual machine's host can take a large share of the CPU for seconds at a time, so at the
# end only rounds in which no run had more than $STEAL_MAX ticks (default 20) count: per
# arm, its mean throughput and its ratio to arm BASE within the same rounds (mean, standard
# error, median). Needs python3 for the summary.
set -euo pipefail
if [ $# -lt 4 ] || [ $(( ($# - 2) % 2 )) -ne 0 ]; then
  sed -n 2,19p "$0"
  exit 2
fi
rounds=$1 base=$2
shift 2
labels=() commands=()
while [ $# -gt 0 ]; do
  case $1 in
    "" | *[[:space:]]*) echo "label \"$1\": a label is one word" >&2; exit 2 ;;
  esac
  labels+=("$1") commands+=("$2")
  shift 2
done
arms=${#labels[@]}
known=no
for label in "${labels[@]}"; do [ "$label" = "$base" ] && known=yes; done
[ "$known" = yes ] || { echo "no arm is labelled $base" >&2; exit 2; }
steal_max=${STEAL_MAX:-20}
if [ -n "${NICE:-}" ]; then nice=$NICE; elif [ "$(id -u)" = 0 ]; then nice=-15; else nice=0; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT

steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }

for round in $(seq 1 "$rounds"); do
  for turn in $(seq 0 $((arms - 1))); do
    # Turned by one each round; with three arms or more, every other round also reversed
    # (with two, reversing would undo the turn).
    arm=$(( (turn + round - 1) % arms ))
    if [ $((round % 2)) -eq 0 ] && [ "$arms" -gt 2 ]; then arm=$(( arms - 1 - arm )); fi
    sleep 1 # let the previous run's processes go
    before=$(steal_ticks)
    out=$(nice -n "$nice" bash -c "${commands[$arm]}" 2>&1) || true
    steal=$(( $(steal_ticks) - before ))
    throughput=$(echo "$out" | grep -E '^committed' | grep -o 'throughput [0-9]*' | awk '{print $2}' || true)
    echo "$round ${labels[$arm]} ${throughput:-FAIL} steal=$steal" | tee -a "$log"
  done
done

python3 - "$log" "$base" "$steal_max" <<'EOF'
import collections, statistics, sys
log, base, steal_max = sys.argv[1], sys.argv[2], int(sys.argv[3])
rounds = collections.defaultdict(dict)
for line in open(log):
    number, label, throughput, steal = line.split()
    rounds[number][label] = (None if throughput == "FAIL" else float(throughput), int(steal.split("=")[1]))
clean = [arms for arms in rounds.values()
         if all(tp is not None and steal <= steal_max for tp, steal in arms.values())]
print(f"{len(clean)} of {len(rounds)} rounds clean (no run failed or had more than {steal_max} ticks of steal)")
labels = sorted({label for arms in rounds.values() for label in arms})
for label in labels:
    throughputs = [arms[label][0] for arms in clean if label in arms]
    ratios = [arms[label][0] / arms[base][0] for arms in clean if label in arms and base in arms]
    if len(ratios) < 2:
        print(f"{label:>12}  too few clean rounds")
        continue
    se = statistics.stdev(ratios) / len(ratios) ** 0.5
    print(f"{label:>12}  {statistics.mean(throughputs):9.0f} tx/s  / {base}: {statistics.mean(ratios):.3f}"
          f" (se {se:.3f}, median {statistics.median(ratios):.3f}, {len(ratios)} rounds)")
EOF
