//! `memcpy`: the single-process copy ceiling.
//!
//! Copies a message-sized buffer into another one (`copy_from_slice`, i.e.
//! the platform `memcpy`) with both buffers hot in cache, on the harness's
//! first CPU. No IPC mechanism that copies the message even once can beat
//! these numbers, and a "zero-copy" claim should be judged against them.
//!
//! Per-copy latency is measured in batches (64 KiB worth of copies, at
//! least one) so the clock read does not dominate small copies; the median
//! and p99 are those of the batch times divided by the batch length. The
//! throughput is the median over rounds of copied bytes per second.

use std::hint::black_box;
use std::io;
use std::time::Instant;

use crate::channel::Measurement;
use crate::params::{Params, size_label};
use crate::peer::invalid;
use crate::stats::{Summary, median_f64};

const BATCH_BYTES: usize = 64 * 1024;

/// Runs the `memcpy` cases (`copy-<size>`) of the plan.
pub fn run(params: &Params) -> io::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    for &size in &params.copy_sizes {
        let src = vec![0x3Cu8; size];
        let mut dst = vec![0u8; size];
        let batch = (BATCH_BYTES / size.max(1)).max(1);
        let mut samples = Vec::new();
        let mut throughput = Vec::new();
        // Round 0 is the warm-up.
        for round in 0..=params.copy_rounds {
            let start = Instant::now();
            let mut batches = 0u64;
            let elapsed = loop {
                let t0 = Instant::now();
                for _ in 0..batch {
                    dst.copy_from_slice(black_box(&src));
                    black_box(dst.as_mut_slice());
                }
                let t1 = Instant::now();
                batches += 1;
                if round > 0 {
                    samples.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                }
                if params.copy_round.done(batches, t1 - start) {
                    break t1 - start;
                }
            };
            if round > 0 {
                let bytes = batches as f64 * batch as f64 * size as f64;
                throughput.push(bytes / elapsed.as_secs_f64() / (1024.0 * 1024.0));
            }
        }
        let s = Summary::of(&mut samples)
            .ok_or_else(|| invalid("no copy samples"))?
            .scaled_down(batch as f64);
        let case = format!("copy-{}", size_label(size));
        out.push(Measurement::new(case.clone(), "median", s.median, "ns"));
        out.push(Measurement::new(case.clone(), "p99", s.p99, "ns"));
        let t = median_f64(&throughput).ok_or_else(|| invalid("no copy rounds"))?;
        out.push(Measurement::new(case, "throughput", t, "MiB/s"));
    }
    Ok(out)
}
