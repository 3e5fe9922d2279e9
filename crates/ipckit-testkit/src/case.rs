//! [`TestCase`], roles, and everything that runs inside a peer process.

use std::convert::Infallible;
use std::env;
use std::error::Error;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use rustix::process::{Signal, getppid, set_parent_process_death_signal};

use crate::channel::Channel;
use crate::peer::PeerBuilder;
use crate::util::{TestDir, create_private_dir};
use crate::{RUNTIME_DIR_ENV, exit_code};

/// Role the peer process must run (set for role peers only).
pub(crate) const ENV_ROLE: &str = "IPCKIT_TESTKIT_ROLE";
/// Program a supervised command peer must execute (set for those only).
pub(crate) const ENV_EXEC: &str = "IPCKIT_TESTKIT_EXEC";
/// libtest name of the test the peer belongs to.
pub(crate) const ENV_TEST: &str = "IPCKIT_TESTKIT_TEST";
/// Path of the parent's control socket.
pub(crate) const ENV_CONTROL: &str = "IPCKIT_TESTKIT_CONTROL";
/// Pid of the process that spawned the peer.
pub(crate) const ENV_PARENT_PID: &str = "IPCKIT_TESTKIT_PARENT_PID";
/// Private directory holding the control sockets of this test case.
pub(crate) const ENV_DIR: &str = "IPCKIT_TESTKIT_DIR";
/// Number of arguments passed as `IPCKIT_TESTKIT_ARG_<i>`.
pub(crate) const ENV_ARGC: &str = "IPCKIT_TESTKIT_ARGC";
/// Prefix of the argument variables.
pub(crate) const ENV_ARG_PREFIX: &str = "IPCKIT_TESTKIT_ARG_";
/// Prefix shared by every variable above.
const ENV_PREFIX: &str = "IPCKIT_TESTKIT_";

/// Name of the marker function defined by [`test_case!`](crate::test_case).
const ANCHOR: &str = "__ipckit_testkit_anchor";

/// What a role closure returns: `Ok(())` makes the peer exit with code 0,
/// `Err(e)` prints `e` (and its sources) to stderr and exits with code 1.
pub type RoleResult = Result<(), Box<dyn Error>>;

/// One multi-process test: its libtest name, its roles, and its private
/// namespace directory. Created by [`test_case!`](crate::test_case); see the
/// [crate documentation](crate) for the model.
///
/// The same value exists in the test process (the *parent*) and in every
/// peer process, because a peer re-executes the very same test function:
///
/// * in the parent, [`role`](Self::role) only records the role name, and
///   [`spawn`](Self::spawn) starts peers;
/// * in a peer, [`role`](Self::role) runs the closure of the requested role
///   and then exits the process, so the code after the role declarations is
///   never reached there.
///
/// In the parent, dropping the value removes the namespace directory
/// (recursively), also while unwinding from a failed assertion. Peers keep
/// the directory alive until they are dropped themselves.
pub struct TestCase {
    name: String,
    mode: Mode,
    dirs: Arc<CaseDirs>,
    declared: Mutex<Vec<String>>,
    in_role: AtomicBool,
}

#[derive(Debug)]
enum Mode {
    Parent,
    Peer { role: String },
}

/// Directories shared by a test case and its peers.
#[derive(Debug)]
pub(crate) struct CaseDirs {
    /// Where control sockets are bound (private, `0700`).
    pub(crate) control: PathBuf,
    /// The namespace handed to peers as `IPCKIT_RUNTIME_DIR`.
    pub(crate) namespace: PathBuf,
    /// Owns (and removes on drop) the directories in the test process.
    _owner: Option<TestDir>,
}

impl Drop for CaseDirs {
    fn drop(&mut self) {
        // In the test process only: the namespace's POSIX shared-memory objects live in
        // /dev/shm, outside the namespace folder that `_owner` removes.
        if self._owner.is_some() {
            crate::util::remove_namespace_shm(&self.namespace);
        }
    }
}

impl fmt::Debug for TestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCase")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("namespace", &self.dirs.namespace)
            .finish_non_exhaustive()
    }
}

impl TestCase {
    /// Implementation detail of [`test_case!`](crate::test_case).
    ///
    /// `anchor` is the type name of a function defined inside the test
    /// function. In a supervised-command peer this call never returns: the
    /// process becomes the command.
    #[doc(hidden)]
    pub fn __from_anchor(anchor: &'static str) -> TestCase {
        let name = test_name_from_anchor(anchor).unwrap_or_else(|| {
            panic!(
                "ipckit-testkit: cannot derive a libtest name from `{anchor}`; \
                 invoke test_case!() directly in the body of a #[test] function"
            )
        });
        match env::var_os(ENV_TEST) {
            None => TestCase::parent(name),
            Some(target) if target == OsStr::new(&name) => {
                if let Some(program) = env::var_os(ENV_EXEC) {
                    run_supervised_command(&name, &program);
                }
                TestCase::peer(name)
            }
            Some(target) => fail_setup(&format!(
                "this peer was started for test `{}` but test_case!() computed `{name}`",
                target.to_string_lossy()
            )),
        }
    }

    fn parent(name: String) -> TestCase {
        let owner = TestDir::new("ipckit-test").unwrap_or_else(|e| {
            panic!("ipckit-testkit: cannot create the directory of test `{name}`: {e}")
        });
        let namespace = owner.path().join("ns");
        if let Err(e) = create_private_dir(&namespace) {
            panic!(
                "ipckit-testkit: cannot create namespace {}: {e}",
                namespace.display()
            );
        }
        TestCase {
            name,
            mode: Mode::Parent,
            dirs: Arc::new(CaseDirs {
                control: owner.path().to_owned(),
                namespace,
                _owner: Some(owner),
            }),
            declared: Mutex::new(Vec::new()),
            in_role: AtomicBool::new(false),
        }
    }

    fn peer(name: String) -> TestCase {
        let Some(role) = env::var_os(ENV_ROLE) else {
            fail_setup(&format!(
                "{ENV_TEST} is set but neither {ENV_ROLE} nor {ENV_EXEC} is"
            ));
        };
        let role = role.into_string().unwrap_or_else(|r| {
            fail_setup(&format!("role name {r:?} is not UTF-8"));
        });
        let control = env_path(ENV_DIR).unwrap_or_else(|e| fail_setup(&e.to_string()));
        let namespace = env_path(RUNTIME_DIR_ENV).unwrap_or_else(|e| fail_setup(&e.to_string()));
        TestCase {
            name,
            mode: Mode::Peer { role },
            dirs: Arc::new(CaseDirs {
                control,
                namespace,
                _owner: None,
            }),
            declared: Mutex::new(Vec::new()),
            in_role: AtomicBool::new(false),
        }
    }

    /// The libtest name of the test (module path without the crate name,
    /// e.g. `tests::echo_roundtrip`), as accepted by `--exact`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role this process runs, or `None` in the test process itself.
    pub fn current_role(&self) -> Option<&str> {
        match &self.mode {
            Mode::Parent => None,
            Mode::Peer { role } => Some(role),
        }
    }

    /// The test's private namespace directory (mode `0700`, initially empty).
    ///
    /// Every peer receives it as the `IPCKIT_RUNTIME_DIR` environment
    /// variable, which the library honors as the override of its per-user
    /// runtime directory, so objects created by peers of one test never
    /// collide with those of another test. Tests pass it explicitly to
    /// in-process code. It is removed, recursively, when the `TestCase` and
    /// all the [`Peer`](crate::Peer)s spawned from it are dropped. In a peer
    /// process this is the parent's directory.
    pub fn namespace(&self) -> &Path {
        &self.dirs.namespace
    }

    /// Declares the role `name`, implemented by `body`.
    ///
    /// * In the test process, this records the name and returns at once.
    /// * In a peer started with [`spawn(name)`](Self::spawn), this arms the
    ///   parent-death signal, connects the control channel, runs `body`, and
    ///   **exits the process**: with code 0 if `body` returned `Ok`, with
    ///   code 1 after printing the error to stderr if it returned `Err`; a
    ///   panic in `body` fails the libtest test, which exits with code 101.
    /// * In a peer running another role, this returns at once.
    ///
    /// Declare every role right after [`test_case!`](crate::test_case),
    /// before any other work: a peer executes the test function from the top
    /// until it reaches its role.
    ///
    /// # Panics
    ///
    /// In the test process, if `name` was already declared.
    pub fn role<F>(&self, name: &str, body: F)
    where
        F: FnOnce(&mut RoleCtx) -> RoleResult,
    {
        match &self.mode {
            Mode::Parent => {
                let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
                assert!(
                    !declared.iter().any(|d| d == name),
                    "ipckit-testkit: role `{name}` declared twice in test `{}`",
                    self.name
                );
                declared.push(name.to_owned());
            }
            Mode::Peer { role } => {
                if role == name && !self.in_role.swap(true, Ordering::SeqCst) {
                    let code = self.run_role(name, body);
                    exit_now(code);
                }
            }
        }
    }

    fn run_role<F>(&self, name: &str, body: F) -> i32
    where
        F: FnOnce(&mut RoleCtx) -> RoleResult,
    {
        enter_peer_process();
        let mut ctx = match RoleCtx::connect(self, name) {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("ipckit-testkit: role `{name}`: cannot join the control channel: {e}");
                return exit_code::SETUP_FAILED;
            }
        };
        let result = body(&mut ctx);
        drop(ctx);
        match result {
            Ok(()) => exit_code::SUCCESS,
            Err(e) => {
                let mut msg = format!(
                    "ipckit-testkit: role `{name}` of test `{}` failed: {e}",
                    self.name
                );
                let mut source = e.source();
                while let Some(cause) = source {
                    msg.push_str(&format!("\n  caused by: {cause}"));
                    source = cause.source();
                }
                eprintln!("{msg}");
                exit_code::ROLE_FAILED
            }
        }
    }

    /// Prepares a peer process running the role `role` of this test; finish
    /// with [`PeerBuilder::start`] or [`PeerBuilder::try_start`].
    ///
    /// The peer re-executes the current test binary
    /// ([`std::env::current_exe`]) as
    /// `<test name> --exact --nocapture --test-threads=1 --include-ignored`
    /// with the role, the control socket, the parent pid and the namespace
    /// in its environment. Its stdin is `/dev/null`; stdout and stderr are
    /// captured.
    ///
    /// Spawn peers from the thread that runs the test (or from a role
    /// closure in a peer): the parent-death signal fires when the *thread*
    /// that spawned the peer exits.
    ///
    /// # Panics
    ///
    /// In the test process, if `role` was not declared with
    /// [`role`](Self::role) before.
    pub fn spawn(&self, role: &str) -> PeerBuilder<'_> {
        match &self.mode {
            Mode::Parent => {
                let declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
                assert!(
                    declared.iter().any(|d| d == role),
                    "ipckit-testkit: role `{role}` is not declared in test `{}` \
                     (declared: {declared:?}); call TestCase::role before spawning",
                    self.name
                );
            }
            Mode::Peer { .. } => self.check_in_role(),
        }
        PeerBuilder::role(self, role)
    }

    /// Prepares a peer process running an arbitrary program with the same
    /// guarantees as a role peer: killed on drop, bounded waits, captured
    /// output, `IPCKIT_RUNTIME_DIR` set to the [namespace](Self::namespace),
    /// **and** killed by the kernel if the test process dies.
    ///
    /// The parent-death signal is armed by first starting a re-executed copy
    /// of the test binary, which sets it and then `exec`s the program in the
    /// same process (the signal survives `execve`, except for set-user-ID or
    /// file-capability programs). The program, its arguments, the
    /// environment changes (`env`, `env_remove`) and the working directory
    /// of `cmd` are carried over; `env_clear` and stdio settings are not
    /// (stdin is a pipe, see [`Peer::stdin`](crate::Peer::stdin), stdout and
    /// stderr are captured). For a program that must not go through this
    /// indirection, use [`Peer::command`](crate::Peer::command).
    pub fn command(&self, cmd: Command) -> PeerBuilder<'_> {
        if let Mode::Peer { .. } = self.mode {
            self.check_in_role();
        }
        PeerBuilder::supervised(self, cmd)
    }

    pub(crate) fn dirs(&self) -> &Arc<CaseDirs> {
        &self.dirs
    }

    /// In a peer, reaching parent-only code outside any role means the
    /// requested role is not declared (or declared too late).
    fn check_in_role(&self) {
        if !self.in_role.load(Ordering::SeqCst) {
            self.fail_undeclared();
        }
    }

    fn fail_undeclared(&self) -> ! {
        let role = self.current_role().unwrap_or_default();
        fail_setup(&format!(
            "role `{role}` is not declared in test `{}`; declare every role with \
             TestCase::role right after test_case!(), before spawning peers",
            self.name
        ))
    }
}

impl Drop for TestCase {
    fn drop(&mut self) {
        if let Mode::Peer { .. } = self.mode
            && !self.in_role.load(Ordering::SeqCst)
            && !std::thread::panicking()
        {
            self.fail_undeclared();
        }
    }
}

/// The peer side of a role: the control channel to the parent, the
/// arguments passed with [`PeerBuilder::arg`], and the environment.
///
/// Unlike the parent side, receiving here has no default timeout: a role
/// that waits for its parent is killed by the parent (or by the kernel when
/// the parent dies), and sees end of stream when the parent closes its side.
#[derive(Debug)]
pub struct RoleCtx {
    role: String,
    test: String,
    args: Vec<OsString>,
    namespace: PathBuf,
    parent_pid: u32,
    channel: Channel,
}

impl RoleCtx {
    fn connect(case: &TestCase, role: &str) -> io::Result<RoleCtx> {
        let control = env_path(ENV_CONTROL)?;
        let stream = UnixStream::connect(&control).map_err(|e| {
            io::Error::new(e.kind(), format!("connect to {}: {e}", control.display()))
        })?;
        Ok(RoleCtx {
            role: role.to_owned(),
            test: case.name.clone(),
            args: read_args()?,
            namespace: case.dirs.namespace.clone(),
            parent_pid: parent_pid_from_env()?,
            channel: Channel::new(stream),
        })
    }

    /// The name of the role being run.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The libtest name of the test.
    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// The arguments given with [`PeerBuilder::arg`]/[`PeerBuilder::args`],
    /// in order.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Argument `index` as UTF-8, or `None` if it is missing or not UTF-8.
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).and_then(|a| a.to_str())
    }

    /// An environment variable of this process (for example one set with
    /// [`PeerBuilder::env`]), or `None` if unset or not UTF-8.
    pub fn env(&self, key: &str) -> Option<String> {
        env::var(key).ok()
    }

    /// The test's namespace directory (also in `IPCKIT_RUNTIME_DIR`).
    pub fn namespace(&self) -> &Path {
        &self.namespace
    }

    /// The pid of the process that spawned this peer.
    pub fn parent_pid(&self) -> u32 {
        self.parent_pid
    }

    /// Sends one frame to the parent. Takes `&self`, so it can be called
    /// while other parts of the context are borrowed; frames sent from
    /// several threads are serialized and never interleave.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `data` is longer than
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN); an I/O error if the parent
    /// is gone.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        self.channel.send(data, None)
    }

    /// Sends a UTF-8 string as one frame.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_str(&self, text: &str) -> io::Result<()> {
        self.send(text.as_bytes())
    }

    /// Receives one frame, blocking until one arrives. Returns `Ok(None)`
    /// when the parent closed its side (for example with
    /// [`Peer::close_input`](crate::Peer::close_input)) or exited.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a frame longer than
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN); `UnexpectedEof` if the
    /// stream ends inside a frame.
    pub fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.channel.recv(None)
    }

    /// Receives one frame, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// `TimedOut` if no complete frame arrived in time (a partly received
    /// frame is kept for the next call); `UnexpectedEof` if the parent closed
    /// its side; otherwise as [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        self.channel
            .recv(Some(timeout))?
            .ok_or_else(closed_by_parent)
    }

    /// Receives one frame as UTF-8; `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the frame is not UTF-8; otherwise as
    /// [`recv`](Self::recv).
    pub fn recv_str(&mut self) -> io::Result<Option<String>> {
        self.recv()?.map(into_string).transpose()
    }

    /// Receives one UTF-8 frame, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv_timeout`](Self::recv_timeout) and [`recv_str`](Self::recv_str).
    pub fn recv_str_timeout(&mut self, timeout: Duration) -> io::Result<String> {
        into_string(self.recv_timeout(timeout)?)
    }

    /// Receives one frame within `timeout` and checks that it is `expected`.
    ///
    /// # Errors
    ///
    /// `InvalidData` if another frame arrived; otherwise as
    /// [`recv_timeout`](Self::recv_timeout).
    pub fn expect(&mut self, expected: &str, timeout: Duration) -> io::Result<()> {
        let frame = self.recv_timeout(timeout)?;
        check_expected(expected, &frame)
    }

    /// Closes the sending direction: the parent's next receive returns end
    /// of stream. Receiving still works.
    ///
    /// # Errors
    ///
    /// An I/O error from `shutdown(2)`.
    pub fn close_output(&mut self) -> io::Result<()> {
        self.channel.close_send()
    }
}

fn closed_by_parent() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the control channel was closed by the parent",
    )
}

pub(crate) fn into_string(frame: Vec<u8>) -> io::Result<String> {
    String::from_utf8(frame).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame is not UTF-8: {e}"),
        )
    })
}

pub(crate) fn check_expected(expected: &str, frame: &[u8]) -> io::Result<()> {
    if frame == expected.as_bytes() {
        return Ok(());
    }
    const SHOWN: usize = 200;
    let text = String::from_utf8_lossy(&frame[..frame.len().min(SHOWN)]);
    let more = if frame.len() > SHOWN { "…" } else { "" };
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "expected frame {expected:?}, received {text:?}{more} ({} bytes)",
            frame.len()
        ),
    ))
}

/// Derives the libtest name from the type name of the anchor function:
/// `krate::a::b::test_fn::{{closure}}::__ipckit_testkit_anchor` becomes
/// `a::b::test_fn`.
pub(crate) fn test_name_from_anchor(anchor: &str) -> Option<String> {
    let path = anchor.strip_suffix(ANCHOR)?.strip_suffix("::")?;
    let mut segments = path.split("::").filter(|s| !s.starts_with("{{"));
    segments.next()?; // crate name
    let rest: Vec<&str> = segments.collect();
    if rest.is_empty() || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(rest.join("::"))
}

/// The libtest command line that runs only `test` in a fresh process.
pub(crate) fn libtest_command(test: &str) -> io::Result<Command> {
    let exe = env::current_exe()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot locate the test binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg(test).args([
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ]);
    scrub_env(&mut cmd);
    Ok(cmd)
}

/// Removes the harness's own variables inherited from this process, so that
/// children never mistake themselves for peers of this process's parent.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        if key.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            cmd.env_remove(key);
        }
    }
}

/// Passes `args` to a peer through the environment (libtest would
/// interpret extra command-line arguments as filters).
pub(crate) fn set_args<'a>(cmd: &mut Command, args: impl IntoIterator<Item = &'a OsStr>) {
    let mut n = 0usize;
    for arg in args {
        cmd.env(format!("{ENV_ARG_PREFIX}{n}"), arg);
        n += 1;
    }
    cmd.env(ENV_ARGC, n.to_string());
}

fn read_args() -> io::Result<Vec<OsString>> {
    let Some(count) = env::var_os(ENV_ARGC) else {
        return Ok(Vec::new());
    };
    let count: usize = count
        .to_str()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid_env(ENV_ARGC))?;
    (0..count)
        .map(|i| {
            let key = format!("{ENV_ARG_PREFIX}{i}");
            env::var_os(&key).ok_or_else(|| invalid_env(&key))
        })
        .collect()
}

fn env_path(key: &str) -> io::Result<PathBuf> {
    env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| invalid_env(key))
}

fn parent_pid_from_env() -> io::Result<u32> {
    env::var(ENV_PARENT_PID)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid_env(ENV_PARENT_PID))
}

fn invalid_env(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("environment variable {key} is missing or invalid"),
    )
}

/// First thing a peer does: ask the kernel for `SIGKILL` when the parent
/// (thread) dies, then make sure the parent did not die before that, in
/// which case the request came too late and the peer exits at once.
fn enter_peer_process() {
    if let Err(e) = set_parent_process_death_signal(Some(Signal::KILL)) {
        fail_setup(&format!("prctl(PR_SET_PDEATHSIG): {e}"));
    }
    let expected = parent_pid_from_env().unwrap_or_else(|e| fail_setup(&e.to_string()));
    let actual = getppid().map_or(0, |p| p.as_raw_pid());
    if i64::from(actual) != i64::from(expected) {
        eprintln!(
            "ipckit-testkit: parent process {expected} is gone (parent is now {actual}); exiting"
        );
        exit_now(exit_code::PARENT_GONE);
    }
}

/// Supervised-command peer: arm the parent-death signal, receive the stdout
/// pipe from the parent over the control socket, and become the program.
fn run_supervised_command(test: &str, program: &OsStr) -> ! {
    enter_peer_process();
    let Err(e) = exec_program(program);
    eprintln!("ipckit-testkit: cannot execute {program:?} for test `{test}`: {e}",);
    exit_now(exit_code::EXEC_FAILED)
}

fn exec_program(program: &OsStr) -> io::Result<Infallible> {
    let control = env_path(ENV_CONTROL)?;
    let stream = UnixStream::connect(&control)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let stdout = recv_fd(&stream)?;
    drop(stream);
    let mut cmd = Command::new(program);
    cmd.args(read_args()?);
    scrub_env(&mut cmd);
    cmd.stdout(Stdio::from(stdout));
    Err(cmd.exec())
}

fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        match recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    if received.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the parent closed the control channel before passing stdout",
        ));
    }
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no file descriptor received on the control channel",
    ))
}

/// Reports a harness setup problem in a peer and exits with
/// [`exit_code::SETUP_FAILED`].
fn fail_setup(msg: &str) -> ! {
    eprintln!("ipckit-testkit: {msg}");
    exit_now(exit_code::SETUP_FAILED)
}

fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_to_test_name() {
        let cases = [
            ("krate::t::__ipckit_testkit_anchor", Some("t")),
            ("krate::a::b::t::__ipckit_testkit_anchor", Some("a::b::t")),
            (
                "krate::a::t::{{closure}}::{{closure}}::__ipckit_testkit_anchor",
                Some("a::t"),
            ),
            ("krate::__ipckit_testkit_anchor", None),
            ("krate::t::other", None),
        ];
        for (anchor, expected) in cases {
            assert_eq!(
                test_name_from_anchor(anchor).as_deref(),
                expected,
                "{anchor}"
            );
        }
    }

    #[test]
    fn macro_computes_the_libtest_name_in_unit_tests() {
        let t = crate::test_case!();
        assert_eq!(
            t.name(),
            "case::tests::macro_computes_the_libtest_name_in_unit_tests"
        );
        // libtest names its worker threads after the test when it runs tests
        // in parallel; check against it when available.
        if let Some(thread) = std::thread::current().name()
            && thread != "main"
        {
            assert_eq!(t.name(), thread);
        }
    }

    #[test]
    fn role_peer_runs_from_a_unit_test_binary() {
        let t = crate::test_case!();
        t.role("answer", |ctx| {
            let question = ctx.recv_str()?.ok_or("no question")?;
            ctx.send_str(&format!("{question}: {}", ctx.test_name()))?;
            Ok(())
        });
        let mut peer = t.spawn("answer").start();
        peer.send_str("name").unwrap();
        assert_eq!(
            peer.recv_str_timeout(Duration::from_secs(10)).unwrap(),
            format!("name: {}", t.name())
        );
        let status = peer.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{status}");
    }

    #[test]
    fn expected_frame_mismatch_is_reported() {
        assert!(check_expected("ready", b"ready").is_ok());
        let err = check_expected("ready", b"nope").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }
}
