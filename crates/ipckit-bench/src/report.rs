//! Turning measurements into records, ratios, table rows and JSON lines.

use std::collections::HashMap;
use std::io::{self, Write};

use indicatif::ProgressBar;

use crate::Record;
use crate::affinity::Placement;
use crate::channel::Measurement;
use crate::params::Params;
use crate::raw::shm::SPINS_BEFORE_YIELD;
use crate::registry::Bench;

/// Writes records as they come: table rows or JSON lines.
pub(crate) struct Reporter<'a> {
    out: &'a mut dyn Write,
    json: bool,
    bar: &'a ProgressBar,
    /// `(mechanism, case, metric)` → value, for the ratios.
    seen: HashMap<(String, String, String), f64>,
}

const COLS: [usize; 6] = [15, 24, 10, 10, 16, 0];

impl<'a> Reporter<'a> {
    pub(crate) fn new(out: &'a mut dyn Write, json: bool, bar: &'a ProgressBar) -> Self {
        Self {
            out,
            json,
            bar,
            seen: HashMap::new(),
        }
    }

    /// The notes and column titles of the table (nothing in JSON mode).
    pub(crate) fn header(&mut self, params: &Params, placements: &[Placement]) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let places: Vec<String> = placements
            .iter()
            .map(|p| format!("{} (CPUs {}+{})", p.label, p.parent_cpu, p.peer_cpu))
            .collect();
        let text = format!(
            "# ipckit-bench, {mode} mode; placements: {places}\n\
             # rtt: median and p99 of all round trips of {rr} rounds after a warm-up; \
             stream: median of {sr} rounds, one-way, acknowledged per round\n\
             # MiB/s counts payload (2^20 bytes); shm-spin spins {spins} polls, then sched_yield()\n\
             # ratio = value / baseline value (ns: below 1 is faster; MiB/s, msg/s: above 1 is faster)\n\
             {header}\n",
            mode = params.mode,
            places = places.join(", "),
            rr = params.rtt_rounds,
            sr = params.stream_rounds,
            spins = SPINS_BEFORE_YIELD,
            header = row(&[
                "mechanism",
                "case",
                "median",
                "p99",
                "throughput",
                "vs baseline"
            ]),
        );
        self.write(&text)
    }

    /// Names, compares and prints the measurements of one benchmark run.
    pub(crate) fn emit(&mut self, bench: &Bench, ms: Vec<Measurement>) -> io::Result<Vec<Record>> {
        let mut records = Vec::with_capacity(ms.len());
        for m in ms {
            if !m.value.is_finite() {
                return Err(io::Error::other(format!(
                    "{} {} {}: non-finite value",
                    bench.name, m.case, m.metric
                )));
            }
            let ratio = bench.baseline.and_then(|b| {
                self.seen
                    .get(&(b.to_owned(), m.case.clone(), m.metric.to_owned()))
                    .filter(|v| **v > 0.0)
                    .map(|v| m.value / v)
            });
            self.seen.insert(
                (bench.name.to_owned(), m.case.clone(), m.metric.to_owned()),
                m.value,
            );
            records.push(Record {
                mechanism: bench.name.to_owned(),
                case: m.case,
                metric: m.metric.to_owned(),
                value: m.value,
                unit: m.unit.to_owned(),
                baseline: bench.baseline.map(str::to_owned),
                ratio,
            });
        }
        let mut text = String::new();
        if self.json {
            for r in &records {
                let line = serde_json::to_string(r).map_err(io::Error::other)?;
                text.push_str(&line);
                text.push('\n');
            }
        } else {
            // One row per case, in order of first appearance.
            let mut start = 0;
            while start < records.len() {
                let case = &records[start].case;
                let end = records[start..]
                    .iter()
                    .position(|r| &r.case != case)
                    .map_or(records.len(), |n| start + n);
                text.push_str(&table_row(&records[start..end]));
                text.push('\n');
                start = end;
            }
        }
        self.write(&text)?;
        Ok(records)
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        let out = &mut *self.out;
        self.bar.suspend(|| {
            out.write_all(text.as_bytes())?;
            out.flush()
        })
    }
}

fn row(cells: &[&str]) -> String {
    let mut s = String::new();
    for (i, (cell, width)) in cells.iter().zip(COLS).enumerate() {
        if i < 2 {
            s.push_str(&format!("{cell:<width$} "));
        } else if i < 5 {
            s.push_str(&format!("{cell:>width$} "));
        } else {
            s.push_str(&format!(" {cell}"));
        }
    }
    s.trim_end().to_owned()
}

/// `mechanism case median p99 throughput ratio` for the records of a case.
fn table_row(records: &[Record]) -> String {
    let get = |metric: &str| records.iter().find(|r| r.metric == metric);
    let median = get("median").map(|r| fmt_ns(r.value)).unwrap_or_default();
    let p99 = get("p99").map(|r| fmt_ns(r.value)).unwrap_or_default();
    let flow = get("throughput")
        .or_else(|| get("rate"))
        .map(|r| format!("{} {}", group_digits(r.value), r.unit))
        .unwrap_or_default();
    // The ratio of the headline metric: the median, else the flow metric.
    let ratio = ["median", "throughput", "rate"]
        .iter()
        .find_map(|m| get(m).and_then(|r| Some((r.ratio?, r.baseline.as_deref()?))))
        .map(|(ratio, base)| format!("{ratio:.2}x {base}"))
        .unwrap_or_default();
    let first = &records[0];
    row(&[&first.mechanism, &first.case, &median, &p99, &flow, &ratio])
}

/// `2.15 ns`, `812 ns`, `8.12 µs`, `1.20 ms`.
fn fmt_ns(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.2} ns")
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

/// Rounds to an integer and separates thousands with commas.
fn group_digits(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_ns(2.154), "2.15 ns");
        assert_eq!(fmt_ns(812.4), "812 ns");
        assert_eq!(fmt_ns(8123.0), "8.12 µs");
        assert_eq!(fmt_ns(1_200_000.0), "1.20 ms");
        assert_eq!(group_digits(0.4), "0");
        assert_eq!(group_digits(999.0), "999");
        assert_eq!(group_digits(1234.0), "1,234");
        assert_eq!(group_digits(1_234_567.6), "1,234,568");
    }

    #[test]
    fn ratios_come_from_the_baseline_of_the_same_case() {
        use crate::registry::{Group, Kind};
        let base = Bench {
            name: "unix-stream",
            group: Group::Raw,
            baseline: None,
            about: "",
            kind: Kind::Local(|_| Ok(Vec::new())),
        };
        let lib = Bench {
            name: "ipckit-x",
            group: Group::Ipckit,
            baseline: Some("unix-stream"),
            ..base
        };
        let m =
            |case: &str, metric, value, unit| Measurement::new(case.into(), metric, value, unit);
        let bar = ProgressBar::hidden();
        let mut out = Vec::new();
        let mut rep = Reporter::new(&mut out, true, &bar);
        rep.emit(
            &base,
            vec![
                m("rtt-64B/same-core", "median", 1000.0, "ns"),
                m("stream-64KiB/same-core", "throughput", 2000.0, "MiB/s"),
            ],
        )
        .unwrap();
        let recs = rep
            .emit(
                &lib,
                vec![
                    m("rtt-64B/same-core", "median", 1500.0, "ns"),
                    m("stream-64KiB/same-core", "throughput", 3000.0, "MiB/s"),
                    m("rtt-64B/cross-core", "median", 900.0, "ns"),
                ],
            )
            .unwrap();
        assert_eq!(recs[0].ratio, Some(1.5));
        assert_eq!(recs[1].ratio, Some(1.5));
        assert_eq!(recs[2].ratio, None);
        assert_eq!(recs[2].baseline.as_deref(), Some("unix-stream"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["baseline"], serde_json::Value::Null);
        assert_eq!(first["value"], serde_json::json!(1000.0));
    }
}
