//! File mapping across real processes: shared writes, lifetime (close and SIGKILL), file-backed
//! views, interoperation with another program, copy-on-write privacy, bad input.
//!
//! Every test runs in its own namespace (the test kit's `IPCKIT_RUNTIME_DIR`), which the parent
//! opens with `Namespace::at(t.namespace())` and every peer gets from the environment.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::mapping::{
    FileMapping, MAX_MAPPING_SIZE, Protection, ViewAccess, allocation_granularity,
};
use ipckit::name::ObjectName;
use ipckit::namespace::Namespace;
use ipckit::object::{ObjectKind, describe};
use ipckit::sync::{Event, Mutex, Options, Semaphore};
use ipckit_testkit::test_case;
use proptest::prelude::*;

mod common;
use common::*;

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(10);

fn page() -> usize {
    allocation_granularity()
}

fn read_bytes(view: &ipckit::mapping::View, offset: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    view.read(offset, &mut buf).expect("read within the view");
    buf
}

/// The side file of the object `name` in `ns`.
fn side_file(ns: &Namespace, name: &str) -> PathBuf {
    ns.object_path(&ObjectName::parse(name).unwrap())
}

/// What `ipckit ls` would say of the object `name`: `None` when it is gone.
fn described(ns: &Namespace, name: &str) -> Option<ObjectKind> {
    let path = side_file(ns, name);
    let component = path.file_name().unwrap().to_str().unwrap();
    let scope = ObjectName::parse(name).unwrap().scope();
    describe(ns, scope, component).unwrap().map(|i| i.kind)
}

fn create_named(ns: &Namespace, name: &str, size: u64) -> FileMapping {
    FileMapping::builder()
        .name(name)
        .unwrap()
        .size(size)
        .namespace(ns.clone())
        .create()
        .unwrap()
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

// ---------------------------------------------------------------------------------------------

#[test]
fn two_processes_see_each_others_writes_and_a_late_third_sees_them() {
    const NAME: &str = r"Local\shared-frame";
    let t = test_case!();
    t.role("partner", |ctx| {
        let ns = ctx_ns(ctx);
        let m = FileMapping::open_in(&ns, NAME, ViewAccess::Write)?;
        ensure(m.already_existed(), "open reports an existing object")?;
        ensure(m.size() == 2 * page() as u64, format!("size {}", m.size()))?;
        let v = m.map_view(ViewAccess::Write, 0, 0)?;
        ctx.expect("check", T)?;
        let got = read_bytes(&v, 0, 5);
        ensure(got == b"hello", format!("partner read {got:?}"))?;
        v.write(page(), b"world")?;
        ctx.send_str("written")?;
        // The parent writes again into the page this view already shows.
        ctx.expect("check-again", T)?;
        let got = read_bytes(&v, 100, 5);
        ensure(
            got == b"again",
            format!("partner read {got:?} the second time"),
        )?;
        ctx.send_str("seen")?;
        ctx.recv()?;
        Ok(())
    });
    t.role("late", |ctx| {
        let ns = ctx_ns(ctx);
        let m = FileMapping::open_in(&ns, NAME, ViewAccess::Read)?;
        // A view of the second page only.
        let v = m.map_view(ViewAccess::Read, page() as u64, 0)?;
        ensure(v.len() == page(), format!("view length {}", v.len()))?;
        let mut out = read_bytes(&m.map_view(ViewAccess::Read, 0, 0)?, 0, 5);
        out.extend(read_bytes(&v, 0, 5));
        out.extend(read_bytes(&m.map_view(ViewAccess::Read, 0, 0)?, 100, 5));
        ctx.send(&out)?;
        Ok(())
    });

    let ns = ns_of(&t);
    let m = create_named(&ns, NAME, 2 * page() as u64);
    assert!(!m.already_existed());
    let v = m.map_view(ViewAccess::Write, 0, 0).unwrap();
    v.write(0, b"hello").unwrap();

    let mut partner = t.spawn("partner").start();
    partner.send_str("check").unwrap();
    partner.expect("written", T).unwrap();
    // The parent's view was mapped before the partner wrote: views are coherent.
    assert_eq!(read_bytes(&v, page(), 5), b"world");
    v.write(100, b"again").unwrap();
    partner.send_str("check-again").unwrap();
    partner.expect("seen", T).unwrap();

    let mut late = t.spawn("late").start();
    let seen = late.recv_timeout(T).unwrap();
    assert_eq!(seen, b"helloworldagain");
    assert!(late.wait_timeout(T).unwrap().success());
    partner.close_input();
    assert!(partner.wait_timeout(T).unwrap().success());
}

#[test]
fn killed_holder_leaves_nothing_once_the_others_close() {
    const NAME: &str = r"Global\killed-holder";
    let t = test_case!();
    t.role("creator", |ctx| {
        let m = create_named(&ctx_ns(ctx), NAME, page() as u64);
        m.map_view(ViewAccess::Write, 0, 0)?.write(0, b"data")?;
        ctx.send_str("ready")?;
        ctx.recv()?; // until killed
        Ok(())
    });
    t.role("opener", |ctx| {
        let m = FileMapping::open_in(&ctx_ns(ctx), NAME, ViewAccess::Read)?;
        let got = read_bytes(&m.map_view(ViewAccess::Read, 0, 0)?, 0, 4);
        ctx.send(&got)?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut creator = t.spawn("creator").start();
    creator.expect("ready", T).unwrap();
    let m = FileMapping::open_in(&ns, NAME, ViewAccess::Read).unwrap();
    let files = object_files(&ns);
    assert_eq!(
        files,
        {
            let mut v = vec![side_file(&ns, NAME), shm_file(&ns, NAME)];
            v.sort();
            v
        },
        "one side file and one shared-memory object"
    );
    assert_eq!(
        Path::new("/dev/shm").join(m.os_name().unwrap()),
        shm_file(&ns, NAME)
    );

    creator.kill().unwrap();
    // We still hold it: it lives, with its data, and opens by name in another process.
    assert_eq!(described(&ns, NAME), Some(ObjectKind::FileMapping));
    assert_eq!(object_files(&ns), files);
    let v = m.map_view(ViewAccess::Read, 0, 0).unwrap();
    assert_eq!(read_bytes(&v, 0, 4), b"data");
    let mut opener = t.spawn("opener").start();
    assert_eq!(opener.recv_timeout(T).unwrap(), b"data");
    assert!(opener.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), files);

    // The view keeps the mapping alive after the handle is closed.
    drop(m);
    assert_eq!(object_files(&ns), files);
    assert_eq!(read_bytes(&v, 0, 4), b"data");
    drop(v);
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    assert_kind(
        FileMapping::open_in(&ns, NAME, ViewAccess::Read),
        ErrorKind::NotFound,
        "open after the last close",
    );
}

#[test]
fn live_holder_keeps_the_mapping_alive() {
    const NAME: &str = r"Local\kept";
    let t = test_case!();
    t.role("holder", |ctx| {
        let _m = FileMapping::open_in(&ctx_ns(ctx), NAME, ViewAccess::Write)?;
        ctx.send_str("open")?;
        ctx.recv()?; // until the parent closes the channel
        Ok(())
    });
    t.role("third", |ctx| {
        let m = FileMapping::open_in(&ctx_ns(ctx), NAME, ViewAccess::Read)?;
        ctx.send(&read_bytes(&m.map_view(ViewAccess::Read, 0, 0)?, 0, 5))?;
        Ok(())
    });

    let ns = ns_of(&t);
    let m = create_named(&ns, NAME, page() as u64);
    m.map_view(ViewAccess::Write, 0, 0)
        .unwrap()
        .write(0, b"alive")
        .unwrap();
    let mut holder = t.spawn("holder").start();
    holder.expect("open", T).unwrap();
    let files = object_files(&ns);
    assert_eq!(files.len(), 2, "{files:?}");

    drop(m);
    assert_eq!(object_files(&ns), files, "the holder keeps it");
    assert_eq!(described(&ns, NAME), Some(ObjectKind::FileMapping));
    let mut third = t.spawn("third").start();
    assert_eq!(third.recv_timeout(T).unwrap(), b"alive");
    assert!(third.wait_timeout(T).unwrap().success());

    holder.close_input();
    assert!(holder.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    assert_eq!(described(&ns, NAME), None);
    assert_kind(
        FileMapping::open_in(&ns, NAME, ViewAccess::Read),
        ErrorKind::NotFound,
        "open after the holder closed",
    );
}

#[test]
fn mapping_whose_only_holder_was_killed_is_gone() {
    const NAME: &str = "only-holder";
    let t = test_case!();
    t.role("creator", |ctx| {
        let m = create_named(&ctx_ns(ctx), NAME, 2 * page() as u64);
        m.map_view(ViewAccess::Write, 0, 0)?
            .fill(0, 2 * page(), 0xAB)?;
        ctx.send_str("ready")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut creator = t.spawn("creator").start();
    creator.expect("ready", T).unwrap();
    assert_eq!(described(&ns, NAME), Some(ObjectKind::FileMapping));
    creator.kill().unwrap();

    // Gone to every observer at once, though its files remain until someone looks.
    assert_eq!(described(&ns, NAME), None);
    assert_kind(
        FileMapping::open_in(&ns, NAME, ViewAccess::Read),
        ErrorKind::NotFound,
        "open after the only holder was killed",
    );
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new(), "remains cleared");

    // A create makes a fresh, zero-filled object of the size asked for.
    let m = create_named(&ns, NAME, page() as u64);
    assert!(!m.already_existed());
    assert_eq!(m.size(), page() as u64);
    let v = m.map_view(ViewAccess::Read, 0, 0).unwrap();
    assert!(read_bytes(&v, 0, page()).iter().all(|&b| b == 0));
}

#[test]
fn file_backed_writes_reach_the_file_and_survive_the_process() {
    let t = test_case!();
    t.role("writer", |ctx| {
        let path = ctx.arg(0).ok_or("no file argument")?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let m = FileMapping::builder()
            .file(file)
            .size(3 * page() as u64) // grows the 10-byte file
            .create()?;
        ensure(
            m.os_name().is_none(),
            "a file-backed mapping has no shm name",
        )?;
        let v = m.map_view(ViewAccess::Write, 0, 0)?;
        v.write(0, b"head")?;
        v.write(2 * page() + 10, b"tail")?;
        v.flush(0, 0)?;
        let mid = m.map_view(ViewAccess::Write, page() as u64, page())?;
        mid.write(5, b"mid")?;
        mid.flush(5, 3)?;
        ctx.send_str("flushed")?;
        ctx.recv()?; // until killed
        Ok(())
    });

    let dir = ipckit_testkit::TestDir::new("ipckit-mapping-file").unwrap();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, b"0123456789").unwrap();
    let mut writer = t.spawn("writer").arg(&path).start();
    writer.expect("flushed", T).unwrap();
    writer.kill().unwrap();

    let data = std::fs::read(&path).unwrap();
    assert_eq!(
        data.len(),
        3 * page(),
        "the file grew to the mapping's size"
    );
    assert_eq!(
        &data[..10],
        b"head456789",
        "old bytes kept, new ones written"
    );
    assert_eq!(&data[page() + 5..page() + 8], b"mid");
    assert_eq!(&data[2 * page() + 10..2 * page() + 14], b"tail");
    let written: usize = data.iter().filter(|&&b| b != 0).count();
    assert_eq!(written, 10 + 3 + 4, "nothing else was written");

    // The parent maps the same file and sees the same bytes.
    let file = std::fs::File::open(&path).unwrap();
    let m = FileMapping::builder()
        .file(file)
        .protection(Protection::ReadOnly)
        .create()
        .unwrap();
    assert_eq!(m.size(), 3 * page() as u64, "size 0 means the file's size");
    let v = m.map_view(ViewAccess::Read, 0, 0).unwrap();
    assert_eq!(read_bytes(&v, 2 * page() + 10, 4), b"tail");
    assert_kind(
        m.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view of a read-only mapping",
    );
}

const PYTHON_PEER: &str = r#"
import sys
from multiprocessing import shared_memory, resource_tracker

shm = shared_memory.SharedMemory(name=sys.argv[1], create=False)
# Python's resource tracker would remove the segment when this program ends; it is not ours.
resource_tracker.unregister(shm._name, "shared_memory")
data = bytes(shm.buf[:11])
print("read", data.hex(), "size", shm.size)
if data != b"from-ipckit":
    sys.exit("python read %r" % data)
shm.buf[100:111] = b"from-python"
shm.close()
"#;

#[test]
fn python_reads_and_writes_the_mapping_by_its_os_name() {
    const NAME: &str = r"Local\py-interop";
    let t = test_case!();
    let ns = ns_of(&t);
    let m = create_named(&ns, NAME, page() as u64);
    let v = m.map_view(ViewAccess::Write, 0, 0).unwrap();
    v.write(0, b"from-ipckit").unwrap();
    let os_name = m
        .os_name()
        .expect("a named paging-file mapping has an OS name");
    assert!(Path::new("/dev/shm").join(os_name).exists());

    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON_PEER, os_name]);
    let mut py = t.command(cmd).start();
    let out = py.wait_output_timeout(Duration::from_secs(30)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 failed ({}); is python3 installed?\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("read {} size {}", hex(b"from-ipckit"), page())),
        "{stdout}"
    );
    assert_eq!(read_bytes(&v, 100, 11), b"from-python");
    assert!(Path::new("/dev/shm").join(os_name).exists(), "still there");
    drop(v);
    drop(m);
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn bad_input_fails_with_typed_errors_and_changes_nothing() {
    let t = test_case!();
    t.role("owner", |ctx| {
        let ns = ctx_ns(ctx);
        let mutex = Mutex::create(&Options::named("a-mutex")?.namespace(ns.clone()), false)?;
        let m = create_named(&ns, "a-mapping", page() as u64);
        m.map_view(ViewAccess::Write, 0, 0)?.write(0, b"intact")?;
        ctx.send_str("ready")?;
        ctx.expect("report", T)?;
        let data = read_bytes(&m.map_view(ViewAccess::Read, 0, 0)?, 0, 6);
        ensure(data == b"intact", format!("mapping changed: {data:?}"))?;
        ensure(mutex.owner_pid().is_none(), "mutex changed")?;
        ctx.send_str("unchanged")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut owner = t.spawn("owner").start();
    owner.expect("ready", T).unwrap();
    let before = object_files(&ns);
    assert_eq!(before.len(), 3, "{before:?}");
    let unchanged = |what: &str| assert_eq!(object_files(&ns), before, "after {what}");
    let build = |name: &str, size: u64| {
        FileMapping::builder()
            .name(name)
            .unwrap()
            .size(size)
            .namespace(ns.clone())
            .create()
    };

    // Sizes.
    assert_kind(build("zero", 0), ErrorKind::InvalidParameter, "size 0");
    unchanged("size 0");
    assert_kind(
        FileMapping::builder().size(0).create(),
        ErrorKind::InvalidParameter,
        "unnamed size 0",
    );
    for size in [MAX_MAPPING_SIZE + 1, u64::MAX] {
        assert_kind(
            build("huge", size),
            ErrorKind::InvalidParameter,
            "huge size",
        );
        unchanged("huge size");
    }
    assert_kind(
        build("a-mapping", MAX_MAPPING_SIZE + 1),
        ErrorKind::InvalidParameter,
        "huge size on an existing name",
    );

    // Names of another kind.
    assert_kind(
        build("a-mutex", page() as u64),
        ErrorKind::WrongKind,
        "mapping named like a mutex",
    );
    assert_kind(
        FileMapping::open_in(&ns, "a-mutex", ViewAccess::Read),
        ErrorKind::WrongKind,
        "open a mutex as a mapping",
    );
    let opts = |name: &str| Options::named(name).unwrap().namespace(ns.clone());
    assert_kind(
        Mutex::create(&opts("a-mapping"), true),
        ErrorKind::WrongKind,
        "mutex named like a mapping",
    );
    assert_kind(
        Mutex::open(&opts("a-mapping")),
        ErrorKind::WrongKind,
        "open a mapping as a mutex",
    );
    assert_kind(
        Event::create(&opts("a-mutex"), true, true),
        ErrorKind::WrongKind,
        "event named like a mutex",
    );
    assert_kind(
        Semaphore::create(&opts("a-mapping"), 1, 1),
        ErrorKind::WrongKind,
        "semaphore named like a mapping",
    );
    unchanged("wrong kinds");

    // Missing names.
    assert_kind(
        FileMapping::open_in(&ns, "missing", ViewAccess::Read),
        ErrorKind::NotFound,
        "open a missing mapping",
    );
    assert_kind(
        Event::open(&opts("missing")),
        ErrorKind::NotFound,
        "open a missing event",
    );
    unchanged("missing names");

    // Invalid names.
    let long = "x".repeat(300);
    for bad in [
        "",
        "a/b",
        r"Foo\bar",
        r"Local\",
        r"Local\a\b",
        ".",
        r"Global\..",
        "bell\u{7}",
        long.as_str(),
    ] {
        assert_kind(
            FileMapping::builder().name(bad).map(|_| ()),
            ErrorKind::InvalidName,
            bad,
        );
        assert_kind(
            FileMapping::open_in(&ns, bad, ViewAccess::Read),
            ErrorKind::InvalidName,
            bad,
        );
        assert_kind(Options::named(bad).map(|_| ()), ErrorKind::InvalidName, bad);
    }
    unchanged("invalid names");

    // Views of the owner's mapping, opened read-only.
    let m = FileMapping::open_in(&ns, "a-mapping", ViewAccess::Read).unwrap();
    assert!(page() > 1);
    assert_kind(
        m.map_view(ViewAccess::Read, 1, 0),
        ErrorKind::InvalidParameter,
        "misaligned offset",
    );
    assert_kind(
        m.map_view(ViewAccess::Read, page() as u64, 0),
        ErrorKind::InvalidParameter,
        "offset at the end",
    );
    assert_kind(
        m.map_view(ViewAccess::Read, 2 * page() as u64, 1),
        ErrorKind::InvalidParameter,
        "offset past the end",
    );
    assert_kind(
        m.map_view(ViewAccess::Read, 0, page() + 1),
        ErrorKind::InvalidParameter,
        "view past the end",
    );
    assert_kind(
        m.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view of a read-only open",
    );
    let v = m.map_view(ViewAccess::Read, 0, 0).unwrap();
    assert_kind(
        v.write(0, b"x"),
        ErrorKind::AccessDenied,
        "write through a Read view",
    );
    assert_kind(v.fill(0, 1, 0), ErrorKind::AccessDenied, "fill a Read view");
    assert_kind(
        v.set(0, 1u32),
        ErrorKind::AccessDenied,
        "set in a Read view",
    );
    let mut buf = [0u8; 2];
    assert_kind(
        v.read(page() - 1, &mut buf),
        ErrorKind::InvalidParameter,
        "read past the view",
    );
    assert_kind(
        v.read(usize::MAX, &mut buf),
        ErrorKind::InvalidParameter,
        "read at an absurd offset",
    );
    // A read-only paging-file mapping refuses write views too.
    let ro = FileMapping::builder()
        .name("read-only")
        .unwrap()
        .size(page() as u64)
        .protection(Protection::ReadOnly)
        .namespace(ns.clone())
        .create()
        .unwrap();
    assert_kind(
        ro.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view of a read-only mapping",
    );
    drop((v, m, ro));
    unchanged("bad views");

    // Files: a failed create leaves the file as it was.
    let dir = ipckit_testkit::TestDir::new("ipckit-mapping-bad-file").unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"12345").unwrap();
    let rw = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    assert_kind(
        FileMapping::builder()
            .name("named-file")
            .unwrap()
            .file(rw())
            .size(page() as u64)
            .namespace(ns.clone())
            .create(),
        ErrorKind::Unsupported,
        "named file-backed mapping",
    );
    assert_kind(
        FileMapping::builder()
            .file(std::fs::File::open(&path).unwrap())
            .size(page() as u64)
            .create(),
        ErrorKind::AccessDenied,
        "read-write mapping of a read-only file",
    );
    assert_kind(
        FileMapping::builder()
            .file(std::fs::File::open(&path).unwrap())
            .protection(Protection::ReadOnly)
            .size(page() as u64)
            .create(),
        ErrorKind::AccessDenied,
        "read-only mapping that would grow its file",
    );
    assert_kind(
        FileMapping::builder()
            .file(OpenOptions::new().write(true).open(&path).unwrap())
            .create(),
        ErrorKind::AccessDenied,
        "mapping of a write-only file",
    );
    assert_kind(
        FileMapping::builder()
            .file(rw())
            .size(MAX_MAPPING_SIZE + 1)
            .create(),
        ErrorKind::InvalidParameter,
        "file mapping of absurd size",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_kind(
        FileMapping::builder()
            .file(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&empty)
                    .unwrap(),
            )
            .create(),
        ErrorKind::InvalidParameter,
        "empty file, size 0",
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"12345",
        "the file is unchanged"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    unchanged("bad files");

    owner.send_str("report").unwrap();
    owner.expect("unchanged", T).unwrap();
}

#[test]
fn copy_on_write_views_are_private() {
    const NAME: &str = "cow";
    let t = test_case!();
    t.role("peer", |ctx| {
        let m = FileMapping::open_in(&ctx_ns(ctx), NAME, ViewAccess::Write)?;
        let cow = m.map_view(ViewAccess::CopyOnWrite, 0, 0)?;
        ensure(
            read_bytes(&cow, 0, 8) == b"original",
            "cow view starts shared",
        )?;
        cow.write(0, b"PRIVATE!")?;
        ensure(
            read_bytes(&cow, 0, 8) == b"PRIVATE!",
            "cow view sees its write",
        )?;
        ctx.send_str("cow-written")?;
        ctx.expect("write-shared", T)?;
        let shared = m.map_view(ViewAccess::Write, 0, 0)?;
        let seen = read_bytes(&shared, 0, 8);
        ensure(seen == b"original", format!("a shared view saw {seen:?}"))?;
        shared.write(16, b"shared")?;
        ctx.send_str("shared-written")?;
        ctx.expect("look", T)?;
        // The parent wrote through its copy-on-write view at 32.
        let fresh = m.map_view(ViewAccess::Read, 0, 0)?;
        ctx.send(&read_bytes(&fresh, 32, 4))?;
        ctx.send(&read_bytes(&shared, 32, 4))?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let m = create_named(&ns, NAME, page() as u64);
    let v = m.map_view(ViewAccess::Write, 0, 0).unwrap();
    v.write(0, b"original").unwrap();
    let mut peer = t.spawn("peer").start();
    peer.expect("cow-written", T).unwrap();
    assert_eq!(read_bytes(&v, 0, 8), b"original");
    peer.send_str("write-shared").unwrap();
    peer.expect("shared-written", T).unwrap();
    assert_eq!(read_bytes(&v, 16, 6), b"shared");

    let cow = m.map_view(ViewAccess::CopyOnWrite, 0, 0).unwrap();
    assert_eq!(read_bytes(&cow, 16, 6), b"shared");
    cow.write(32, b"mine").unwrap();
    assert_eq!(read_bytes(&cow, 32, 4), b"mine");
    assert_eq!(read_bytes(&v, 32, 4), [0; 4]);
    peer.send_str("look").unwrap();
    assert_eq!(peer.recv_timeout(T).unwrap(), [0; 4]);
    assert_eq!(peer.recv_timeout(T).unwrap(), [0; 4]);
    // A copy-on-write view may be opened on a read-only open, and stays private.
    let ro = FileMapping::open_in(&ns, NAME, ViewAccess::Read).unwrap();
    let ro_cow = ro.map_view(ViewAccess::CopyOnWrite, 0, 0).unwrap();
    ro_cow.write(48, b"priv").unwrap();
    assert_eq!(read_bytes(&v, 48, 4), [0; 4]);
    peer.close_input();
    assert!(peer.wait_timeout(T).unwrap().success());
}

#[test]
fn read_only_mapping_refuses_write_views_in_every_process() {
    const NAME: &str = "read-only";
    let t = test_case!();
    t.role("creator", |ctx| {
        let ns = ctx_ns(ctx);
        let m = FileMapping::builder()
            .name(NAME)?
            .size(page() as u64)
            .protection(Protection::ReadOnly)
            .namespace(ns)
            .create()?;
        ensure(!m.already_existed(), "created")?;
        ctx.send_str("ready")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut creator = t.spawn("creator").start();
    creator.expect("ready", T).unwrap();
    let opened = FileMapping::open_in(&ns, NAME, ViewAccess::Write).unwrap();
    assert_kind(
        opened.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view through a write-access open",
    );
    let created = create_named(&ns, NAME, page() as u64);
    assert!(created.already_existed());
    assert_kind(
        created.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view through a read-write create of the existing name",
    );
    // Reading and private copies remain possible.
    let r = opened.map_view(ViewAccess::Read, 0, 0).unwrap();
    let cow = created.map_view(ViewAccess::CopyOnWrite, 0, 0).unwrap();
    cow.write(0, b"mine").unwrap();
    assert_eq!(read_bytes(&r, 0, 4), [0; 4]);

    // A handle opened for copy-on-write access maps no write view either, whatever the
    // mapping's protection.
    let rw = create_named(&ns, "read-write", page() as u64);
    let copy = FileMapping::open_in(&ns, "read-write", ViewAccess::CopyOnWrite).unwrap();
    assert_kind(
        copy.map_view(ViewAccess::Write, 0, 0),
        ErrorKind::AccessDenied,
        "write view through a copy-access open",
    );
    copy.map_view(ViewAccess::CopyOnWrite, 0, 0)
        .unwrap()
        .write(0, b"x")
        .unwrap();
    assert_eq!(
        read_bytes(&rw.map_view(ViewAccess::Read, 0, 0).unwrap(), 0, 1),
        [0]
    );
}

#[test]
fn damaged_shared_memory_is_refused_rather_than_mapped() {
    const NAME: &str = "damaged";
    let t = test_case!();
    t.role("holder", |ctx| {
        let _m = create_named(&ctx_ns(ctx), NAME, 4 * page() as u64);
        ctx.send_str("ready")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut holder = t.spawn("holder").start();
    holder.expect("ready", T).unwrap();
    // Another program shrinks the shared memory behind ipckit's back.
    let shm = OpenOptions::new()
        .write(true)
        .open(shm_file(&ns, NAME))
        .unwrap();
    shm.set_len(page() as u64).unwrap();
    assert_kind(
        FileMapping::open_in(&ns, NAME, ViewAccess::Read),
        ErrorKind::Protocol,
        "open of a truncated mapping",
    );
    assert_kind(
        FileMapping::builder()
            .name(NAME)
            .unwrap()
            .size(page() as u64)
            .namespace(ns.clone())
            .create(),
        ErrorKind::Protocol,
        "create on a truncated mapping",
    );
    holder.close_input();
    assert!(holder.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
}

#[test]
fn concurrent_create_and_close_never_fail_and_leave_nothing() {
    const NAME: &str = r"Local\churn";
    const ROUNDS: usize = 200;
    let t = test_case!();
    t.role("churn", |ctx| {
        let ns = ctx_ns(ctx);
        let me = std::process::id().to_le_bytes();
        for round in 0..ROUNDS {
            let m = FileMapping::builder()
                .name(NAME)?
                .size(page() as u64)
                .namespace(ns.clone())
                .create()
                .map_err(|e| format!("round {round}: create: {e}"))?;
            let v = m.map_view(ViewAccess::Write, 0, 0)?;
            v.write(0, &me)?;
            // A second handle by name, while this one holds the object.
            let o = FileMapping::open_in(&ns, NAME, ViewAccess::Read)
                .map_err(|e| format!("round {round}: open while held: {e}"))?;
            ensure(o.size() == page() as u64, "size")?;
        }
        ctx.send_str("done")?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut peers: Vec<_> = (0..3).map(|_| t.spawn("churn").start()).collect();
    for p in &mut peers {
        p.expect("done", Duration::from_secs(30)).unwrap();
        assert!(p.wait_timeout(T).unwrap().success());
    }
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    assert_kind(
        FileMapping::open_in(&ns, NAME, ViewAccess::Read),
        ErrorKind::NotFound,
        "after the churn",
    );
}

#[test]
fn create_on_an_existing_name_opens_it_and_its_size_wins() {
    const NAME: &str = r"Local\existing";
    let t = test_case!();
    t.role("second", |ctx| {
        let ns = ctx_ns(ctx);
        for size in [page() as u64, 16 * page() as u64] {
            let m = create_named(&ns, NAME, size);
            ensure(m.already_existed(), "create found the existing mapping")?;
            ensure(
                m.size() == 2 * page() as u64,
                format!("size {} after asking for {size}", m.size()),
            )?;
            let v = m.map_view(ViewAccess::Write, 0, 0)?;
            ensure(read_bytes(&v, 0, 5) == b"first", "existing data")?;
            ensure(v.len() == 2 * page(), "view to the end")?;
        }
        let m = create_named(&ns, NAME, 1);
        m.map_view(ViewAccess::Write, 0, 0)?
            .write(page(), b"second")?;
        ctx.send_str("done")?;
        Ok(())
    });

    let ns = ns_of(&t);
    let m = create_named(&ns, NAME, 2 * page() as u64);
    assert!(!m.already_existed());
    let v = m.map_view(ViewAccess::Write, 0, 0).unwrap();
    v.write(0, b"first").unwrap();
    let files = object_files(&ns);
    let mut second = t.spawn("second").start();
    second.expect("done", T).unwrap();
    assert!(second.wait_timeout(T).unwrap().success());
    assert_eq!(read_bytes(&v, page(), 6), b"second");
    assert_eq!(object_files(&ns), files);
    assert_eq!(m.size(), 2 * page() as u64);
}

// ---------------------------------------------------------------------------------------------
// Properties (in one process).

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A view is granted exactly when its offset is aligned and it lies within the mapping;
    /// otherwise the error is `InvalidParameter`.
    #[test]
    fn view_bounds_are_checked(
        pages in 1usize..4,
        offset in 0u64..(5 * 4096),
        len in 0usize..(5 * 4096),
        align in any::<bool>(),
    ) {
        let size = (pages * page()) as u64;
        let offset = if align { offset / page() as u64 * page() as u64 } else { offset };
        let m = FileMapping::builder().size(size).create().unwrap();
        let fits = offset % page() as u64 == 0
            && offset < size
            && len as u64 <= size - offset;
        match m.map_view(ViewAccess::Read, offset, len) {
            Ok(v) => {
                prop_assert!(fits, "view {offset}+{len} of {size} granted");
                let want = if len == 0 { (size - offset) as usize } else { len };
                prop_assert_eq!(v.len(), want);
            }
            Err(e) => {
                prop_assert!(!fits, "view {offset}+{len} of {size} refused: {e}");
                prop_assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            }
        }
    }

    /// Writes through one handle's view read back identically through another handle's view at
    /// another offset, and accesses outside the view are refused without effect.
    #[test]
    fn writes_read_back_through_another_handle(
        writes in proptest::collection::vec((0usize..(2 * 4096 + 64), proptest::collection::vec(any::<u8>(), 0..100)), 1..20),
    ) {
        let dir = ipckit_testkit::TestDir::new("ipckit-mapping-prop").unwrap();
        let ns = Namespace::at(dir.path().join("ns"));
        let size = 2 * page();
        let a = create_named(&ns, "prop", size as u64);
        let b = FileMapping::open_in(&ns, "prop", ViewAccess::Read).unwrap();
        let va = a.map_view(ViewAccess::Write, 0, 0).unwrap();
        let vb = b.map_view(ViewAccess::Read, page() as u64, 0).unwrap();
        let mut model = vec![0u8; size];
        for (offset, data) in &writes {
            let r = va.write(*offset, data);
            if offset + data.len() <= size {
                prop_assert!(r.is_ok());
                model[*offset..offset + data.len()].copy_from_slice(data);
            } else {
                prop_assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidParameter);
            }
        }
        prop_assert_eq!(read_bytes(&va, 0, size), model.clone());
        prop_assert_eq!(read_bytes(&vb, 0, page()), model[page()..].to_vec());
        drop((va, vb, a, b));
        prop_assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    }
}
