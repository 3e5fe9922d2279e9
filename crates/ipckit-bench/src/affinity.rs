//! CPU placement of the two processes of a case.
//!
//! The harness pins its measuring thread and the peer process to single CPUs
//! with `sched_setaffinity(2)`:
//!
//! * `same-core`: both on the first CPU the harness may run on. Every
//!   hand-off is a context switch on that CPU.
//! * `cross-core`: the harness on that CPU, the peer on another one, chosen,
//!   when the topology files allow it, outside the first CPU's SMT siblings
//!   (a different physical core). Hand-offs are cross-CPU wake-ups and cache
//!   line transfers.
//!
//! With a single usable CPU only `same-core` is measured.

use std::io;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Where the two processes of a case run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `same-core` or `cross-core`; the suffix of the record's `case`.
    pub label: &'static str,
    /// CPU of the harness's measuring thread.
    pub parent_cpu: usize,
    /// CPU of the peer process.
    pub peer_cpu: usize,
}

/// The CPUs the calling thread may run on, ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The placements to measure given the usable CPUs: `same-core` always,
/// `cross-core` when there are at least two CPUs.
pub fn placements(cpus: &[usize]) -> Vec<Placement> {
    let Some(&first) = cpus.first() else {
        return Vec::new();
    };
    let mut out = vec![Placement {
        label: "same-core",
        parent_cpu: first,
        peer_cpu: first,
    }];
    let siblings = smt_siblings(first);
    let other = cpus
        .iter()
        .copied()
        .find(|c| *c != first && !siblings.contains(c))
        .or_else(|| cpus.iter().copied().find(|c| *c != first));
    if let Some(other) = other {
        out.push(Placement {
            label: "cross-core",
            parent_cpu: first,
            peer_cpu: other,
        });
    }
    out
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is out of range"),
        ));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(())
}

/// Pins the calling thread to one CPU and restores its previous affinity
/// mask when dropped.
#[derive(Debug)]
pub struct PinGuard {
    saved: CpuSet,
}

impl PinGuard {
    /// Pins the calling thread to `cpu`, remembering the current mask.
    pub fn pin(cpu: usize) -> io::Result<Self> {
        let saved = sched_getaffinity(None)?;
        pin_current_thread(cpu)?;
        Ok(Self { saved })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        // Best effort: the mask was valid when it was read.
        let _ = sched_setaffinity(None, &self.saved);
    }
}

/// The SMT siblings of `cpu` (including itself) from sysfs; empty when
/// unknown.
fn smt_siblings(cpu: usize) -> Vec<usize> {
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or_default()
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(
            parse_cpu_list("0-2,8,10-11"),
            Some(vec![0, 1, 2, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn placements_by_cpu_count() {
        assert!(placements(&[]).is_empty());
        let one = placements(&[3]);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].parent_cpu, one[0].peer_cpu), (3, 3));
        let two = placements(&[allowed_cpus().unwrap()[0], usize::MAX]);
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].label, "cross-core");
        assert_ne!(two[1].parent_cpu, two[1].peer_cpu);
    }
}
