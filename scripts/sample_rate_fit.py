#!/usr/bin/env python3
"""Fits saturated throughput against the tracing sample rate, from the per-run lines that
scripts/rotate.sh prints (save its output to a file first).

At 1% the cost of tracing is of the order of this machine's run-to-run noise; at 5-10% it
is several times larger. Within each clean round every traced arm's throughput is divided
by the untraced arm's (BASE, rate 0), and a least-squares line through rate -> ratio gives
the cost per percent traced (its slope) and any cost of tracing being on at all (its
intercept below 1). Standard errors come from resampling the clean rounds (bootstrap).

    scripts/rotate.sh 25 on off "twophase demo --quiet --duration 6s --no-metrics" \\
        on "twophase demo --quiet --duration 6s" \\
        t1 "twophase demo --quiet --duration 6s --trace-sample 0.01" \\
        t5 "twophase demo --quiet --duration 6s --trace-sample 0.05" \\
        t10 "twophase demo --quiet --duration 6s --trace-sample 0.1" | tee runs.txt
    scripts/sample_rate_fit.py runs.txt --base on --off off t1=0.01 t5=0.05 t10=0.1

A round is clean when every arm in it ran and none had more than --steal-max ticks stolen.
The line is fitted over every LABEL=RATE given; --predict (default 0.01) says where to read
it, beside that rate's own arm when there is one.
"""
import argparse
import collections
import random
import statistics


def parse_arm(text):
    label, _, rate = text.partition("=")
    if not label or not rate:
        raise argparse.ArgumentTypeError(f"{text}: expected LABEL=RATE")
    return label, float(rate)


def read_rounds(path):
    rounds = collections.defaultdict(dict)
    for line in open(path):
        fields = line.split()
        if len(fields) != 4 or not fields[0].isdigit() or not fields[3].startswith("steal="):
            continue
        number, label, throughput, steal = fields
        rounds[number][label] = (None if throughput == "FAIL" else float(throughput), int(steal[len("steal="):]))
    return rounds


def estimate(rounds, base, off, arms, predict):
    """(intercept, slope per unit rate, fitted at `predict`, measured at `predict` / base,
    base / off) over `rounds`."""
    xs, ys = [], []
    for arms_of_round in rounds:
        xs.append(0.0)
        ys.append(1.0)
        for label, rate in arms:
            xs.append(rate)
            ys.append(arms_of_round[label][0] / arms_of_round[base][0])
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    intercept = mean_y - slope * mean_x
    at_rate = [label for label, rate in arms if rate == predict]
    measured = (
        statistics.mean(r[at_rate[0]][0] / r[base][0] for r in rounds) if at_rate else float("nan")
    )
    base_over_off = statistics.mean(r[base][0] / r[off][0] for r in rounds) if off else float("nan")
    return intercept, slope, intercept + slope * predict, measured, base_over_off


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="rotate.sh's output")
    parser.add_argument("arms", nargs="+", type=parse_arm, help="LABEL=RATE of each traced arm")
    parser.add_argument("--base", required=True, help="label of the untraced arm (rate 0)")
    parser.add_argument("--off", help="label of the arm with metrics off, to give ratios against it too")
    parser.add_argument("--predict", type=float, default=0.01, help="rate to read the line at")
    parser.add_argument("--steal-max", type=int, default=20, help="ticks of steal a clean run may have")
    args = parser.parse_args()

    needed = {args.base, *(label for label, _ in args.arms), *([args.off] if args.off else [])}
    rounds = read_rounds(args.runs)
    clean = [
        arms for arms in rounds.values()
        if needed <= arms.keys() and all(tp is not None and steal <= args.steal_max for tp, steal in arms.values())
    ]
    print(f"{len(clean)} of {len(rounds)} rounds clean (every arm ran, none with more than {args.steal_max} ticks of steal)")
    if len(clean) < 3:
        raise SystemExit("too few clean rounds to fit")
    found = estimate(clean, args.base, args.off, args.arms, args.predict)
    random.seed(1)
    resampled = [
        estimate([random.choice(clean) for _ in clean], args.base, args.off, args.arms, args.predict)
        for _ in range(2000)
    ]

    def show(name, index, scale=1.0):
        values = [sample[index] * scale for sample in resampled]
        print(f"{name:34s} {found[index] * scale:7.4f}  (se {statistics.stdev(values):.4f})")

    percent = args.predict * 100
    show("intercept (rate 0)", 0)
    show("slope, per 1% traced", 1, 0.01)
    show(f"line at {percent:g}% / {args.base}", 2)
    has_arm_at_rate = any(rate == args.predict for _, rate in args.arms)
    if has_arm_at_rate:
        show(f"measured {percent:g}% / {args.base}", 3)
    if args.off:
        show(f"{args.base} / {args.off}", 4)
        line_off = [s[2] * s[4] for s in resampled]
        measured_off = [s[3] * s[4] for s in resampled]
        print(f"{f'line at {percent:g}% / {args.off}':34s} {found[2] * found[4]:7.4f}  (se {statistics.stdev(line_off):.4f})")
        if has_arm_at_rate:
            print(f"{f'measured {percent:g}% / {args.off}':34s} {found[3] * found[4]:7.4f}  (se {statistics.stdev(measured_off):.4f})")


if __name__ == "__main__":
    main()
