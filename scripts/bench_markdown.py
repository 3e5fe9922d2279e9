#!/usr/bin/env python3
"""Turns `ipckit bench --json` output (JSON lines on stdin) into the Markdown table the README
shows: one row per mechanism and case, with the ratio to the baseline measured in the same run.

    cargo run --release -- bench --quick --json | python3 scripts/bench_markdown.py
"""
import json
import sys
from collections import OrderedDict


def fmt(value, unit):
    if unit == "ns":
        if value >= 1e6:
            return f"{value / 1e6:.2f} ms"
        if value >= 1e3:
            return f"{value / 1e3:.2f} µs"
        return f"{value:.0f} ns"
    if unit == "MiB/s":
        return f"{value:,.0f} MiB/s"
    return f"{value:,.0f} {unit}"


def main():
    rows = OrderedDict()
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        key = (r["mechanism"], r["case"])
        rows.setdefault(key, {})[r["metric"]] = r
    print("| mechanism | case | median | p99 | throughput / rate | vs baseline (same run) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (mech, case), m in rows.items():
        med = m.get("median")
        p99 = m.get("p99")
        thr = m.get("throughput") or m.get("rate")
        main_metric = med or thr
        ratio = ""
        # A baseline without a matching case (ratio null) shows no ratio.
        if main_metric and main_metric.get("baseline") and main_metric.get("ratio") is not None:
            ratio = f"{main_metric['ratio']:.2f}× {main_metric['baseline']}"
        print(
            "| {} | {} | {} | {} | {} | {} |".format(
                mech,
                case,
                fmt(med["value"], med["unit"]) if med else "",
                fmt(p99["value"], p99["unit"]) if p99 else "",
                fmt(thr["value"], thr["unit"]) if thr else "",
                ratio,
            )
        )


if __name__ == "__main__":
    main()
