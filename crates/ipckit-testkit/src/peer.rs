//! [`Peer`] and [`PeerBuilder`]: starting, talking to, waiting for and
//! killing peer processes.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::sockopt::socket_peercred;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use rustix::process::Pid;

use crate::capture::Capture;
use crate::case::{
    CaseDirs, ENV_CONTROL, ENV_DIR, ENV_EXEC, ENV_PARENT_PID, ENV_ROLE, ENV_TEST, TestCase,
    check_expected, into_string, libtest_command, set_args,
};
use crate::util::unique_name;
use crate::{DEFAULT_CAPTURE_LIMIT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT, RUNTIME_DIR_ENV};

/// How much of the captured stderr is quoted in error messages.
const MESSAGE_STDERR_LIMIT: usize = 16 * 1024;
/// How long to wait for a reaped peer's output pipes to be drained.
const OUTPUT_SETTLE: Duration = Duration::from_secs(1);
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Configures a peer before starting it. Obtained from
/// [`TestCase::spawn`] (a role), [`TestCase::command`] (a supervised
/// program) or [`Peer::command`] (a plain program).
#[derive(Debug)]
#[must_use = "a PeerBuilder does nothing until start() or try_start() is called"]
pub struct PeerBuilder<'t> {
    target: Target<'t>,
    role_args: Vec<OsString>,
    role_env: Vec<(OsString, Option<OsString>)>,
    connect_timeout: Duration,
    io_timeout: Duration,
    capture_limit: usize,
}

#[derive(Debug)]
enum Target<'t> {
    Role { case: &'t TestCase, role: String },
    Supervised { case: &'t TestCase, cmd: Command },
    Plain { cmd: Command },
}

impl<'t> PeerBuilder<'t> {
    fn new(target: Target<'t>) -> Self {
        PeerBuilder {
            target,
            role_args: Vec::new(),
            role_env: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
        }
    }

    pub(crate) fn role(case: &'t TestCase, role: &str) -> Self {
        Self::new(Target::Role {
            case,
            role: role.to_owned(),
        })
    }

    pub(crate) fn supervised(case: &'t TestCase, cmd: Command) -> Self {
        Self::new(Target::Supervised { case, cmd })
    }

    /// Adds an argument: for a role it is available as
    /// [`RoleCtx::args`](crate::RoleCtx::args); for a program it is appended
    /// to its command line.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        match &mut self.target {
            Target::Role { .. } => self.role_args.push(arg.as_ref().to_owned()),
            Target::Supervised { cmd, .. } | Target::Plain { cmd } => {
                cmd.arg(arg);
            }
        }
        self
    }

    /// Adds several arguments, as [`arg`](Self::arg).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets an environment variable in the peer.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        match &mut self.target {
            Target::Role { .. } => self
                .role_env
                .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned()))),
            Target::Supervised { cmd, .. } | Target::Plain { cmd } => {
                cmd.env(key, value);
            }
        }
        self
    }

    /// Removes an environment variable from the peer's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        match &mut self.target {
            Target::Role { .. } => self.role_env.push((key.as_ref().to_owned(), None)),
            Target::Supervised { cmd, .. } | Target::Plain { cmd } => {
                cmd.env_remove(key);
            }
        }
        self
    }

    /// How long [`try_start`](Self::try_start) waits for the peer to connect
    /// to the control channel (role and supervised peers) before killing it
    /// and failing. Default: [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The timeout of the peer's [`Peer::send`] and [`Peer::recv`] (and
    /// their string variants). Default: [`DEFAULT_IO_TIMEOUT`].
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How many bytes of stdout and of stderr are kept (the last ones).
    /// Default: [`DEFAULT_CAPTURE_LIMIT`].
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        self
    }

    /// Starts the peer and, for a role or supervised peer, waits until it
    /// has connected to the control channel.
    ///
    /// # Errors
    ///
    /// The program cannot be spawned; the peer exited before connecting
    /// (`ConnectionAborted`, the message has its exit status and stderr); it
    /// did not connect within the [connect
    /// timeout](Self::connect_timeout) (`TimedOut`, it has been killed).
    /// Nothing is left running when this fails.
    pub fn try_start(self) -> io::Result<Peer> {
        let opts = Opts {
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            capture_limit: self.capture_limit,
        };
        match self.target {
            Target::Role { case, role } => {
                spawn_role(case, &role, &self.role_args, &self.role_env, &opts)
            }
            Target::Supervised { case, cmd } => spawn_supervised(case, cmd, &opts),
            Target::Plain { mut cmd } => {
                let label = format!("command {:?}", cmd.get_program());
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                Peer::launch(&mut cmd, label, &opts, None, None)
            }
        }
    }

    /// Like [`try_start`](Self::try_start), but panics with the error
    /// (which includes the peer's stderr) — convenient in tests.
    ///
    /// # Panics
    ///
    /// If [`try_start`](Self::try_start) fails.
    #[track_caller]
    pub fn start(self) -> Peer {
        match self.try_start() {
            Ok(peer) => peer,
            Err(e) => panic!("ipckit-testkit: cannot start peer: {e}"),
        }
    }
}

struct Opts {
    connect_timeout: Duration,
    io_timeout: Duration,
    capture_limit: usize,
}

fn spawn_role(
    case: &TestCase,
    role: &str,
    args: &[OsString],
    envs: &[(OsString, Option<OsString>)],
    opts: &Opts,
) -> io::Result<Peer> {
    let dirs = case.dirs();
    let listener = ControlListener::bind(dirs)?;
    let mut cmd = libtest_command(case.name())?;
    set_peer_env(&mut cmd, case, &listener);
    cmd.env(ENV_ROLE, role);
    set_args(&mut cmd, args.iter().map(OsString::as_os_str));
    for (key, value) in envs {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = format!("peer `{role}`");
    let mut peer = Peer::launch(&mut cmd, label, opts, Some(Arc::clone(dirs)), None)?;
    let stream = peer.accept_control(&listener, opts.connect_timeout)?;
    peer.channel = Some(crate::channel::Channel::new(stream));
    Ok(peer)
}

fn spawn_supervised(case: &TestCase, program: Command, opts: &Opts) -> io::Result<Peer> {
    let dirs = case.dirs();
    let listener = ControlListener::bind(dirs)?;
    let mut cmd = libtest_command(case.name())?;
    set_peer_env(&mut cmd, case, &listener);
    cmd.env(ENV_EXEC, program.get_program());
    set_args(&mut cmd, program.get_args());
    for (key, value) in program.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    if let Some(dir) = program.get_current_dir() {
        cmd.current_dir(dir);
    }
    // libtest's own output goes to /dev/null; the program's stdout is a pipe
    // passed over the control socket once the peer has connected.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (stdout_reader, stdout_writer) = io::pipe()?;
    let label = format!("command {:?}", program.get_program());
    let mut peer = Peer::launch(
        &mut cmd,
        label,
        opts,
        Some(Arc::clone(dirs)),
        Some(stdout_reader),
    )?;
    let stream = peer.accept_control(&listener, opts.connect_timeout)?;
    if let Err(e) = send_fd(&stream, stdout_writer.as_fd()) {
        return Err(peer.wrap("passing stdout to the peer failed", e));
    }
    Ok(peer)
}

/// Environment common to role and supervised peers.
fn set_peer_env(cmd: &mut Command, case: &TestCase, listener: &ControlListener) {
    let dirs = case.dirs();
    cmd.env(ENV_TEST, case.name())
        .env(ENV_CONTROL, &listener.path)
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .env(ENV_DIR, &dirs.control)
        .env(RUNTIME_DIR_ENV, &dirs.namespace);
}

fn send_fd(stream: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    loop {
        match sendmsg(
            stream,
            &[IoSlice::new(b"F")],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// A listening control socket, unlinked when dropped.
struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlListener {
    fn bind(dirs: &CaseDirs) -> io::Result<Self> {
        let path = dirs.control.join(format!("{}.sock", unique_name("c")));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control socket path {} is longer than {MAX_SOCKET_PATH} bytes",
                    path.display()
                ),
            ));
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind control socket {}: {e}", path.display()),
            )
        })?;
        listener.set_nonblocking(true)?;
        Ok(ControlListener { listener, path })
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running (or finished) peer process.
///
/// * **Killed on drop:** if the process has not been reaped yet, dropping
///   the `Peer` sends `SIGKILL` and reaps it, so no process and no zombie
///   outlives the value — also when the test panics. When dropped during a
///   panic, the peer's captured stderr is printed to help diagnose the
///   failure.
/// * **Bounded waits:** [`wait_timeout`](Self::wait_timeout), and a default
///   [I/O timeout](PeerBuilder::io_timeout) on [`send`](Self::send) and
///   [`recv`](Self::recv).
/// * **Captured output:** stdout and stderr are drained by background
///   threads, keeping the last [`capture_limit`](PeerBuilder::capture_limit)
///   bytes of each; errors returned by `Peer` methods quote the peer's
///   state and the tail of its stderr.
///
/// The control channel methods are available for role peers only; on a
/// program peer they fail with `Unsupported`.
#[derive(Debug)]
pub struct Peer {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    channel: Option<crate::channel::Channel>,
    stdout: Capture,
    stderr: Capture,
    io_timeout: Duration,
    /// Keeps the namespace directory alive while the peer runs.
    _dirs: Option<Arc<CaseDirs>>,
}

impl Peer {
    /// Prepares a peer running `cmd` directly, without a [`TestCase`].
    ///
    /// The peer is killed on drop, its waits are bounded and its output is
    /// captured, but nothing arms the parent-death signal: if the test
    /// process is killed with `SIGKILL`, the program keeps running. Prefer
    /// [`TestCase::command`], which also passes the namespace. Stdin is a
    /// pipe ([`stdin`](Self::stdin)); the stdio settings of `cmd` are
    /// replaced.
    ///
    /// ```no_run
    /// use std::{process::Command, time::Duration};
    /// use ipckit_testkit::Peer;
    ///
    /// let mut peer = Peer::command(Command::new("true")).start();
    /// let out = peer.wait_output_timeout(Duration::from_secs(10)).unwrap();
    /// assert!(out.status.success());
    /// ```
    pub fn command(cmd: Command) -> PeerBuilder<'static> {
        PeerBuilder::new(Target::Plain { cmd })
    }

    fn launch(
        cmd: &mut Command,
        label: String,
        opts: &Opts,
        dirs: Option<Arc<CaseDirs>>,
        stdout_pipe: Option<io::PipeReader>,
    ) -> io::Result<Peer> {
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot spawn {label}: {e}")))?;
        // From here on the child is owned by `peer`, whose drop kills it.
        let mut peer = Peer {
            label,
            child,
            status: None,
            channel: None,
            stdout: Capture::empty(),
            stderr: Capture::empty(),
            io_timeout: opts.io_timeout,
            _dirs: dirs,
        };
        let limit = opts.capture_limit;
        if let Some(out) = peer.child.stdout.take() {
            peer.stdout = Capture::start(out, limit, "ipckit-testkit-stdout")?;
        } else if let Some(out) = stdout_pipe {
            peer.stdout = Capture::start(out, limit, "ipckit-testkit-stdout")?;
        }
        if let Some(err) = peer.child.stderr.take() {
            peer.stderr = Capture::start(err, limit, "ipckit-testkit-stderr")?;
        }
        Ok(peer)
    }

    /// Waits for the peer to connect to `listener`, noticing if it dies
    /// first; on timeout it is killed.
    fn accept_control(
        &mut self,
        listener: &ControlListener,
        timeout: Duration,
    ) -> io::Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        let expected = Pid::from_child(&self.child);
        let mut exited: Option<ExitStatus> = None;
        loop {
            match listener.listener.accept() {
                Ok((stream, _)) => {
                    // Only the peer itself may connect (the directory is
                    // private, this guards against stray processes).
                    if socket_peercred(&stream).is_ok_and(|cred| cred.pid == expected) {
                        stream.set_nonblocking(false)?;
                        return Ok(stream);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.wrap("accepting the control connection failed", e)),
            }
            if let Some(status) = exited {
                let hint = if status.success() {
                    " (status 0 often means that libtest ran no test: invoke \
                     test_case!() directly in the #[test] function, not in a helper)"
                } else {
                    ""
                };
                return Err(self.error(
                    io::ErrorKind::ConnectionAborted,
                    format!("exited ({status}) before connecting to the control channel{hint}"),
                ));
            }
            if let Some(status) = self.try_wait()? {
                // Accept once more: it may have connected just before exiting.
                exited = Some(status);
                continue;
            }
            if Instant::now() >= deadline {
                let status = self.kill()?;
                return Err(self.error(
                    io::ErrorKind::TimedOut,
                    format!(
                        "did not connect to the control channel within {timeout:?}; \
                         killed ({status})"
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A short description, such as ``peer `echo` `` or `command "sh"`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status, if the peer has been reaped (by
    /// [`try_wait`](Self::try_wait), [`wait_timeout`](Self::wait_timeout),
    /// [`kill`](Self::kill), [`is_alive`](Self::is_alive)…).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Reaps the peer if it has exited, without blocking.
    ///
    /// # Errors
    ///
    /// An error from `waitpid(2)`.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether the peer is still running (reaps it if it has exited).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for the peer to exit, and returns its status.
    ///
    /// On timeout the peer is killed with `SIGKILL` and reaped, and the
    /// result is an error of kind [`io::ErrorKind::TimedOut`] whose message
    /// says so (with the peer's stderr); [`exit_status`](Self::exit_status)
    /// then reports the kill.
    ///
    /// # Errors
    ///
    /// `TimedOut` as described, or an error from `waitpid(2)`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let status = self.kill()?;
                return Err(self.error(
                    io::ErrorKind::TimedOut,
                    format!("did not exit within {timeout:?}; killed with SIGKILL ({status})"),
                ));
            }
            thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Like [`wait_timeout`](Self::wait_timeout), then collects the captured
    /// output (waiting up to one second for the pipes to be drained). The
    /// output is the last [`capture_limit`](PeerBuilder::capture_limit)
    /// bytes of each stream.
    ///
    /// # Errors
    ///
    /// As [`wait_timeout`](Self::wait_timeout).
    pub fn wait_output_timeout(&mut self, timeout: Duration) -> io::Result<Output> {
        let status = self.wait_timeout(timeout)?;
        Ok(Output {
            status,
            stdout: self.settled(&self.stdout),
            stderr: self.settled(&self.stderr),
        })
    }

    /// Sends `SIGKILL` (unless the peer has already been reaped), reaps it
    /// and returns its exit status.
    ///
    /// # Errors
    ///
    /// An error from `kill(2)` or `waitpid(2)`.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Closes the parent's sending side: the control channel is half-closed
    /// (the role's next [`recv`](crate::RoleCtx::recv) returns `None`) and
    /// the stdin pipe of a program peer is closed. Receiving still works.
    pub fn close_input(&mut self) {
        if let Some(channel) = self.channel.as_mut() {
            let _ = channel.close_send();
        }
        drop(self.child.stdin.take());
    }

    /// The stdin pipe of a program peer (`None` for a role peer, or after
    /// [`close_input`](Self::close_input)).
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// The captured stdout, decoded lossily (the last
    /// [`capture_limit`](PeerBuilder::capture_limit) bytes). While the peer
    /// runs this is the output so far; once it has been reaped this first
    /// waits (up to one second) for the pipe to be drained, so the text is
    /// complete. For a role peer it includes libtest's own output.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.settled(&self.stdout)).into_owned()
    }

    /// The captured stderr, decoded lossily; complete once the peer has been
    /// reaped, as for [`stdout`](Self::stdout).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.settled(&self.stderr)).into_owned()
    }

    fn settled(&self, capture: &Capture) -> Vec<u8> {
        if self.status.is_some() {
            capture.wait_finished(OUTPUT_SETTLE);
        }
        capture.snapshot()
    }

    /// A multi-line report on the peer: label, pid, state and the tail of
    /// its stderr; the same text that errors from `Peer` methods carry.
    pub fn report(&mut self) -> String {
        self.describe("report")
    }

    /// Sends one frame to the role, waiting at most the [I/O
    /// timeout](PeerBuilder::io_timeout).
    ///
    /// # Errors
    ///
    /// `Unsupported` for a program peer; `InvalidInput` for data longer than
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN); `TimedOut` (the channel then
    /// refuses further sends if part of the frame was written); an I/O error
    /// if the peer is gone. Messages include the peer's state and stderr.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let timeout = self.io_timeout;
        self.with_channel("send failed", |ch| ch.send(data, Some(timeout)))
    }

    /// Sends a UTF-8 string as one frame.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_str(&mut self, text: &str) -> io::Result<()> {
        self.send(text.as_bytes())
    }

    /// Receives one frame, waiting at most the [I/O
    /// timeout](PeerBuilder::io_timeout). Returns `Ok(None)` when the role
    /// closed its side (it returned, or called
    /// [`close_output`](crate::RoleCtx::close_output)).
    ///
    /// # Errors
    ///
    /// `TimedOut` (a partly received frame is kept for the next call);
    /// `InvalidData` for a frame over [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN);
    /// `UnexpectedEof` if the stream ends inside a frame; `Unsupported` for a
    /// program peer.
    pub fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let timeout = self.io_timeout;
        self.with_channel("receive failed", |ch| ch.recv(Some(timeout)))
    }

    /// Receives one frame, waiting at most `timeout`; end of stream is an
    /// error here.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` if the role closed its side; otherwise as
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        self.with_channel("receive failed", |ch| {
            ch.recv(Some(timeout))?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the control channel was closed by the peer",
                )
            })
        })
    }

    /// Receives one UTF-8 frame with the [I/O
    /// timeout](PeerBuilder::io_timeout); `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the frame is not UTF-8; otherwise as
    /// [`recv`](Self::recv).
    pub fn recv_str(&mut self) -> io::Result<Option<String>> {
        let frame = self.recv()?;
        let result = frame.map(into_string).transpose();
        result.map_err(|e| self.wrap("receive failed", e))
    }

    /// Receives one UTF-8 frame, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv_timeout`](Self::recv_timeout) and [`recv_str`](Self::recv_str).
    pub fn recv_str_timeout(&mut self, timeout: Duration) -> io::Result<String> {
        let frame = self.recv_timeout(timeout)?;
        into_string(frame).map_err(|e| self.wrap("receive failed", e))
    }

    /// Receives one frame within `timeout` and checks that it is `expected`
    /// (typically a readiness message such as `"ready"`).
    ///
    /// # Errors
    ///
    /// `InvalidData` if another frame arrived; otherwise as
    /// [`recv_timeout`](Self::recv_timeout).
    pub fn expect(&mut self, expected: &str, timeout: Duration) -> io::Result<()> {
        let frame = self.recv_timeout(timeout)?;
        check_expected(expected, &frame).map_err(|e| self.wrap("unexpected frame", e))
    }

    fn with_channel<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&mut crate::channel::Channel) -> io::Result<T>,
    ) -> io::Result<T> {
        let result = match self.channel.as_mut() {
            Some(channel) => f(channel),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this peer runs a program and has no control channel",
            )),
        };
        result.map_err(|e| self.wrap(op, e))
    }

    /// Adds the peer's identity, state and stderr to an error.
    fn wrap(&mut self, op: &str, e: io::Error) -> io::Error {
        if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
        ) {
            // The peer probably died: give it a moment so that the report
            // shows its exit status.
            crate::wait_for(OUTPUT_SETTLE, || !self.is_alive());
        }
        self.error(e.kind(), format!("{op}: {e}"))
    }

    fn error(&mut self, kind: io::ErrorKind, what: impl fmt::Display) -> io::Error {
        io::Error::new(kind, self.describe(what))
    }

    fn describe(&mut self, what: impl fmt::Display) -> String {
        let state = match self.try_wait() {
            Ok(Some(status)) => {
                self.stderr.wait_finished(OUTPUT_SETTLE);
                format!("exited ({status})")
            }
            Ok(None) => "running".to_owned(),
            Err(e) => format!("unknown ({e})"),
        };
        let stderr = self.stderr.snapshot();
        let total = stderr.len() as u64 + self.stderr.discarded();
        let shown = &stderr[stderr.len().saturating_sub(MESSAGE_STDERR_LIMIT)..];
        let stderr_block = if shown.is_empty() {
            "  stderr: (empty)".to_owned()
        } else {
            let text = String::from_utf8_lossy(shown);
            format!(
                "  --- stderr (last {} of {total} bytes) ---\n{}\n  --- end of stderr ---",
                shown.len(),
                text.trim_end()
            )
        };
        format!(
            "{} (pid {}): {what}\n  state: {state}\n{stderr_block}",
            self.label,
            self.pid()
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        if thread::panicking() {
            self.stderr.wait_finished(Duration::from_millis(500));
            if !self.stderr.snapshot().is_empty() {
                eprintln!(
                    "ipckit-testkit: {}",
                    self.describe("dropped during a panic")
                );
            }
        }
    }
}
