#!/usr/bin/env python3
"""Compare `nanofuse tune` runs of two or more binaries made in one call (an A/B test).

Each argument is LABEL=FILE, FILE holding the output of one or more `nanofuse tune` runs of
one binary (appended). For every shape, M and variant the script prints each label's median
time over its runs (and the runs' spread, min-max) and the ratio of each label's median to
the first label's. Run the binaries interleaved in one call (A B A B ...) so that clock and
temperature drift falls on both.

    python3 scripts/ab_tune.py base=tune_base.txt new=tune_new.txt [--variant wgmma]
"""

import argparse
import collections
import re
import statistics
import sys

# "Llama-3-70B    2048 wgmma packed     583.18   ..." : shape, M, variant, µs.
ROW = re.compile(r"^(\S+)\s+(\d+) (.+?)\s{2,}([\d.]+)\s")


def parse(path):
    """{(shape, m, variant): [µs per run]} from appended tune outputs."""
    times = collections.defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = ROW.match(line)
            if m:
                times[(m.group(1), int(m.group(2)), m.group(3).strip())].append(float(m.group(4)))
    return times


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="LABEL=FILE")
    ap.add_argument("--variant", default="", help="only variants containing this text")
    args = ap.parse_args(argv)
    labels, data = [], {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            ap.error(f"expected LABEL=FILE, got {spec!r}")
        labels.append(label)
        try:
            data[label] = parse(path)
        except OSError as e:
            ap.error(f"{label}: {e}")
    keys = [k for k in data[labels[0]] if args.variant in k[2]]
    if not keys:
        print(f"no rows in {args.runs[0]} match --variant {args.variant!r}", file=sys.stderr)
        return 1
    head = ["shape", "M", "variant"] + [f"{lb} µs (min-max)" for lb in labels] + [f"{lb} / {labels[0]}" for lb in labels[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in keys:
        meds, cells = [], []
        for lb in labels:
            t = data[lb].get(key, [])
            if t:
                meds.append(statistics.median(t))
                cells.append(f"{meds[-1]:.2f} ({min(t):.2f}-{max(t):.2f})")
            else:
                meds.append(None)
                cells.append("—")
        ratios = [f"{m / meds[0]:.3f}" if m is not None and meds[0] else "—" for m in meds[1:]]
        print("| " + " | ".join([key[0], str(key[1]), key[2]] + cells + ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
