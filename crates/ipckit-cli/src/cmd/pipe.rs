//! `ipckit pipe`: named pipes from the shell (CreateNamedPipe / ConnectNamedPipe / CreateFile /
//! CallNamedPipe).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use ipckit::ErrorKind;
use ipckit::pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PeekInfo, PipeType, PipeWait, ReadMode,
    ServerOptions,
};

use super::CmdResult;

/// How long the copy loops sleep when neither side has data.
const IDLE: Duration = Duration::from_millis(1);
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
            let mut c = client_options(owner).connect(&full_name(&name))?;
            let input = spawn_reader(std::io::stdin());
            let mut out = std::io::stdout();
            cat_loop(&mut c, input, &mut out, Duration::from_millis(linger))
        }
    }
}

/// Reads `r` in a thread; chunks arrive on the receiver, which disconnects at end of input.
fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Whether something can be read now without waiting.
fn readable(p: PeekInfo) -> bool {
    p.available > 0 || p.message_left > 0
}

fn cat_loop(
    c: &mut NamedPipeClient,
    input: Receiver<Vec<u8>>,
    out: &mut impl Write,
    linger: Duration,
) -> CmdResult {
    let mut input_done = false;
    let mut quiet_since = Instant::now();
    loop {
        let mut busy = false;
        match c.peek(&mut []) {
            Ok(p) if readable(p) => {
                let msg = c.read_message()?;
                out.write_all(&msg)?;
                out.flush()?;
                busy = true;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if !input_done {
            match input.try_recv() {
                Ok(chunk) => {
                    c.write(&chunk)?;
                    busy = true;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => input_done = true,
            }
        }
        if busy {
            quiet_since = Instant::now();
        } else if input_done && quiet_since.elapsed() >= linger {
            return Ok(());
        } else {
            std::thread::sleep(IDLE);
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
    match e.kind() {
        ErrorKind::BrokenPipe | ErrorKind::NoData => Ok(()),
        _ => Err(e.into()),
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
/// the connection ends when the command closes its stdout.
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
    let mut stdin = child.stdin.take();
    let output = spawn_reader(child.stdout.take().expect("piped stdout"));
    let mut result = Ok(());
    loop {
        let mut busy = false;
        if stdin.is_some() {
            match s.peek(&mut []) {
                Ok(p) if readable(p) => {
                    let data = s.read_message()?;
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data).and_then(|()| w.flush()).is_err()
                    {
                        stdin = None; // the command stopped reading
                    }
                    busy = true;
                }
                Ok(_) => {}
                Err(e) => {
                    stdin = None; // client gone: end of the command's input
                    if let Err(e) = ended(e) {
                        result = Err(e);
                    }
                }
            }
        }
        match output.try_recv() {
            Ok(chunk) => {
                if let Err(e) = s.write(&chunk) {
                    if let Err(e) = ended(e) {
                        result = Err(e);
                    }
                    break;
                }
                busy = true;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => break,
        }
        if !busy {
            std::thread::sleep(IDLE);
        }
    }
    drop(stdin);
    // The command closed its output (or the client left): do not let it linger.
    if child.try_wait()?.is_none() {
        let deadline = Instant::now() + Duration::from_millis(500);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    result
}
