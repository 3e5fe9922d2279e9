//! Mutexes, events and semaphores across real processes: abandonment on SIGKILL, recursion and
//! ownership, one waiter per auto-reset set, semaphore counts, waits over several objects,
//! lifetime, and sleeping without burning CPU.
//!
//! Every test runs in its own namespace (the test kit's `IPCKIT_RUNTIME_DIR`), which the parent
//! opens with `Namespace::at(t.namespace())` and every peer gets from the environment.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::mapping::{FileMapping, ViewAccess};
use ipckit::namespace::Namespace;
use ipckit::sync::{
    Event, MAXIMUM_WAIT_OBJECTS, Mutex, Options, Semaphore, WaitStatus, Waitable, wait_all,
    wait_any,
};
use ipckit_testkit::{Peer, RoleCtx, RoleResult, test_case, wait_for};
use proptest::prelude::*;

mod common;
use common::*;

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(10);
/// A wait that is expected to time out.
const SHORT: Duration = Duration::from_millis(100);
/// How long to watch for something that must not happen (an upper bound, not a measurement).
const GRACE: Duration = Duration::from_millis(200);

fn opts_in(ns: &Namespace, name: &str) -> Options {
    Options::named(name).unwrap().namespace(ns.clone())
}

fn ctx_opts(ctx: &RoleCtx, name: &str) -> Options {
    opts_in(&Namespace::at(ctx.namespace()), name)
}

/// A result as text for the control channel: `ok`, `abandoned`, or `KIND:CODE`.
fn outcome<T>(r: ipckit::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("{:?}:{}", e.kind(), e.win32_code()),
    }
}

fn status_text(s: WaitStatus) -> String {
    match s {
        WaitStatus::Signaled => "signaled".into(),
        WaitStatus::Abandoned => "abandoned".into(),
    }
}

fn assert_kind<T: std::fmt::Debug>(r: ipckit::Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: {e}");
            assert_eq!(e.win32_code(), kind.win32_code(), "{what}");
        }
    }
}

/// Best effort, for a thread of this process.
fn settle_thread_asleep(tid: u32) {
    wait_for(Duration::from_secs(2), || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 1..].trim_start().chars().next())
            == Some('S')
    });
}

fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// A peer that runs commands against named objects and answers each with one frame.
///
/// Commands: `lock NAME`, `try-lock NAME` (wait 100 ms, answer, keep it if taken),
/// `unlock NAME`, `set NAME`, `reset NAME`, `post NAME N`, `take NAME` (wait 100 ms),
/// `take-blocking NAME`, `count NAME`.
fn agent(ctx: &mut RoleCtx) -> RoleResult {
    use std::collections::HashMap;
    let mut mutexes: HashMap<String, Mutex> = HashMap::new();
    let mut events: HashMap<String, Event> = HashMap::new();
    let mut sems: HashMap<String, Semaphore> = HashMap::new();
    while let Some(cmd) = ctx.recv_str()? {
        let parts: Vec<&str> = cmd.split(' ').collect();
        let (op, name) = (parts[0], parts.get(1).copied().unwrap_or(""));
        let opts = ctx_opts(ctx, name);
        let answer = match op {
            "lock" | "try-lock" | "unlock" => {
                if !mutexes.contains_key(name) {
                    mutexes.insert(name.to_owned(), Mutex::open(&opts)?);
                }
                let m = &mutexes[name];
                match op {
                    "lock" => outcome(m.wait(Some(T)), status_text),
                    "try-lock" => outcome(m.wait(Some(SHORT)), status_text),
                    _ => outcome(m.release(), |()| "ok".into()),
                }
            }
            "set" | "reset" => {
                if !events.contains_key(name) {
                    events.insert(name.to_owned(), Event::open(&opts)?);
                }
                let e = &events[name];
                if op == "set" {
                    outcome(e.set(), |()| "ok".into())
                } else {
                    outcome(e.reset(), |()| "ok".into())
                }
            }
            "post" | "take" | "take-blocking" | "count" => {
                if !sems.contains_key(name) {
                    sems.insert(name.to_owned(), Semaphore::open(&opts)?);
                }
                let s = &sems[name];
                match op {
                    "post" => outcome(s.release(parts[2].parse()?), |prev| format!("prev {prev}")),
                    "take" => outcome(s.wait(Some(SHORT)), |()| "ok".into()),
                    "take-blocking" => outcome(s.wait(Some(T)), |()| "ok".into()),
                    _ => format!("count {}", s.count_now()),
                }
            }
            other => return Err(format!("unknown command {other:?}").into()),
        };
        ctx.send_str(&answer)?;
    }
    Ok(())
}

/// Sends `cmd` to an agent and returns its answer.
fn ask(peer: &mut Peer, cmd: &str) -> String {
    peer.send_str(cmd).unwrap();
    peer.recv_str_timeout(T).unwrap()
}

/// A role that takes the mutex `arg(0)`, says `owned`, and holds it until killed.
fn hold_mutex(ctx: &mut RoleCtx) -> RoleResult {
    let name = ctx.arg(0).ok_or("no mutex name")?.to_owned();
    let m = Mutex::open(&ctx_opts(ctx, &name))?;
    let s = m.wait(Some(T))?;
    ensure(s == WaitStatus::Signaled, format!("took it {s:?}"))?;
    ctx.send_str("owned")?;
    ctx.recv()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutex

#[test]
fn killed_owner_abandons_the_mutex_to_the_next_waiter() {
    const NAME: &str = r"Local\abandoned";
    let t = test_case!();
    t.role("holder", hold_mutex);

    let ns = ns_of(&t);
    let m = Mutex::create(&opts_in(&ns, NAME), false).unwrap();
    assert!(!m.already_existed());

    // 1. The parent is asleep in a wait when the owner is killed.
    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    assert_eq!(m.owner_pid(), Some(holder.pid()));
    assert_kind(m.wait(Some(SHORT)), ErrorKind::Timeout, "owned by the peer");
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            tx.send(gettid()).unwrap();
            let status = m.wait(Some(T));
            let owner = m.owner_pid();
            let released = m.release();
            let again = m.release();
            (status, owner, released, again)
        });
        settle_thread_asleep(rx.recv().unwrap());
        holder.kill().unwrap();
        let (status, owner, released, again) = waiter.join().unwrap();
        assert_eq!(status.unwrap(), WaitStatus::Abandoned);
        assert_eq!(owner, Some(std::process::id()), "the parent owns it now");
        released.unwrap();
        assert_kind(again, ErrorKind::NotOwner, "second release");
    });
    // The abandonment is reported once: the next wait is an ordinary one.
    assert_eq!(m.wait(Some(T)).unwrap(), WaitStatus::Signaled);
    m.release().unwrap();

    // 2. Nobody waits when the owner is killed; the next wait finds it abandoned.
    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    holder.kill().unwrap();
    assert_eq!(m.wait(Some(T)).unwrap(), WaitStatus::Abandoned);
    assert_eq!(m.owner_pid(), Some(std::process::id()));
    m.release().unwrap();
    // Even a poll (timeout 0) sees it, as WaitForSingleObject(mutex, 0) does.
    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    holder.kill().unwrap();
    assert_eq!(m.wait(Some(Duration::ZERO)).unwrap(), WaitStatus::Abandoned);
    m.release().unwrap();
    {
        let guard = m.lock().unwrap();
        assert!(!guard.was_abandoned());
    }

    // 3. Through wait_any, with the abandoned mutex after an unsignalled event.
    let e = Event::create(&opts_in(&ns, "never-set"), false, false).unwrap();
    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    holder.kill().unwrap();
    assert_eq!(
        wait_any(&[&e, &m], Some(T)).unwrap(),
        (1, WaitStatus::Abandoned)
    );
    m.release().unwrap();
    assert_kind(m.release(), ErrorKind::NotOwner, "release of a free mutex");
}

#[test]
fn mutex_is_recursive_and_only_its_owner_releases_it() {
    const NAME: &str = "recursive";
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    // Created owned: the first level.
    let m = Mutex::create(&opts_in(&ns, NAME), true).unwrap();
    assert_eq!(m.owner_pid(), Some(std::process::id()));
    assert_eq!(m.wait(None).unwrap(), WaitStatus::Signaled);
    assert_eq!(m.wait(Some(SHORT)).unwrap(), WaitStatus::Signaled);

    let mut other = t.spawn("agent").start();
    assert_eq!(ask(&mut other, &format!("unlock {NAME}")), "NotOwner:288");
    assert_eq!(ask(&mut other, &format!("try-lock {NAME}")), "Timeout:258");
    thread::scope(|s| {
        let r = s.spawn(|| m.release()).join().unwrap();
        assert_kind(r, ErrorKind::NotOwner, "release from another thread");
        let r = s.spawn(|| m.wait(Some(SHORT))).join().unwrap();
        assert_kind(r, ErrorKind::Timeout, "wait from another thread");
    });

    m.release().unwrap();
    m.release().unwrap();
    assert_eq!(m.owner_pid(), Some(std::process::id()), "one level left");
    assert_eq!(ask(&mut other, &format!("try-lock {NAME}")), "Timeout:258");
    m.release().unwrap();
    assert_eq!(m.owner_pid(), None);
    assert_kind(m.release(), ErrorKind::NotOwner, "release past the count");

    assert_eq!(ask(&mut other, &format!("try-lock {NAME}")), "signaled");
    assert_eq!(m.owner_pid(), Some(other.pid()));
    assert_kind(
        m.release(),
        ErrorKind::NotOwner,
        "release of the peer's mutex",
    );
    assert_eq!(ask(&mut other, &format!("try-lock {NAME}")), "signaled");
    assert_eq!(ask(&mut other, &format!("unlock {NAME}")), "ok");
    assert_kind(m.wait(Some(SHORT)), ErrorKind::Timeout, "one level left");
    assert_eq!(ask(&mut other, &format!("unlock {NAME}")), "ok");
    assert_eq!(ask(&mut other, &format!("unlock {NAME}")), "NotOwner:288");
    assert_eq!(m.wait(Some(T)).unwrap(), WaitStatus::Signaled);
    m.release().unwrap();

    // A thread that ends while owning it abandons it, also to another process.
    thread::scope(|s| {
        s.spawn(|| assert_eq!(m.wait(Some(T)).unwrap(), WaitStatus::Signaled))
            .join()
            .unwrap();
    });
    assert_eq!(ask(&mut other, &format!("lock {NAME}")), "abandoned");
    assert_eq!(ask(&mut other, &format!("unlock {NAME}")), "ok");
}

#[test]
fn mutex_excludes_other_processes() {
    const NAME: &str = "guard";
    const PEERS: usize = 3;
    const ROUNDS: u64 = 2000;
    let t = test_case!();
    t.role("incrementer", |ctx| {
        let ns = Namespace::at(ctx.namespace());
        let m = Mutex::open(&opts_in(&ns, NAME))?;
        let map = FileMapping::open_in(&ns, "counter", ViewAccess::Write)?;
        let v = map.map_view(ViewAccess::Write, 0, 0)?;
        ctx.expect("go", T)?;
        for _ in 0..ROUNDS {
            let guard = m.lock()?;
            ensure(!guard.was_abandoned(), "abandoned")?;
            // A deliberately non-atomic read-modify-write: only the mutex makes it safe.
            let n: u64 = v.get(0)?;
            ensure(v.get::<u32>(8)? == 0, "another process is inside")?;
            v.set(8, 1u32)?;
            thread::yield_now();
            v.set(8, 0u32)?;
            v.set(0, n + 1)?;
        }
        ctx.send_str("done")?;
        Ok(())
    });

    let ns = ns_of(&t);
    let _m = Mutex::create(&opts_in(&ns, NAME), false).unwrap();
    let (_map, v) = counter_mapping(&ns, "counter");
    let mut peers: Vec<Peer> = (0..PEERS).map(|_| t.spawn("incrementer").start()).collect();
    for p in &mut peers {
        p.send_str("go").unwrap();
    }
    for p in &mut peers {
        p.expect("done", Duration::from_secs(60)).unwrap();
    }
    assert_eq!(v.get::<u64>(0).unwrap(), PEERS as u64 * ROUNDS);
}

// ---------------------------------------------------------------------------------------------
// Events

/// A role that waits once on the event `arg(0)`, then adds one to the counter at offset 0 of
/// the mapping `arg(1)` and reports `woke`.
fn event_waiter(ctx: &mut RoleCtx) -> RoleResult {
    let (event, counter) = (ctx.arg(0).ok_or("args")?, ctx.arg(1).ok_or("args")?);
    let ns = Namespace::at(ctx.namespace());
    let e = Event::open(&opts_in(&ns, event))?;
    let m = FileMapping::open_in(&ns, counter, ViewAccess::Write)?;
    let v = m.map_view(ViewAccess::Write, 0, 0)?;
    ctx.send_str("waiting")?;
    e.wait(Some(T))?;
    v.atomic_u32(0)?
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ctx.send_str("woke")?;
    ctx.recv()?;
    Ok(())
}

fn counter_mapping(ns: &Namespace, name: &str) -> (FileMapping, ipckit::mapping::View) {
    let m = FileMapping::builder()
        .name(name)
        .unwrap()
        .size(4096)
        .namespace(ns.clone())
        .create()
        .unwrap();
    let v = m.map_view(ViewAccess::Write, 0, 0).unwrap();
    (m, v)
}

#[test]
fn auto_reset_event_releases_one_waiter_per_set() {
    const N: u32 = 4;
    let t = test_case!();
    t.role("waiter", event_waiter);

    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "auto"), false, false).unwrap();
    assert!(!e.is_manual_reset());
    let (_m, v) = counter_mapping(&ns, "woken");
    let woken = || {
        v.atomic_u32(0)
            .unwrap()
            .load(std::sync::atomic::Ordering::SeqCst)
    };

    let mut waiters: Vec<Peer> = (0..N)
        .map(|_| t.spawn("waiter").args(["auto", "woken"]).start())
        .collect();
    for w in &mut waiters {
        w.expect("waiting", T).unwrap();
    }
    for w in &waiters {
        settle_asleep(w.pid());
    }
    assert_eq!(woken(), 0);
    for k in 1..=N {
        e.set().unwrap();
        assert!(
            wait_for(T, || woken() >= k),
            "set {k}: no waiter woke ({} woken)",
            woken()
        );
        thread::sleep(GRACE);
        assert_eq!(woken(), k, "set {k} released more than one waiter");
        assert!(!e.is_set(), "the released waiter reset the event");
    }
    for w in &mut waiters {
        w.expect("woke", T).unwrap();
    }

    // With nobody waiting, a set stays until one waiter comes, and that one resets it.
    e.set().unwrap();
    e.set().unwrap();
    assert!(e.is_set());
    e.wait(Some(Duration::ZERO)).unwrap();
    assert!(!e.is_set());
    assert_kind(e.wait(Some(SHORT)), ErrorKind::Timeout, "consumed event");
}

#[test]
fn manual_reset_event_releases_every_waiter_and_stays_set() {
    const N: u32 = 4;
    let t = test_case!();
    t.role("waiter", event_waiter);

    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "manual"), true, false).unwrap();
    assert!(e.is_manual_reset());
    let (_m, v) = counter_mapping(&ns, "woken");
    let woken = || {
        v.atomic_u32(0)
            .unwrap()
            .load(std::sync::atomic::Ordering::SeqCst)
    };

    let mut waiters: Vec<Peer> = (0..N)
        .map(|_| t.spawn("waiter").args(["manual", "woken"]).start())
        .collect();
    for w in &mut waiters {
        w.expect("waiting", T).unwrap();
    }
    for w in &waiters {
        settle_asleep(w.pid());
    }
    assert_eq!(woken(), 0);
    e.set().unwrap();
    assert!(wait_for(T, || woken() == N), "{} of {N} woke", woken());
    for w in &mut waiters {
        w.expect("woke", T).unwrap();
    }
    assert!(e.is_set(), "a manual-reset event stays set");
    // A late waiter in another process passes at once.
    let mut late = t.spawn("waiter").args(["manual", "woken"]).start();
    late.expect("waiting", T).unwrap();
    late.expect("woke", T).unwrap();
    assert_eq!(woken(), N + 1);
    e.wait(Some(Duration::ZERO)).unwrap();
    assert!(e.is_set());

    e.reset().unwrap();
    assert!(!e.is_set());
    assert_kind(e.wait(Some(SHORT)), ErrorKind::Timeout, "after reset");
    let mut blocked = t.spawn("waiter").args(["manual", "woken"]).start();
    blocked.expect("waiting", T).unwrap();
    settle_asleep(blocked.pid());
    thread::sleep(GRACE);
    assert_eq!(woken(), N + 1, "the reset event holds a new waiter");
    e.set().unwrap();
    blocked.expect("woke", T).unwrap();
    assert_eq!(woken(), N + 2);
}

// ---------------------------------------------------------------------------------------------
// Semaphores

#[test]
fn semaphore_counts_across_processes() {
    const NAME: &str = r"Local\slots";
    let t = test_case!();
    t.role("agent", agent);
    t.role("reopen", |ctx| {
        let s = Semaphore::create(&ctx_opts(ctx, NAME), 0, 10)?;
        ctx.send_str(&format!(
            "existed {} max {} count {}",
            s.already_existed(),
            s.maximum(),
            s.count_now()
        ))?;
        Ok(())
    });

    let ns = ns_of(&t);
    assert_kind(
        Semaphore::create(&opts_in(&ns, "bad"), 4, 3),
        ErrorKind::InvalidParameter,
        "initial above maximum",
    );
    assert_kind(
        Semaphore::create(&opts_in(&ns, "bad"), 0, 0),
        ErrorKind::InvalidParameter,
        "maximum 0",
    );
    assert_kind(
        Semaphore::create(&opts_in(&ns, "bad"), 0, u32::MAX),
        ErrorKind::InvalidParameter,
        "maximum above LONG_MAX",
    );
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());

    let s = Semaphore::create(&opts_in(&ns, NAME), 2, 3).unwrap();
    assert!(!s.already_existed());
    assert_eq!((s.maximum(), s.count_now()), (3, 2));

    let mut reopen = t.spawn("reopen").start();
    assert_eq!(
        reopen.recv_str_timeout(T).unwrap(),
        "existed true max 3 count 2",
        "the existing count and maximum win"
    );

    let mut a = t.spawn("agent").start();
    assert_eq!(ask(&mut a, &format!("take {NAME}")), "ok");
    assert_eq!(ask(&mut a, &format!("take {NAME}")), "ok");
    assert_eq!(ask(&mut a, &format!("take {NAME}")), "Timeout:258");
    assert_eq!(s.count_now(), 0);
    assert_kind(s.wait(Some(SHORT)), ErrorKind::Timeout, "empty semaphore");

    assert_eq!(s.release(1).unwrap(), 0);
    assert_eq!(ask(&mut a, &format!("post {NAME} 2")), "prev 1");
    assert_eq!(s.count_now(), 3);
    assert_kind(s.release(1), ErrorKind::TooManyPosts, "past the maximum");
    assert_eq!(ask(&mut a, &format!("post {NAME} 1")), "TooManyPosts:298");
    assert_kind(s.release(u32::MAX), ErrorKind::TooManyPosts, "overflow");
    assert_kind(s.release(0), ErrorKind::InvalidParameter, "release 0");
    assert_eq!(s.count_now(), 3, "failed releases change nothing");
    assert_eq!(ask(&mut a, &format!("count {NAME}")), "count 3");

    for _ in 0..3 {
        assert_eq!(ask(&mut a, &format!("take {NAME}")), "ok");
    }
    assert_eq!(ask(&mut a, &format!("take {NAME}")), "Timeout:258");

    // A waiter asleep in another process takes the next release.
    a.send_str(&format!("take-blocking {NAME}")).unwrap();
    settle_asleep(a.pid());
    assert_eq!(s.release(1).unwrap(), 0);
    assert_eq!(a.recv_str_timeout(T).unwrap(), "ok");
    assert_eq!(s.count_now(), 0);
    // ... and the same from several waiters at once: each takes one.
    assert_eq!(s.release(2).unwrap(), 0);
    s.wait(Some(T)).unwrap();
    s.wait(Some(T)).unwrap();
    assert_kind(s.wait(Some(SHORT)), ErrorKind::Timeout, "both taken");
}

// ---------------------------------------------------------------------------------------------
// Waiting for several objects

#[test]
fn wait_any_and_wait_all_over_mixed_kinds() {
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    let m = Mutex::create(&opts_in(&ns, "m"), false).unwrap();
    let e = Event::create(&opts_in(&ns, "e"), false, false).unwrap();
    let s = Semaphore::create(&opts_in(&ns, "s"), 0, 5).unwrap();
    let f = Event::create(&opts_in(&ns, "f"), false, false).unwrap();
    let mut a = t.spawn("agent").start();

    // wait_any: nothing signalled.
    assert_eq!(ask(&mut a, "lock m"), "signaled");
    let any: [&dyn Waitable; 3] = [&m, &e, &s];
    assert_kind(wait_any(&any, Some(SHORT)), ErrorKind::Timeout, "wait_any");
    // Two signalled: the lowest index wins, and only it is taken.
    assert_eq!(ask(&mut a, "post s 1"), "prev 0");
    assert_eq!(ask(&mut a, "set e"), "ok");
    assert_eq!(wait_any(&any, Some(T)).unwrap(), (1, WaitStatus::Signaled));
    assert!(!e.is_set(), "the auto-reset event was taken");
    assert_eq!(s.count_now(), 1, "the semaphore was not");
    assert_eq!(wait_any(&any, Some(T)).unwrap(), (2, WaitStatus::Signaled));
    assert_eq!(s.count_now(), 0);
    assert_eq!(ask(&mut a, "unlock m"), "ok");
    assert_eq!(wait_any(&any, Some(T)).unwrap(), (0, WaitStatus::Signaled));
    assert_eq!(m.owner_pid(), Some(std::process::id()));
    m.release().unwrap();

    // wait_any asleep, woken by another process.
    assert_eq!(ask(&mut a, "lock m"), "signaled");
    let (tx, rx) = mpsc::channel();
    thread::scope(|sc| {
        let h = sc.spawn(|| {
            tx.send(gettid()).unwrap();
            wait_any(&any, Some(T))
        });
        settle_thread_asleep(rx.recv().unwrap());
        assert_eq!(ask(&mut a, "post s 1"), "prev 0");
        assert_eq!(h.join().unwrap().unwrap(), (2, WaitStatus::Signaled));
    });
    assert_eq!(ask(&mut a, "unlock m"), "ok");

    // wait_all with one object missing: times out and takes nothing.
    let all: [&dyn Waitable; 4] = [&m, &e, &s, &f];
    assert_eq!(ask(&mut a, "set e"), "ok");
    assert_eq!(ask(&mut a, "post s 1"), "prev 0");
    assert_kind(wait_all(&all, Some(GRACE)), ErrorKind::Timeout, "wait_all");
    assert!(e.is_set(), "the event is left set");
    assert_eq!(s.count_now(), 1, "the semaphore is left untaken");
    assert_eq!(m.owner_pid(), None, "the mutex is left free");
    assert_eq!(ask(&mut a, "try-lock m"), "signaled");
    assert_eq!(ask(&mut a, "unlock m"), "ok");

    // wait_all asleep, completed by another process: takes everything at once.
    let (tx, rx) = mpsc::channel();
    thread::scope(|sc| {
        let h = sc.spawn(|| {
            tx.send(gettid()).unwrap();
            let r = wait_all(&all, Some(T));
            let seen = (e.is_set(), f.is_set(), s.count_now(), m.owner_pid());
            if r.is_ok() {
                m.release().unwrap();
            }
            (r, seen)
        });
        settle_thread_asleep(rx.recv().unwrap());
        assert_eq!(ask(&mut a, "set f"), "ok");
        let (r, seen) = h.join().unwrap();
        assert_eq!(r.unwrap(), WaitStatus::Signaled);
        assert_eq!(seen, (false, false, 0, Some(std::process::id())));
    });

    // Bad arguments.
    assert_kind(
        wait_any(&[], Some(SHORT)),
        ErrorKind::InvalidParameter,
        "none",
    );
    assert_kind(
        wait_all(&[&e, &e], Some(SHORT)),
        ErrorKind::InvalidParameter,
        "twice",
    );
    // The same object through two handles is the same object.
    let e2 = Event::open(&opts_in(&ns, "e")).unwrap();
    assert_eq!(ask(&mut a, "set e"), "ok");
    assert_kind(
        wait_all(&[&e, &s, &e2], Some(SHORT)),
        ErrorKind::InvalidParameter,
        "twice through two handles",
    );
    assert!(e.is_set(), "nothing taken");
    let many: Vec<&dyn Waitable> = (0..=MAXIMUM_WAIT_OBJECTS).map(|_| &e as _).collect();
    assert_kind(
        wait_any(&many, Some(SHORT)),
        ErrorKind::InvalidParameter,
        "65 objects",
    );
}

#[test]
fn wait_all_leaves_an_abandoned_mutex_abandoned_until_it_takes_it() {
    const NAME: &str = "m";
    let t = test_case!();
    t.role("holder", hold_mutex);
    t.role("agent", agent);

    let ns = ns_of(&t);
    let m = Mutex::create(&opts_in(&ns, NAME), false).unwrap();
    let f = Event::create(&opts_in(&ns, "f"), true, false).unwrap();
    let all: [&dyn Waitable; 2] = [&m, &f];

    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    holder.kill().unwrap();
    // The event is missing: wait_all takes nothing, not even the abandoned mutex...
    assert_kind(wait_all(&all, Some(GRACE)), ErrorKind::Timeout, "wait_all");
    assert_eq!(m.owner_pid(), Some(holder.pid()), "still the dead owner's");
    // ...so the next taker, in another process, learns of the abandonment.
    let mut a = t.spawn("agent").start();
    assert_eq!(ask(&mut a, &format!("try-lock {NAME}")), "abandoned");
    assert_eq!(ask(&mut a, &format!("unlock {NAME}")), "ok");

    // All available: wait_all takes them, and reports the abandonment.
    let mut holder = t.spawn("holder").arg(NAME).start();
    holder.expect("owned", T).unwrap();
    holder.kill().unwrap();
    assert_eq!(ask(&mut a, "set f"), "ok");
    assert_eq!(wait_all(&all, Some(T)).unwrap(), WaitStatus::Abandoned);
    assert!(f.is_set(), "manual-reset events stay set");
    m.release().unwrap();
    assert_eq!(wait_all(&all, Some(T)).unwrap(), WaitStatus::Signaled);
    m.release().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Lifetime

/// Creates (or opens) the three objects of the lifetime tests.
fn three(opts: impl Fn(&str) -> Options) -> ipckit::Result<(Mutex, Event, Semaphore)> {
    Ok((
        Mutex::create(&opts("lt-mutex"), true)?,
        Event::create(&opts("lt-event"), true, true)?,
        Semaphore::create(&opts("lt-sem"), 1, 5)?,
    ))
}

fn open_three(opts: impl Fn(&str) -> Options) -> ipckit::Result<(Mutex, Event, Semaphore)> {
    Ok((
        Mutex::open(&opts("lt-mutex"))?,
        Event::open(&opts("lt-event"))?,
        Semaphore::open(&opts("lt-sem"))?,
    ))
}

#[test]
fn sync_objects_vanish_when_the_last_holder_closes_or_is_killed() {
    let t = test_case!();
    t.role("creator", |ctx| {
        let _objects = three(|n| ctx_opts(ctx, n))?;
        ctx.send_str("ready")?;
        ctx.recv()?; // until killed
        Ok(())
    });
    t.role("opener", |ctx| {
        let (m, e, s) = open_three(|n| ctx_opts(ctx, n))?;
        ensure(e.is_set() && e.is_manual_reset(), "event state kept")?;
        ensure(
            s.count_now() == 1 && s.maximum() == 5,
            "semaphore state kept",
        )?;
        ensure(m.wait(Some(T))? == WaitStatus::Abandoned, "abandoned mutex")?;
        m.release()?;
        ctx.send_str("ok")?;
        Ok(())
    });
    t.role("holder", |ctx| {
        // Create on existing names opens them: their state wins, the initial owner is ignored.
        let (m, e, s) = three(|n| ctx_opts(ctx, n))?;
        ensure(
            m.already_existed() && e.already_existed() && s.already_existed(),
            "create found the existing objects",
        )?;
        ensure(m.owner_pid().is_none(), "the existing mutex stays free")?;
        ensure(e.is_set() && s.count_now() == 1, "existing state kept")?;
        ctx.send_str("open")?;
        ctx.recv()?; // until the parent closes the channel
        Ok(())
    });

    let ns = ns_of(&t);
    let opts = |n: &str| opts_in(&ns, n);

    // A killed creator: the objects live while the parent holds them, then vanish.
    let mut creator = t.spawn("creator").start();
    creator.expect("ready", T).unwrap();
    let held = open_three(opts).unwrap();
    let files = object_files(&ns);
    assert_eq!(files.len(), 3, "{files:?}");
    creator.kill().unwrap();
    assert_eq!(object_files(&ns), files);
    let mut opener = t.spawn("opener").start();
    opener.expect("ok", T).unwrap();
    assert!(opener.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), files);
    drop(held);
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    assert_kind(Mutex::open(&opts("lt-mutex")), ErrorKind::NotFound, "mutex");
    assert_kind(Event::open(&opts("lt-event")), ErrorKind::NotFound, "event");
    assert_kind(Semaphore::open(&opts("lt-sem")), ErrorKind::NotFound, "sem");

    // A live holder keeps them after their creator closed them.
    let created = three(opts).unwrap();
    created.0.release().unwrap();
    let mut holder = t.spawn("holder").start();
    holder.expect("open", T).unwrap();
    drop(created);
    assert_eq!(object_files(&ns), files);
    let (m, e, s) = open_three(opts).unwrap();
    assert!(e.is_set());
    assert_eq!(s.count_now(), 1);
    assert_eq!(m.wait(Some(T)).unwrap(), WaitStatus::Signaled);
    m.release().unwrap();
    drop((m, e, s));
    holder.close_input();
    assert!(holder.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());

    // The only holder is killed: the names are free at once, and create starts afresh.
    let mut creator = t.spawn("creator").start();
    creator.expect("ready", T).unwrap();
    creator.kill().unwrap();
    assert_kind(Mutex::open(&opts("lt-mutex")), ErrorKind::NotFound, "mutex");
    assert_kind(Event::open(&opts("lt-event")), ErrorKind::NotFound, "event");
    assert_kind(Semaphore::open(&opts("lt-sem")), ErrorKind::NotFound, "sem");
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    let m = Mutex::create(&opts("lt-mutex"), false).unwrap();
    let e = Event::create(&opts("lt-event"), false, false).unwrap();
    let s = Semaphore::create(&opts("lt-sem"), 0, 7).unwrap();
    assert!(!m.already_existed() && !e.already_existed() && !s.already_existed());
    assert_eq!(m.owner_pid(), None);
    assert_eq!(
        m.wait(Some(T)).unwrap(),
        WaitStatus::Signaled,
        "not abandoned"
    );
    m.release().unwrap();
    assert!(!e.is_set() && !e.is_manual_reset());
    assert_eq!((s.count_now(), s.maximum()), (0, 7));
}

// ---------------------------------------------------------------------------------------------
// Waiting costs no CPU

#[test]
fn waiting_costs_no_cpu() {
    let t = test_case!();
    t.role("event-waiter", |ctx| {
        let e = Event::open(&ctx_opts(ctx, "idle-event"))?;
        ctx.send_str("waiting")?;
        e.wait(Some(T))?;
        ctx.send_str("woke")?;
        Ok(())
    });
    t.role("mutex-waiter", |ctx| {
        let m = Mutex::open(&ctx_opts(ctx, "idle-mutex"))?;
        ctx.send_str("waiting")?;
        m.wait(Some(T))?;
        m.release()?;
        ctx.send_str("woke")?;
        Ok(())
    });

    const WAITING: Duration = Duration::from_millis(300);
    const BOUND: Duration = Duration::from_millis(50);
    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "idle-event"), false, false).unwrap();
    let m = Mutex::create(&opts_in(&ns, "idle-mutex"), true).unwrap();

    let mut peer = t.spawn("event-waiter").start();
    peer.expect("waiting", T).unwrap();
    settle_asleep(peer.pid());
    let before = cpu_time(peer.pid());
    thread::sleep(WAITING);
    let used = cpu_time(peer.pid()) - before;
    e.set().unwrap();
    peer.expect("woke", T).unwrap();
    assert!(
        used < BOUND,
        "an event waiter used {used:?} of CPU in {WAITING:?}"
    );

    // A mutex waiter also checks, now and then, that the owner lives: still next to nothing.
    let mut peer = t.spawn("mutex-waiter").start();
    peer.expect("waiting", T).unwrap();
    settle_asleep(peer.pid());
    let before = cpu_time(peer.pid());
    thread::sleep(WAITING);
    let used = cpu_time(peer.pid()) - before;
    m.release().unwrap();
    peer.expect("woke", T).unwrap();
    assert!(
        used < BOUND,
        "a mutex waiter used {used:?} of CPU in {WAITING:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties (in one process).

#[derive(Debug, Clone)]
enum SemOp {
    Release(u32),
    TryWait,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A semaphore behaves as a counter between 0 and its maximum: release returns the
    /// previous count or fails with TooManyPosts changing nothing; a wait takes one when
    /// there is one and times out otherwise.
    #[test]
    fn semaphore_follows_its_model(
        max in 1u32..10,
        initial in 0u32..10,
        ops in proptest::collection::vec(
            prop_oneof![(0u32..12).prop_map(SemOp::Release), Just(SemOp::TryWait)],
            0..40,
        ),
    ) {
        let initial = initial.min(max);
        let s = Semaphore::create(&Options::unnamed(), initial, max).unwrap();
        let mut model = initial;
        for op in ops {
            match op {
                SemOp::Release(n) => match s.release(n) {
                    Ok(prev) => {
                        prop_assert!(n > 0 && model + n <= max);
                        prop_assert_eq!(prev, model);
                        model += n;
                    }
                    Err(e) if n == 0 => prop_assert_eq!(e.kind(), ErrorKind::InvalidParameter),
                    Err(e) => {
                        prop_assert!(model + n > max);
                        prop_assert_eq!(e.kind(), ErrorKind::TooManyPosts);
                    }
                },
                SemOp::TryWait => match s.wait(Some(Duration::ZERO)) {
                    Ok(()) => {
                        prop_assert!(model > 0);
                        model -= 1;
                    }
                    Err(e) => {
                        prop_assert_eq!(model, 0);
                        prop_assert_eq!(e.kind(), ErrorKind::Timeout);
                    }
                },
            }
            prop_assert_eq!(s.count_now(), model);
        }
    }

    /// A mutex counts its recursion: after `n` acquisitions it takes exactly `n` releases, and
    /// the next one fails with NotOwner.
    #[test]
    fn mutex_recursion_counts(n in 1usize..20) {
        let m = Mutex::create(&Options::unnamed(), false).unwrap();
        for _ in 0..n {
            prop_assert_eq!(m.wait(Some(Duration::ZERO)).unwrap(), WaitStatus::Signaled);
        }
        for i in 0..n {
            prop_assert_eq!(m.owner_pid(), Some(std::process::id()), "level {}", n - i);
            m.release().unwrap();
        }
        prop_assert_eq!(m.owner_pid(), None);
        prop_assert_eq!(m.release().unwrap_err().kind(), ErrorKind::NotOwner);
    }
}

/// The uncontended mutex path makes no system call: a peer locks down its thread with seccomp's
/// strict mode (any system call but `read`, `write`, `exit` and `sigreturn` kills the process)
/// and then acquires and releases a named mutex 100,000 times. Only if none of that entered the
/// kernel does it live to write its report.
#[test]
fn uncontended_mutex_makes_no_system_call() {
    let t = test_case!();
    t.role("strict", |ctx| {
        let m = Mutex::open(&Options::named(r"Local\nosys")?.namespace(ctx_ns(ctx)))?;
        // Once outside strict mode: the thread and process ids get cached.
        m.wait(None)?;
        m.release()?;
        ctx.send_str("entering")?;
        // SAFETY: prctl with PR_SET_SECCOMP and SECCOMP_MODE_STRICT takes no pointers; it only
        // restricts the system calls this thread may make from now on.
        let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT, 0, 0, 0) };
        if rc != 0 {
            return Err("cannot enter seccomp strict mode".into());
        }
        for _ in 0..100_000 {
            // Errors would allocate and format: keep the loop free of anything but the calls.
            if m.wait(None).is_err() || m.release().is_err() {
                break;
            }
        }
        let report = b"NO-SYSCALL-OK\n";
        // SAFETY: writes `report.len()` bytes from a live buffer to standard output; `write` is
        // one of the calls strict mode allows.
        unsafe { libc::write(1, report.as_ptr().cast(), report.len()) };
        // Any other system call (even exiting the process) would kill us: wait to be killed.
        loop {
            std::hint::spin_loop();
        }
    });
    let ns = ns_of(&t);
    let m = Mutex::create(
        &Options::named(r"Local\nosys").unwrap().namespace(ns),
        false,
    )
    .unwrap();
    let mut peer = t.spawn("strict").start();
    peer.expect("entering", Duration::from_secs(20)).unwrap();
    // Strict mode kills only the offending thread, so the peer process may live on: wait for
    // the report, which never comes if a system call was made.
    let reported = wait_for(Duration::from_secs(20), || {
        peer.stdout().contains("NO-SYSCALL-OK")
    });
    assert!(
        reported,
        "no report: a system call on the uncontended path killed the locked-down thread: {}",
        peer.report()
    );
    peer.kill().unwrap();
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// A set immediately followed by a reset

/// A role that waits once, at most `T`, on the event `arg(0)` after saying `waiting`, and
/// reports how the wait ended: `woke`, or `KIND:CODE` (`Timeout:258` when nothing released it).
fn pulse_waiter(ctx: &mut RoleCtx) -> RoleResult {
    let name = ctx.arg(0).ok_or("no event name")?.to_owned();
    let e = Event::open(&ctx_opts(ctx, &name))?;
    ctx.send_str("waiting")?;
    let r = e.wait(Some(T));
    ctx.send_str(&outcome(r, |()| "woke".into()))?;
    Ok(())
}

/// Starts `n` pulse waiters on `event` and returns once every one of them sleeps.
fn sleeping_pulse_waiters(t: &ipckit_testkit::TestCase, event: &str, n: usize) -> Vec<Peer> {
    let mut waiters: Vec<Peer> = (0..n)
        .map(|_| t.spawn("waiter").args([event]).start())
        .collect();
    for w in &mut waiters {
        w.expect("waiting", T).unwrap();
    }
    for w in &waiters {
        settle_asleep(w.pid());
    }
    waiters
}

/// Every waiter's report, in spawn order. A released waiter reports at once; the others only
/// when their wait of `T` times out, so this waits up to `T` and a little more.
fn reports(waiters: &mut [Peer]) -> Vec<String> {
    waiters
        .iter_mut()
        .map(|w| w.recv_str_timeout(T + T).unwrap())
        .collect()
}

/// SetEvent followed at once by ResetEvent on an auto-reset event with waiters in other
/// processes: each set releases exactly one of them, as on Windows (the set is handed to a
/// sleeper, the reset cannot take it back); the others are not released by anything and see
/// their waits time out.
#[test]
fn auto_reset_set_then_reset_releases_exactly_one_waiter_per_set() {
    const N: usize = 5;
    const K: usize = 3;
    let t = test_case!();
    t.role("waiter", pulse_waiter);

    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "auto-pulse"), false, false).unwrap();
    let mut waiters = sleeping_pulse_waiters(&t, "auto-pulse", N);
    for _ in 0..K {
        e.set().unwrap();
        e.reset().unwrap();
    }
    assert!(!e.is_set(), "handed sets leave the event non-signalled");

    let got = reports(&mut waiters);
    let woke = got.iter().filter(|r| *r == "woke").count();
    let timed_out = got.iter().filter(|r| *r == "Timeout:258").count();
    assert_eq!(woke, K, "{K} sets must release {K} of {N} waiters: {got:?}");
    assert_eq!(
        timed_out,
        N - K,
        "the others wait until they time out: {got:?}"
    );
    // Nothing is left over for a later waiter either.
    assert_kind(e.wait(Some(SHORT)), ErrorKind::Timeout, "after the pulses");
    for w in &mut waiters {
        w.wait_timeout(T).unwrap();
    }
}

/// SetEvent followed at once by ResetEvent on a manual-reset event: every waiter that was
/// waiting, in other processes, is released, and the event ends non-signalled.
#[test]
fn manual_reset_set_then_reset_releases_every_waiter() {
    const N: usize = 4;
    let t = test_case!();
    t.role("waiter", pulse_waiter);

    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "manual-pulse"), true, false).unwrap();
    let mut waiters = sleeping_pulse_waiters(&t, "manual-pulse", N);
    e.set().unwrap();
    e.reset().unwrap();
    assert!(!e.is_set());

    let got = reports(&mut waiters);
    assert!(
        got.iter().all(|r| r == "woke"),
        "every waiter was released: {got:?}"
    );
    // A waiter that comes after the reset is not released.
    let mut late = sleeping_pulse_waiters(&t, "manual-pulse", 1);
    assert_eq!(reports(&mut late), ["Timeout:258"]);
    for w in waiters.iter_mut().chain(&mut late) {
        w.wait_timeout(T).unwrap();
    }
}

/// A waiter killed (SIGKILL) while asleep on an auto-reset event does not swallow releases: a
/// set-and-reset with a live sleeper besides it releases the live one, and a set handed to the
/// dead one alone goes to the next process that waits.
#[test]
fn killed_sleeper_does_not_swallow_auto_reset_releases() {
    let t = test_case!();
    t.role("waiter", pulse_waiter);

    let ns = ns_of(&t);
    let e = Event::create(&opts_in(&ns, "auto-killed"), false, false).unwrap();
    let mut dead = sleeping_pulse_waiters(&t, "auto-killed", 1);
    dead[0].kill().unwrap();
    let mut live = sleeping_pulse_waiters(&t, "auto-killed", 1);
    e.set().unwrap();
    e.reset().unwrap();
    assert_eq!(reports(&mut live), ["woke"]);

    // Only the dead sleeper is left: this set is handed to it, and then to the next waiter.
    e.set().unwrap();
    e.reset().unwrap();
    let mut next = t.spawn("waiter").args(["auto-killed"]).start();
    next.expect("waiting", T).unwrap();
    assert_eq!(next.recv_str_timeout(T).unwrap(), "woke");
    // That was the only release: the following waiter waits in vain.
    assert_kind(
        e.wait(Some(SHORT)),
        ErrorKind::Timeout,
        "after the handed set",
    );
    for w in live.iter_mut().chain([&mut next]) {
        w.wait_timeout(T).unwrap();
    }
}

/// Setting an auto-reset event nobody sleeps on and taking it makes no system call (the queue
/// of sleepers is looked at, not slept on): the same seccomp strict-mode proof as for the mutex.
#[test]
fn uncontended_event_makes_no_system_call() {
    let t = test_case!();
    t.role("strict", |ctx| {
        let e = Event::open(&Options::named(r"Local\nosys-event")?.namespace(ctx_ns(ctx)))?;
        e.set()?;
        e.wait(None)?;
        ctx.send_str("entering")?;
        // SAFETY: prctl with PR_SET_SECCOMP and SECCOMP_MODE_STRICT takes no pointers; it only
        // restricts the system calls this thread may make from now on.
        let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT, 0, 0, 0) };
        if rc != 0 {
            return Err("cannot enter seccomp strict mode".into());
        }
        for _ in 0..100_000 {
            if e.set().is_err() || e.wait(None).is_err() || e.reset().is_err() {
                break;
            }
        }
        let report = b"NO-SYSCALL-OK\n";
        // SAFETY: writes `report.len()` bytes from a live buffer to standard output; `write` is
        // one of the calls strict mode allows.
        unsafe { libc::write(1, report.as_ptr().cast(), report.len()) };
        loop {
            std::hint::spin_loop();
        }
    });
    let ns = ns_of(&t);
    let e = Event::create(
        &Options::named(r"Local\nosys-event").unwrap().namespace(ns),
        false,
        false,
    )
    .unwrap();
    let mut peer = t.spawn("strict").start();
    peer.expect("entering", Duration::from_secs(20)).unwrap();
    let reported = wait_for(Duration::from_secs(20), || {
        peer.stdout().contains("NO-SYSCALL-OK")
    });
    assert!(
        reported,
        "no report: a system call on the uncontended event path killed the locked-down thread: {}",
        peer.report()
    );
    peer.kill().unwrap();
    assert!(!e.is_set(), "the peer's last wait took its last set");
    drop(e);
}
