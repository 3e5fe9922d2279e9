//! Tests of the harness with real processes.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ipckit_testkit::{
    MAX_FRAME_LEN, Peer, RUNTIME_DIR_ENV, exit_code, process_exists, process_state, test_case,
    wait_for,
};

const T: Duration = Duration::from_secs(10);

/// Sleeps until killed.
fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn echo_roundtrip_of_several_sizes() {
    let t = test_case!();
    t.role("echo", |ctx| {
        while let Some(msg) = ctx.recv()? {
            ctx.send(&msg)?;
        }
        Ok(())
    });

    let mut peer = t.spawn("echo").start();
    for size in [0, 1, 4, 5, 4096, 65_539, 1024 * 1024] {
        let data = pattern(size);
        peer.send(&data).unwrap();
        let back = peer.recv_timeout(T).unwrap();
        assert!(back == data, "frame of {size} bytes came back different");
    }
    peer.send_str("last").unwrap();
    peer.expect("last", T).unwrap();
    peer.close_input();
    assert_eq!(peer.recv().unwrap(), None, "echo closes after its input");
    let status = peer.wait_timeout(T).unwrap();
    assert!(status.success(), "{status}\n{}", peer.stderr());
}

#[test]
fn oversized_frames_are_refused_by_the_sender() {
    let t = test_case!();
    t.role("idle", |ctx| {
        while ctx.recv()?.is_some() {}
        Ok(())
    });
    let mut peer = t.spawn("idle").start();
    let err = peer.send(&vec![0; MAX_FRAME_LEN + 1]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    // Nothing was written: the channel still works.
    peer.send(b"fine").unwrap();
    peer.close_input();
    assert!(peer.wait_timeout(T).unwrap().success());
}

#[test]
fn kill_sends_sigkill_and_reaps() {
    let t = test_case!();
    t.role("sleeper", |ctx| {
        ctx.send_str("ready")?;
        sleep_forever()
    });

    let mut peer = t.spawn("sleeper").start();
    peer.expect("ready", T).unwrap();
    let pid = peer.pid();
    assert!(process_exists(pid));
    assert!(peer.is_alive());

    let status = peer.kill().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(
        !process_exists(pid),
        "pid {pid} still exists after kill (state {:?})",
        process_state(pid)
    );
    assert!(!peer.is_alive());
    assert_eq!(peer.exit_status(), Some(status));
    // Killing again is harmless and reports the same status.
    assert_eq!(peer.kill().unwrap(), status);
}

#[test]
fn dropping_a_live_peer_kills_it() {
    let t = test_case!();
    t.role("sleeper", |ctx| {
        ctx.send_str("ready")?;
        sleep_forever()
    });

    let mut peer = t.spawn("sleeper").start();
    peer.expect("ready", T).unwrap();
    let pid = peer.pid();
    assert!(process_exists(pid));
    drop(peer);
    assert!(
        !process_exists(pid),
        "pid {pid} still exists after drop (state {:?})",
        process_state(pid)
    );
}

#[test]
fn dropping_peers_while_panicking_kills_them() {
    let t = test_case!();
    t.role("sleeper", |ctx| {
        ctx.send_str("ready")?;
        sleep_forever()
    });

    let mut peer = t.spawn("sleeper").start();
    peer.expect("ready", T).unwrap();
    let pid = peer.pid();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _peer = peer;
        panic!("deliberate failure with a live peer");
    }));
    assert!(result.is_err());
    assert!(!process_exists(pid), "state {:?}", process_state(pid));
}

#[test]
fn wait_timeout_kills_a_hung_peer() {
    let t = test_case!();
    t.role("hung", |ctx| {
        eprintln!("hung peer: about to hang");
        ctx.send_str("ready")?;
        sleep_forever()
    });

    let mut peer = t.spawn("hung").start();
    peer.expect("ready", T).unwrap();
    let pid = peer.pid();
    let err = peer.wait_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("killed with SIGKILL"), "{msg}");
    assert!(msg.contains("hung peer: about to hang"), "{msg}");
    assert!(!process_exists(pid), "state {:?}", process_state(pid));
    let status = peer.exit_status().expect("reaped");
    assert_eq!(status.signal(), Some(9), "{status}");
}

#[test]
fn role_error_exits_with_code_1_and_is_in_stderr() {
    let t = test_case!();
    t.role("failing", |ctx| {
        ctx.expect("go", T)?;
        Err("deliberate role failure 42".into())
    });

    let mut peer = t.spawn("failing").start();
    peer.send_str("go").unwrap();
    let status = peer.wait_timeout(T).unwrap();
    assert_eq!(status.code(), Some(exit_code::ROLE_FAILED), "{status}");
    let out = peer.wait_output_timeout(T).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deliberate role failure 42"), "{stderr}");
    assert!(stderr.contains("`failing`"), "{stderr}");
}

#[test]
fn role_panic_exits_with_code_101() {
    let t = test_case!();
    t.role("panicking", |_ctx| panic!("deliberate role panic 7"));

    let mut peer = t.spawn("panicking").start();
    let status = peer.wait_timeout(T).unwrap();
    assert_eq!(status.code(), Some(exit_code::PANICKED), "{status}");
    // The panic message is in stderr, and in the error of a failed receive.
    let err = peer.recv_timeout(T).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("deliberate role panic 7"), "{err}");
}

#[test]
fn peer_exiting_before_connecting_is_reported() {
    // In the peer, exit before the role connects.
    if std::env::var_os("HARNESS_EXIT_EARLY").is_some() {
        eprintln!("harness: leaving before connecting");
        std::process::exit(7);
    }
    let t = test_case!();
    t.role("never-connects", |_ctx| Ok(()));

    let err = t
        .spawn("never-connects")
        .env("HARNESS_EXIT_EARLY", "1")
        .try_start()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("before connecting"), "{msg}");
    assert!(msg.contains("exit status: 7"), "{msg}");
    assert!(msg.contains("harness: leaving before connecting"), "{msg}");
}

#[test]
fn peer_not_connecting_in_time_is_killed() {
    if std::env::var_os("HARNESS_STALL").is_some() {
        // Report the pid, then never connect.
        eprintln!("stalling pid {}", std::process::id());
        sleep_forever();
    }
    let t = test_case!();
    t.role("stalls", |_ctx| Ok(()));

    let err = t
        .spawn("stalls")
        .env("HARNESS_STALL", "1")
        .connect_timeout(Duration::from_millis(500))
        .try_start()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("did not connect"), "{msg}");
    // The peer was killed and reaped: its pid, from the message, is gone.
    let pid: u32 = msg
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {msg}"));
    assert!(!process_exists(pid), "state {:?}", process_state(pid));
}

#[test]
fn undeclared_role_is_a_setup_failure_in_the_peer() {
    if std::env::var_os("HARNESS_ASK_UNKNOWN").is_some() {
        // A role the peer does not declare: it must exit, not run the test.
        let t = test_case!();
        t.role("known", |_ctx| Ok(()));
        let _ = t.spawn("known");
        unreachable!("the peer must exit before spawning");
    }
    let t = test_case!();
    t.role("known", |_ctx| Ok(()));
    t.role("declared-in-parent-only", |_ctx| Ok(()));
    let err = t
        .spawn("declared-in-parent-only")
        .env("HARNESS_ASK_UNKNOWN", "1")
        .try_start()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exit status: 2"), "{msg}");
    assert!(msg.contains("is not declared"), "{msg}");
}

#[test]
fn args_and_env_reach_the_role() {
    let t = test_case!();
    t.role("reporter", |ctx| {
        let args: Vec<String> = ctx
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        ctx.send_str(&args.join("|"))?;
        ctx.send_str(&ctx.env("HARNESS_VALUE").unwrap_or_default())?;
        ctx.send_str(&ctx.parent_pid().to_string())?;
        ctx.send_str(ctx.role())?;
        Ok(())
    });

    let mut peer = t
        .spawn("reporter")
        .arg("first")
        .args(["with space", "--looks-like-a-flag", ""])
        .env("HARNESS_VALUE", "v=1")
        .start();
    assert_eq!(
        peer.recv_str_timeout(T).unwrap(),
        "first|with space|--looks-like-a-flag|"
    );
    assert_eq!(peer.recv_str_timeout(T).unwrap(), "v=1");
    assert_eq!(
        peer.recv_str_timeout(T).unwrap(),
        std::process::id().to_string()
    );
    assert_eq!(peer.recv_str_timeout(T).unwrap(), "reporter");
    assert_eq!(peer.recv_str().unwrap(), None);
    assert!(peer.wait_timeout(T).unwrap().success());
}

/// Polls until `pid` is gone, reaping it if it became our child (this test
/// process is a child subreaper, see below). Kills it if it does not go.
fn assert_disappears(pid: u32, what: &str) {
    let raw = i32::try_from(pid).expect("pid fits");
    let pid_t = rustix::process::Pid::from_raw(raw).expect("nonzero pid");
    let gone = wait_for(T, || {
        let _ = rustix::process::waitpid(Some(pid_t), rustix::process::WaitOptions::NOHANG);
        !process_exists(pid)
    });
    if !gone {
        let state = process_state(pid);
        let _ = rustix::process::kill_process(pid_t, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(pid_t), rustix::process::WaitOptions::empty());
        panic!("{what} (pid {pid}) survived its parent's death (state {state:?})");
    }
}

/// Orphans are re-parented to the nearest child subreaper, or to pid 1 —
/// which in a container may never reap them. Making this process a subreaper
/// lets the test reap the orphaned grandchild itself and check that it is
/// really gone. (It only affects orphans, which no other test creates.)
fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("prctl(PR_SET_CHILD_SUBREAPER)");
}

#[test]
fn grandchild_dies_when_its_parent_is_killed() {
    let t = test_case!();
    // A role may spawn a role declared after it: the new peer runs the test
    // function from the top, too.
    t.role("intermediate", |ctx| {
        let mut grandchild = t.spawn("grandchild").start();
        let pid = grandchild.recv_str_timeout(T)?;
        ctx.send_str(&pid)?;
        // Keep `grandchild` alive until this process is killed.
        sleep_forever()
    });
    t.role("grandchild", |ctx| {
        ctx.send_str(&std::process::id().to_string())?;
        sleep_forever()
    });

    become_subreaper();
    let mut intermediate = t.spawn("intermediate").start();
    let grandchild: u32 = intermediate.recv_str_timeout(T).unwrap().parse().unwrap();
    assert!(process_exists(grandchild));
    assert_ne!(grandchild, intermediate.pid());

    let status = intermediate.kill().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_disappears(grandchild, "grandchild role");
}

#[test]
fn supervised_command_dies_when_its_parent_is_killed() {
    let t = test_case!();
    t.role("intermediate", |ctx| {
        let mut sleeper = t.command(Command::new("sleep")).arg("1000").start();
        ctx.send_str(&sleeper.pid().to_string())?;
        // The pid is the program's own once it has exec'ed.
        let exec_done = wait_for(T, || {
            fs::read_to_string(format!("/proc/{}/comm", sleeper.pid()))
                .is_ok_and(|comm| comm.trim() == "sleep")
        });
        ctx.send_str(if exec_done { "exec'ed" } else { "not exec'ed" })?;
        let _ = sleeper.is_alive();
        sleep_forever()
    });

    become_subreaper();
    let mut intermediate = t.spawn("intermediate").start();
    let grandchild: u32 = intermediate.recv_str_timeout(T).unwrap().parse().unwrap();
    intermediate.expect("exec'ed", T).unwrap();
    let status = intermediate.kill().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_disappears(grandchild, "supervised `sleep`");
}

#[test]
fn namespace_is_private_passed_to_peers_and_removed() {
    let t = test_case!();
    t.role("inspector", |ctx| {
        let from_env = std::env::var(RUNTIME_DIR_ENV)?;
        ctx.send_str(&from_env)?;
        ctx.send_str(&ctx.namespace().to_string_lossy())?;
        let nested = ctx.namespace().join("made-by-peer/deeper");
        fs::create_dir_all(&nested)?;
        fs::write(nested.join("object"), b"peer data")?;
        ctx.send_str("written")?;
        Ok(())
    });

    let ns: PathBuf = t.namespace().to_owned();
    assert!(ns.is_absolute());
    let mode = fs::metadata(&ns).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "namespace mode {mode:o}");
    assert_eq!(fs::read_dir(&ns).unwrap().count(), 0, "starts empty");

    let mut peer = t.spawn("inspector").start();
    assert_eq!(PathBuf::from(peer.recv_str_timeout(T).unwrap()), ns);
    assert_eq!(PathBuf::from(peer.recv_str_timeout(T).unwrap()), ns);
    peer.expect("written", T).unwrap();
    assert!(peer.wait_timeout(T).unwrap().success());
    assert_eq!(
        fs::read(ns.join("made-by-peer/deeper/object")).unwrap(),
        b"peer data"
    );

    // The namespace outlives the test case while a peer holds it.
    drop(t);
    assert!(ns.exists(), "a peer still refers to the namespace");
    drop(peer);
    assert!(!ns.exists(), "{} was not removed", ns.display());
}

#[test]
fn namespace_is_removed_when_the_test_panics() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = test_case!();
        fs::write(t.namespace().join("file"), b"x").unwrap();
        seen = Some(t.namespace().to_owned());
        panic!("deliberate failure");
    }));
    assert!(result.is_err());
    let ns = seen.expect("namespace path");
    assert!(!ns.exists(), "{} was not removed", ns.display());
}

#[test]
fn supervised_command_output_is_exactly_the_programs() {
    let t = test_case!();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"printf 'out:%s\n' "$HARNESS_WORD"; echo "ns:$IPCKIT_RUNTIME_DIR"; echo oops >&2; exit 3"#)
        .env("HARNESS_WORD", "hello");
    let mut peer = t.command(cmd).start();
    let out = peer.wait_output_timeout(T).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", peer.report());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out:hello\nns:{}\n", t.namespace().display())
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
}

#[test]
fn supervised_command_that_cannot_run_is_reported() {
    let t = test_case!();
    let mut peer = t
        .command(Command::new("/nonexistent/ipckit-testkit-program"))
        .start();
    let status = peer.wait_timeout(T).unwrap();
    assert_eq!(status.code(), Some(exit_code::EXEC_FAILED), "{status}");
    assert!(
        peer.stderr().contains("cannot execute"),
        "{}",
        peer.stderr()
    );
}

#[test]
fn plain_command_stdin_and_stdout() {
    let mut peer = Peer::command(Command::new("cat")).start();
    peer.stdin().unwrap().write_all(b"through cat\n").unwrap();
    peer.close_input();
    let out = peer.wait_output_timeout(T).unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"through cat\n");
    // A program peer has no control channel.
    let err = peer.send(b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
}

#[test]
fn plain_command_is_killed_on_drop() {
    let peer = Peer::command(Command::new("sleep")).arg("1000").start();
    let pid = peer.pid();
    assert!(process_exists(pid));
    drop(peer);
    assert!(!process_exists(pid), "state {:?}", process_state(pid));
}

#[test]
fn test_case_inside_a_closure_has_the_test_name() {
    let in_closure = || test_case!().name().to_owned();
    let in_nested_closure = || {
        (0..1)
            .map(|_| test_case!().name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(in_closure(), "test_case_inside_a_closure_has_the_test_name");
    assert_eq!(
        in_nested_closure(),
        vec!["test_case_inside_a_closure_has_the_test_name".to_owned()]
    );
}

mod nested {
    pub(crate) mod deeper {
        use super::super::T;
        use ipckit_testkit::test_case;

        #[test]
        fn roles_work_in_nested_modules() {
            let t = test_case!();
            assert_eq!(t.name(), "nested::deeper::roles_work_in_nested_modules");
            if let Some(thread) = std::thread::current().name()
                && thread != "main"
            {
                assert_eq!(t.name(), thread, "libtest's thread name");
            }
            t.role("namer", |ctx| {
                ctx.send_str(ctx.test_name())?;
                Ok(())
            });
            let mut peer = t.spawn("namer").start();
            assert_eq!(peer.recv_str_timeout(T).unwrap(), t.name());
            assert!(peer.wait_timeout(T).unwrap().success());
        }
    }
}
