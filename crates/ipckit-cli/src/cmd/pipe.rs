//! `ipckit pipe`: named pipes from the shell (CreateNamedPipe / ConnectNamedPipe / CreateFile /
//! CallNamedPipe).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipckit::ErrorKind;
use ipckit::pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, NamedPipeWriter, PipeType, PipeWait, ReadMode,
    ServerOptions,
};

use super::CmdResult;

/// How much of standard input (or of a command's output) one read takes: one message on a
/// message pipe.
const CHUNK: usize = 64 << 10;
/// How many messages `cat` holds that standard output has not taken yet.
const BACKLOG: usize = 16;
/// Largest reply `pipe call` accepts.
const CALL_BUF: usize = 1 << 20;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create a pipe (or more instances of it) and serve clients one after another on each
    /// instance until killed.
    Serve {
        /// `NAME` or `\\.\pipe\NAME`.
        name: String,
        /// A message pipe (PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE) instead of a byte pipe.
        #[arg(long)]
        message: bool,
        /// How many instances this process serves (each in its own thread); also the pipe's
        /// maximum when it is created here.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
        instances: u8,
        /// Send every message (or every chunk of bytes) back to the client.
        #[arg(long, conflicts_with = "exec")]
        echo: bool,
        /// Run `sh -c CMD` for each client, with the pipe as its standard input and output.
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Share the pipe with this user (a uid; repeatable): it is published where other
        /// users can reach it, and their clients are accepted (others are refused).
        #[arg(long = "allow-user", value_name = "UID")]
        allow_users: Vec<u32>,
        /// Share the pipe with every user.
        #[arg(long)]
        allow_any_user: bool,
    },
    /// Connect, send DATA, and on a message pipe print the reply message.
    Send {
        name: String,
        /// The data, or `-` to read it from standard input.
        data: String,
        /// Wait up to this many milliseconds for a free instance (default: fail at once with
        /// win32 231 when all are busy).
        #[arg(long)]
        timeout: Option<u64>,
        /// Open the pipe that this user (a uid) shares with others.
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
    },
    /// CallNamedPipe: connect (waiting while every instance is busy), send DATA as one message,
    /// print the reply and close.
    Call {
        name: String,
        /// The request, or `-` to read it from standard input.
        data: String,
        /// How long to wait for a free instance, in milliseconds (default: the pipe's default
        /// timeout).
        #[arg(long)]
        timeout: Option<u64>,
        /// Open the pipe that this user (a uid) shares with others.
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
    },
    /// Connect and copy standard input to the pipe and the pipe to standard output. After the
    /// end of standard input, replies are still printed until the pipe is quiet for --linger
    /// milliseconds or the server closes.
    Cat {
        name: String,
        #[arg(long, default_value_t = 200)]
        linger: u64,
        /// Open the pipe that this user (a uid) shares with others.
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
    },
}

/// `NAME` → `\\.\pipe\NAME`; full names are kept.
fn full_name(name: &str) -> String {
    if name.starts_with(r"\\") {
        name.to_owned()
    } else {
        format!(r"\\.\pipe\{name}")
    }
}

fn data_arg(data: String) -> std::io::Result<Vec<u8>> {
    if data == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        Ok(b)
    } else {
        Ok(data.into_bytes())
    }
}

pub fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Serve {
            name,
            message,
            instances,
            echo,
            exec,
            allow_users,
            allow_any_user,
        } => {
            let mut opts = if message {
                ServerOptions::message()
            } else {
                ServerOptions::new()
            }
            .max_instances(instances)?;
            for uid in allow_users {
                opts = opts.allow_user(uid);
            }
            if allow_any_user {
                opts = opts.allow_any_user();
            }
            serve(&full_name(&name), &opts, message, instances, echo, exec)
        }
        Cmd::Send {
            name,
            data,
            timeout,
            owner,
        } => {
            let data = data_arg(data)?;
            let mut opts = client_options(owner);
            if let Some(ms) = timeout {
                opts = opts.wait(PipeWait::Timeout(Duration::from_millis(ms)));
            }
            let mut c = opts.connect(&full_name(&name))?;
            if c.info().pipe_type == PipeType::Message {
                c.set_read_mode(ReadMode::Message)?;
                c.write(&data)?;
                let reply = c.read_message()?;
                let mut out = std::io::stdout().lock();
                out.write_all(&reply)?;
                out.flush()?;
            } else {
                c.write(&data)?;
            }
            Ok(())
        }
        Cmd::Call {
            name,
            data,
            timeout,
            owner,
        } => {
            let data = data_arg(data)?;
            let wait = match timeout {
                Some(ms) => PipeWait::Timeout(Duration::from_millis(ms)),
                None => PipeWait::Default,
            };
            let mut buf = vec![0u8; CALL_BUF];
            let n = client_options(owner).call(&full_name(&name), &data, &mut buf, wait)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n])?;
            out.flush()?;
            Ok(())
        }
        Cmd::Cat {
            name,
            linger,
            owner,
        } => {
            let c = client_options(owner).connect(&full_name(&name))?;
            cat(c, Duration::from_millis(linger))
        }
    }
}

/// What the threads of `cat` tell the one that prints.
enum Event {
    /// A message (or bytes) from the pipe.
    Data(Vec<u8>),
    /// Standard input ended and all of it was sent.
    InputDone,
    /// The pipe ended (`Ok`: the server closed it), or something failed.
    End(ipckit::Result<()>),
}

/// Copies standard input to the pipe and the pipe to standard output, each in a thread that
/// waits in its read; this thread prints, and once the input ended, waits up to `linger` for
/// each next message.
fn cat(mut c: NamedPipeClient, linger: Duration) -> CmdResult {
    let writer = c.writer()?;
    let (tx, rx) = mpsc::sync_channel(BACKLOG);
    let input_tx = tx.clone();
    std::thread::spawn(move || {
        let r = copy_to_pipe(std::io::stdin(), &writer);
        let _ = input_tx.send(match r {
            Ok(()) => Event::InputDone,
            Err(e) => Event::End(Err(e)),
        });
    });
    std::thread::spawn(move || {
        loop {
            let (event, last) = match c.read_message() {
                Ok(m) => (Event::Data(m), false),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => (Event::End(Ok(())), true),
                Err(e) => (Event::End(Err(e)), true),
            };
            if tx.send(event).is_err() || last {
                return;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    let mut input_done = false;
    loop {
        let event = if input_done {
            match rx.recv_timeout(linger) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(()),
            }
        } else {
            match rx.recv() {
                Ok(e) => e,
                Err(mpsc::RecvError) => return Ok(()),
            }
        };
        match event {
            Event::Data(m) => {
                out.write_all(&m)?;
                out.flush()?;
            }
            Event::InputDone => input_done = true,
            Event::End(r) => return Ok(r?),
        }
    }
}

/// Copies `input` to the pipe, one message per read on a message pipe, until the end of the
/// input (a read error counts as one) or of the pipe (then its reader reports how it ended).
fn copy_to_pipe(mut input: impl Read, writer: &NamedPipeWriter) -> ipckit::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()),
        };
        match writer.write(&buf[..n]) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NoData => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Client options, opening the pipe `owner` shares when given.
fn client_options(owner: Option<u32>) -> ClientOptions {
    match owner {
        Some(uid) => ClientOptions::new().owner(uid),
        None => ClientOptions::new(),
    }
}

fn serve(
    name: &str,
    opts: &ServerOptions,
    message: bool,
    instances: u8,
    echo: bool,
    exec: Option<String>,
) -> CmdResult {
    // Create every instance before announcing the pipe, so that errors are reported here.
    let servers = (0..instances)
        .map(|_| opts.create(name))
        .collect::<ipckit::Result<Vec<_>>>()?;
    eprintln!(
        "serving {name} ({} pipe, {instances} instance{}) (pid {})",
        if message { "message" } else { "byte" },
        if instances == 1 { "" } else { "s" },
        std::process::id()
    );
    let handles: Vec<_> = servers
        .into_iter()
        .map(|server| {
            let exec = exec.clone();
            std::thread::spawn(move || serve_instance(server, echo, exec.as_deref()))
        })
        .collect();
    for h in handles {
        if let Ok(Err(e)) = h.join() {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Connect → serve → disconnect, forever. Returns only when the instance itself fails.
fn serve_instance(mut s: NamedPipeServer, echo: bool, exec: Option<&str>) -> ipckit::Result<()> {
    loop {
        s.connect()?;
        let client = s.client().map(|c| c.pid).unwrap_or_default();
        tracing::info!("{}: client pid {client} connected", s.name());
        let r = if let Some(cmd) = exec {
            serve_exec(&mut s, cmd)
        } else if echo {
            serve_echo(&mut s)
        } else {
            serve_sink(&mut s)
        };
        if let Err(e) = r {
            tracing::warn!("{}: client pid {client}: {e}", s.name());
        }
        s.disconnect()?;
    }
}

/// Ends a client loop: the client closing is the normal end.
fn ended(e: ipckit::Error) -> Result<(), Box<dyn std::error::Error>> {
    Ok(client_gone(e)?)
}

/// `Ok` when `e` says the client closed the pipe.
fn client_gone(e: ipckit::Error) -> ipckit::Result<()> {
    match e.kind() {
        ErrorKind::BrokenPipe | ErrorKind::NoData => Ok(()),
        _ => Err(e),
    }
}

fn serve_echo(s: &mut NamedPipeServer) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        // One whole message on a message pipe; whatever bytes are there on a byte pipe.
        let data = match s.read_message() {
            Ok(d) => d,
            Err(e) => return ended(e),
        };
        if let Err(e) = s.write(&data) {
            return ended(e);
        }
    }
}

/// Without --echo or --exec: print what arrives on standard output.
fn serve_sink(s: &mut NamedPipeServer) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout();
    loop {
        let data = match s.read_message() {
            Ok(d) => d,
            Err(e) => return ended(e),
        };
        out.write_all(&data)?;
        if s.info().pipe_type == PipeType::Message {
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
}

/// Runs `sh -c cmd` with the connection as its standard input and output: each message (or
/// chunk) from the client is written to its stdin, each chunk of its stdout is sent back (one
/// message per chunk on a message pipe). When the client closes, the command's stdin is closed;
/// the connection ends when the command closes its stdout. A thread waits in the pipe's reads
/// while this one waits in the command's output.
fn serve_exec(s: &mut NamedPipeServer, cmd: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // Killed with this thread (and so with this process, SIGKILL included): no orphan `sh`.
    ipckit::sys::process::die_with_parent(&mut command);
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let output = child.stdout.take().expect("piped stdout");
    let writer = s.writer()?;
    let result = std::thread::scope(|scope| {
        let feeding = scope.spawn(move || {
            loop {
                let data = match s.read_message() {
                    Ok(d) => d,
                    // The client is gone: the end of the command's input.
                    Err(e) => return client_gone(e),
                };
                if stdin.write_all(&data).and_then(|()| stdin.flush()).is_err() {
                    return Ok(()); // the command stopped reading
                }
            }
        });
        let sent = copy_to_pipe(output, &writer);
        // The command closed its output (or the client left): the connection ends, and the
        // reading thread with it.
        writer.disconnect();
        let fed = feeding.join().unwrap_or(Ok(()));
        sent.and(fed)
    });
    // The command closed its output (or the client left): do not let it linger.
    if child.try_wait()?.is_none() {
        // Half a second to end by itself, waited for on a descriptor of its end (no polling;
        // a kernel without pidfds gets a look every 5 ms).
        let grace = Duration::from_millis(500);
        match ipckit::sys::socket::process_exit_fd(child.id()) {
            Ok(Some(ended)) => {
                ipckit::sys::socket::wait_readable(&[ended.as_fd()], Some(grace))?;
            }
            Ok(None) => {}
            Err(_) => {
                let deadline = Instant::now() + grace;
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    result.map_err(Into::into)
}
