//! The table of benchmarks, and how filters select from it.
//!
//! # Adding a benchmark
//!
//! 1. Give the mechanism a [`Channel`](crate::Channel) (send one message,
//!    receive one message of a known size) and a [`Transport`](crate::Transport)
//!    (how the harness creates the rendezvous and starts the peer with
//!    [`Launcher::spawn`](crate::Launcher::spawn), and how the peer connects
//!    from [`PeerEnv::addr`](crate::PeerEnv::addr)), on a unit struct. For
//!    example an ipckit named pipe: the harness creates the server end under
//!    a unique name, passes the name, and waits for the client with
//!    [`Launcher::wait_for`](crate::Launcher::wait_for).
//! 2. Append a [`Bench`] to [`BENCHES`], after its baseline:
//!
//!    ```text
//!    Bench {
//!        name: "ipckit-named-pipe",
//!        group: Group::Ipckit,
//!        baseline: Some("unix-stream"),
//!        about: "ipckit named pipe (byte mode) between two processes",
//!        kind: Kind::TwoProcess(&NamedPipeBench { byte: false }),
//!    },
//!    ```
//!
//! That is all: placements, warm-up and rounds, peer management, the table,
//! the JSON lines and the ratios follow. A single-process benchmark uses
//! [`Kind::Local`] with a function returning its
//! [`Measurement`]s instead.
//!
//! # Baselines and ratios
//!
//! A benchmark with `baseline: Some(b)` gets, for each of its records, the
//! record of `b` with the same `case` and `metric` from the same run, and
//! `ratio = value / baseline value`. The ratio is always that quotient,
//! whatever the unit: for `ns` (latency) lower is better, so a ratio below 1
//! means faster than the baseline; for `MiB/s` and `msg/s` higher is better,
//! so a ratio above 1 means faster. Selecting a benchmark also selects its
//! baseline, and benchmarks run in table order, so baselines run first.

use std::fmt;
use std::io;

use crate::channel::{ErasedTransport, Measurement};
use crate::params::Params;
use crate::{ipckit_broker, raw};

/// Which family a benchmark belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// A raw OS mechanism with no library in between (the baselines).
    Raw,
    /// An ipckit mechanism.
    Ipckit,
    /// Another crate's mechanism, for comparison.
    PeerCrate,
}

impl Group {
    /// `raw`, `ipckit` or `peer-crate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Raw => "raw",
            Group::Ipckit => "ipckit",
            Group::PeerCrate => "peer-crate",
        }
    }
}

/// How a benchmark runs.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Between the harness and a peer process, once per CPU placement, with
    /// the generic round-trip and streaming drivers.
    TwoProcess(&'static dyn ErasedTransport),
    /// Inside the harness (pinned to its first CPU); the function returns
    /// complete measurements.
    Local(fn(&Params) -> io::Result<Vec<Measurement>>),
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::TwoProcess(_) => "TwoProcess",
            Kind::Local(_) => "Local",
        })
    }
}

/// One entry of the benchmark table.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// Unique name: the record's `mechanism`, the filter and peer-role name.
    pub name: &'static str,
    /// Family.
    pub group: Group,
    /// Name of the benchmark this one is compared with, if any.
    pub baseline: Option<&'static str>,
    /// One line on what is measured.
    pub about: &'static str,
    /// How it runs.
    pub kind: Kind,
}

/// Every benchmark, baselines before the benchmarks compared with them.
pub static BENCHES: &[Bench] = &[
    Bench {
        name: "memcpy",
        group: Group::Raw,
        baseline: None,
        about: "single-process copy of the message sizes (ceiling for any copy)",
        kind: Kind::Local(raw::memcpy::run),
    },
    Bench {
        name: "pipe",
        group: Group::Raw,
        baseline: None,
        about: "two anonymous pipes, one per direction",
        kind: Kind::TwoProcess(&raw::pipe::Pipe),
    },
    Bench {
        name: "unix-stream",
        group: Group::Raw,
        baseline: None,
        about: "Unix-domain SOCK_STREAM socket",
        kind: Kind::TwoProcess(&raw::socket::UnixStreamSocket),
    },
    Bench {
        name: "unix-seqpacket",
        group: Group::Raw,
        baseline: None,
        about: "Unix-domain SOCK_SEQPACKET socket",
        kind: Kind::TwoProcess(&raw::socket::UnixSeqpacket),
    },
    Bench {
        name: "unix-dgram",
        group: Group::Raw,
        baseline: None,
        about: "Unix-domain SOCK_DGRAM sockets, a bound one per receiving side (the mailslot floor)",
        kind: Kind::TwoProcess(&raw::dgram::UnixDgram),
    },
    Bench {
        name: "tcp-loopback",
        group: Group::Raw,
        baseline: None,
        about: "TCP over 127.0.0.1 with TCP_NODELAY",
        kind: Kind::TwoProcess(&raw::socket::TcpLoopback),
    },
    Bench {
        name: "shm-futex",
        group: Group::Raw,
        baseline: None,
        about: "shared-memory rings, futex sleep/wake",
        kind: Kind::TwoProcess(&raw::shm::ShmFutex),
    },
    Bench {
        name: "shm-spin",
        group: Group::Raw,
        baseline: None,
        about: "shared-memory rings, busy-polled (sched_yield every 256 polls)",
        kind: Kind::TwoProcess(&raw::shm::ShmSpin),
    },
    Bench {
        name: "shm-spinpark",
        group: Group::Raw,
        baseline: None,
        about: "shared-memory rings, spin 400 polls then futex sleep (adaptive floor)",
        kind: Kind::TwoProcess(&raw::shm::ShmSpinPark),
    },
    Bench {
        name: "atomic-cas",
        group: Group::Raw,
        baseline: None,
        about: "compare-exchange pair (0->1, 1->0) on a shared word: the floor of a lock",
        kind: Kind::Local(crate::ipckit_sync::atomic_cas),
    },
    Bench {
        name: "pthread-robust",
        group: Group::Raw,
        baseline: None,
        about: "process-shared robust pthread mutex, uncontended lock + unlock",
        kind: Kind::Local(crate::ipckit_sync::pthread_robust),
    },
    Bench {
        name: "pthread-robust-contended",
        group: Group::Raw,
        baseline: None,
        about: "two processes taking turns on a process-shared robust pthread mutex",
        kind: Kind::TwoProcess(&crate::ipckit_sync::PthreadContended),
    },
    Bench {
        name: "ipckit-mutex",
        group: Group::Ipckit,
        baseline: Some("atomic-cas"),
        about: "named mutex, uncontended WaitForSingleObject + ReleaseMutex",
        kind: Kind::Local(crate::ipckit_sync::mutex_uncontended),
    },
    Bench {
        name: "ipckit-mutex-contended",
        group: Group::Ipckit,
        baseline: Some("pthread-robust-contended"),
        about: "two processes taking turns on a named mutex",
        kind: Kind::TwoProcess(&crate::ipckit_sync::MutexContended),
    },
    Bench {
        name: "ipckit-event",
        group: Group::Ipckit,
        baseline: Some("shm-futex"),
        about: "named file mapping + auto-reset events (SetEvent -> wake)",
        kind: Kind::TwoProcess(&crate::ipckit_sync::EVENT_CHANNEL),
    },
    Bench {
        name: "ipckit-semaphore",
        group: Group::Ipckit,
        baseline: Some("shm-futex"),
        about: "named file mapping + semaphores (ReleaseSemaphore -> wake)",
        kind: Kind::TwoProcess(&crate::ipckit_sync::SEMAPHORE_CHANNEL),
    },
    Bench {
        name: "iceoryx2",
        group: Group::PeerCrate,
        baseline: Some("shm-spin"),
        about: "iceoryx2 publish-subscribe, loaned samples, busy-polled (two services)",
        kind: Kind::TwoProcess(&crate::iox2::Iceoryx2),
    },
    Bench {
        name: "ipckit-chan-spin",
        group: Group::Ipckit,
        baseline: Some("shm-spin"),
        about: "shared-memory channel pair, busy-polling (WaitMode::BusyPoll); rtt-zc: zero copy",
        kind: Kind::TwoProcess(&crate::ipckit_chan::CHAN_SPIN),
    },
    Bench {
        name: "ipckit-chan",
        group: Group::Ipckit,
        baseline: Some("shm-spinpark"),
        about: "shared-memory channel pair, adaptive spin then futex sleep (WaitMode::Adaptive)",
        kind: Kind::TwoProcess(&crate::ipckit_chan::CHAN_ADAPTIVE),
    },
    Bench {
        name: "ipckit-chan-sleep",
        group: Group::Ipckit,
        baseline: Some("shm-futex"),
        about: "shared-memory channel pair, futex sleep at once (WaitMode::Sleep)",
        kind: Kind::TwoProcess(&crate::ipckit_chan::CHAN_SLEEP),
    },
    Bench {
        name: "ipckit-pipe",
        group: Group::Ipckit,
        baseline: Some("unix-stream"),
        about: "named pipe, message mode (CreateNamedPipe / CreateFile, one WriteFile / ReadFile per message)",
        kind: Kind::TwoProcess(&crate::ipckit_pipe::MESSAGE),
    },
    Bench {
        name: "ipckit-pipe-byte",
        group: Group::Ipckit,
        baseline: Some("unix-stream"),
        about: "named pipe, byte mode (PIPE_TYPE_BYTE; a read takes what has arrived)",
        kind: Kind::TwoProcess(&crate::ipckit_pipe::BYTE),
    },
    Bench {
        name: "interprocess",
        group: Group::PeerCrate,
        baseline: Some("unix-stream"),
        about: "interprocess crate local socket (file-path name), byte stream, next to ipckit-pipe",
        kind: Kind::TwoProcess(&crate::interprocess_sock::LocalSocketBench),
    },
    Bench {
        name: "ipckit-mailslot",
        group: Group::Ipckit,
        baseline: Some("unix-dgram"),
        about: "mailslots, one per process (WriteFile to the other's, ReadFile from one's own); stream: one way",
        kind: Kind::TwoProcess(&crate::ipckit_mailslot::MailslotBench),
    },
    Bench {
        name: "rpc-unix-stream",
        group: Group::Raw,
        baseline: None,
        about: "RPC floor: 16-byte header + argument over a Unix stream socket, 8-byte answer (rpc module)",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc::RawUnix)),
    },
    Bench {
        name: "rpc-tcp-loopback",
        group: Group::Raw,
        baseline: None,
        about: "RPC floor over TCP on 127.0.0.1 (TCP_NODELAY)",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc::RawTcp)),
    },
    Bench {
        name: "ipckit-rpc-ncalrpc",
        group: Group::Ipckit,
        baseline: Some("rpc-unix-stream"),
        about: "ipckit RPC over ncalrpc (shared memory): null call, 1 MiB argument (typed #[interface] client)",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_ipckit::IpckitRpc(
            crate::rpc_ipckit::Carrier::Local,
        ))),
    },
    Bench {
        name: "ipckit-rpc-ncalrpc-socket",
        group: Group::Ipckit,
        baseline: Some("rpc-unix-stream"),
        about: "ipckit RPC over ncalrpc kept on its Unix socket (local_shared_memory(false))",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_ipckit::IpckitRpc(
            crate::rpc_ipckit::Carrier::LocalSocket,
        ))),
    },
    Bench {
        name: "ipckit-rpc-ncalrpc-async",
        group: Group::Ipckit,
        baseline: Some("rpc-unix-stream"),
        about: "ipckit RPC over ncalrpc with the async client and async fn methods (tokio)",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_ipckit::IpckitRpc(
            crate::rpc_ipckit::Carrier::LocalAsync,
        ))),
    },
    Bench {
        name: "ipckit-rpc-np",
        group: Group::Ipckit,
        baseline: Some("rpc-unix-stream"),
        about: "ipckit RPC over ncacn_np (ipckit named pipes)",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_ipckit::IpckitRpc(
            crate::rpc_ipckit::Carrier::NamedPipe,
        ))),
    },
    Bench {
        name: "ipckit-rpc-tcp",
        group: Group::Ipckit,
        baseline: Some("rpc-tcp-loopback"),
        about: "ipckit RPC over ncacn_ip_tcp on 127.0.0.1",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_ipckit::IpckitRpc(
            crate::rpc_ipckit::Carrier::Tcp,
        ))),
    },
    Bench {
        name: "tarpc-unix",
        group: Group::PeerCrate,
        baseline: Some("rpc-unix-stream"),
        about: "tarpc (serde transport, bincode) over a Unix socket, beside ipckit-rpc-ncalrpc",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_tarpc::Tarpc(
            crate::rpc_tarpc::Carrier::Unix,
        ))),
    },
    Bench {
        name: "tarpc-tcp",
        group: Group::PeerCrate,
        baseline: Some("rpc-tcp-loopback"),
        about: "tarpc (serde transport, bincode) over TCP loopback, beside ipckit-rpc-tcp",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_tarpc::Tarpc(
            crate::rpc_tarpc::Carrier::Tcp,
        ))),
    },
    Bench {
        name: "tonic-unix",
        group: Group::PeerCrate,
        baseline: Some("rpc-unix-stream"),
        about: "tonic gRPC (HTTP/2, prost messages, no protoc) over a Unix socket",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_tonic::Tonic(
            crate::rpc_tonic::Carrier::Unix,
        ))),
    },
    Bench {
        name: "tonic-tcp",
        group: Group::PeerCrate,
        baseline: Some("rpc-tcp-loopback"),
        about: "tonic gRPC (HTTP/2, prost messages, no protoc) over TCP loopback",
        kind: Kind::TwoProcess(&crate::rpc::Rpc(crate::rpc_tonic::Tonic(
            crate::rpc_tonic::Carrier::Tcp,
        ))),
    },
    Bench {
        name: "ipckit-broker",
        group: Group::Ipckit,
        // No case in common (so no ratio): its round trip is the floor of a broker call.
        baseline: Some("unix-stream"),
        about: "session broker in a child process: register + unregister, lookup, list of 10,000 live entries",
        kind: Kind::Local(ipckit_broker::run),
    },
];

/// Every benchmark, in run order.
pub fn benches() -> &'static [Bench] {
    BENCHES
}

/// The benchmark called `name`.
pub fn find(name: &str) -> Option<&'static Bench> {
    BENCHES.iter().find(|b| b.name == name)
}

/// Whether `filter` selects the benchmark `name`: equal, or a prefix ending
/// at a `-` boundary (`shm` selects `shm-futex` and `shm-spin`, `unix`
/// both Unix sockets).
pub fn matches(filter: &str, name: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// The benchmarks selected by `filters` (all when empty) plus their
/// baselines, in table order. A filter that selects nothing is an
/// [`io::ErrorKind::InvalidInput`] error listing the valid names.
pub fn select(filters: &[String]) -> io::Result<Vec<&'static Bench>> {
    let unknown: Vec<&str> = filters
        .iter()
        .map(String::as_str)
        .filter(|f| !BENCHES.iter().any(|b| matches(f, b.name)))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unknown mechanism {}; valid names (or `-`-prefixes such as `shm`): {}",
                unknown
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                names.join(", ")
            ),
        ));
    }
    let mut wanted: Vec<bool> = BENCHES
        .iter()
        .map(|b| filters.is_empty() || filters.iter().any(|f| matches(f, b.name)))
        .collect();
    // Pull in baselines (transitively; they precede their dependents).
    for i in (0..BENCHES.len()).rev() {
        if wanted[i]
            && let Some(base) = BENCHES[i].baseline
            && let Some(j) = BENCHES.iter().position(|b| b.name == base)
        {
            wanted[j] = true;
        }
    }
    Ok(BENCHES
        .iter()
        .zip(wanted)
        .filter_map(|(b, w)| w.then_some(b))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_baselines_precede() {
        for (i, b) in BENCHES.iter().enumerate() {
            assert!(
                BENCHES[..i].iter().all(|o| o.name != b.name),
                "duplicate {}",
                b.name
            );
            if let Some(base) = b.baseline {
                assert!(
                    BENCHES[..i].iter().any(|o| o.name == base),
                    "baseline `{base}` of `{}` must come earlier",
                    b.name
                );
            }
            assert_eq!(b.group == Group::Raw, b.baseline.is_none(), "{}", b.name);
        }
    }

    #[test]
    fn filters() {
        let names = |f: &[&str]| -> Vec<&str> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            select(&f).unwrap().iter().map(|b| b.name).collect()
        };
        assert_eq!(names(&[]).len(), BENCHES.len());
        assert_eq!(names(&["shm"]), ["shm-futex", "shm-spin", "shm-spinpark"]);
        assert_eq!(
            names(&["unix"]),
            ["unix-stream", "unix-seqpacket", "unix-dgram"]
        );
        assert_eq!(names(&["pipe", "memcpy"]), ["memcpy", "pipe"]);
        assert_eq!(names(&["shm-spin"]), ["shm-spin"]);
        let err = select(&["sh".to_owned()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("unix-seqpacket"));
    }
}
