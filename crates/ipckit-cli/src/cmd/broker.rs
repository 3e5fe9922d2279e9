//! `ipckit broker`: the per-user session broker (foreground, `--daemon`, `--status`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipckit::broker::registry::Limits;
use ipckit::broker::{BrokerClient, BrokerServer, START_TIMEOUT, StartError, running_pid};
use ipckit::namespace::Namespace;

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Detach: start the broker in the background, wait until it answers, then exit.
    #[arg(long, conflicts_with = "status")]
    daemon: bool,
    /// Report the running broker: pid, uptime, registrations and clients.
    #[arg(long)]
    status: bool,
    /// With --status: one JSON object.
    #[arg(long, requires = "status")]
    json: bool,
    /// Write systemd user units for the broker (`~/.config/systemd/user/ipckit-broker.socket`
    /// and `.service`: started by its first client, socket activation) and print how to enable
    /// them.
    #[arg(long, conflicts_with_all = ["daemon", "status"])]
    install_user_unit: bool,
}

pub fn run(args: Args) -> CmdResult {
    let ns = Namespace::from_env();
    if args.status {
        return status(&ns, args.json);
    }
    if args.daemon {
        return daemon(&ns);
    }
    if args.install_user_unit {
        return install_user_unit();
    }
    foreground(&ns)
}

fn foreground(ns: &Namespace) -> CmdResult {
    match BrokerServer::start(ns, Limits::default()) {
        Ok(server) => {
            tracing::info!(pid = std::process::id(), runtime = %ns.runtime_dir().display(), "broker listening on {}", ipckit::broker::BINDING);
            println!(
                "ipckit broker: running (pid {}) for {}",
                std::process::id(),
                ns.runtime_dir().display()
            );
            // Serves on the RPC server's threads until the process is stopped; a killed broker
            // leaves nothing a new one cannot take over (the lock dies with it, the socket is
            // replaced).
            let _server = server;
            super::hold_forever()
        }
        Err(StartError::Running(pid)) => {
            println!("{}", already(pid));
            Ok(())
        }
        Err(StartError::Failed(e)) => Err(e.into()),
    }
}

fn already(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("ipckit broker: already running (pid {p})"),
        None => "ipckit broker: already running".to_owned(),
    }
}

fn daemon(ns: &Namespace) -> CmdResult {
    if let Some(pid) = running_pid(ns) {
        println!("{}", already(Some(pid)));
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("broker")
        .env("IPCKIT_RUNTIME_DIR", ns.runtime_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group: a terminal's Ctrl-C does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let until = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(c) = BrokerClient::connect(ns) {
            let pid = c.status()?.pid;
            println!("ipckit broker: running (pid {pid})");
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            // Lost a race with another starter, which is now the broker, or failed.
            if let Some(pid) = running_pid(ns) {
                println!("{}", already(Some(pid)));
                return Ok(());
            }
            return Err(format!(
                "the broker exited at start ({st}); run `ipckit broker` to see why"
            )
            .into());
        }
        if Instant::now() >= until {
            return Err(format!("the broker did not answer within {START_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(ns: &Namespace, json: bool) -> CmdResult {
    let c = BrokerClient::connect(ns)?;
    let s = c.status()?;
    if json {
        let clients: Vec<_> = s
            .clients
            .iter()
            .map(|c| serde_json::json!({"pid": c.pid, "entries": c.entries, "watches": c.watches}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "pid": s.pid,
                "uptime_ms": s.uptime_ms,
                "version": s.version,
                "entries": s.entries,
                "clients": clients,
            })
        );
        return Ok(());
    }
    println!("pid       {}", s.pid);
    println!("uptime    {:.1} s", s.uptime_ms as f64 / 1000.0);
    println!("version   {}", s.version);
    println!("entries   {}", s.entries);
    // This `--status` call is one of the clients.
    println!("clients   {}", s.clients.len());
    for c in &s.clients {
        println!(
            "  pid {:>7}  {} entries, {} watches",
            c.pid, c.entries, c.watches
        );
    }
    Ok(())
}

/// The units: a socket unit listening on the broker's endpoint, and the broker in the
/// foreground (logs to the journal), restarted if it fails, handed that socket. The socket's
/// path is this process's runtime folder, which is the session's `XDG_RUNTIME_DIR/ipckit` when
/// run from the user's session, as under `systemd --user`.
fn install_user_unit() -> CmdResult {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set")?;
    let dir = config.join("systemd").join("user");
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    // The socket unit listens where clients look for the broker; systemd starts the service
    // on the first connection and hands it the socket (LISTEN_FDS).
    let socket = ipckit::broker::socket_path(&Namespace::from_env());
    let socket_unit = format!(
        "[Unit]\n\
         Description=ipckit session broker socket\n\
         \n\
         [Socket]\n\
         ListenStream={}\n\
         SocketMode=0600\n\
         DirectoryMode=0700\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n",
        socket.display()
    );
    let service_unit = format!(
        "[Unit]\n\
         Description=ipckit session broker (registry, RPC endpoint mapper)\n\
         Requires=ipckit-broker.socket\n\
         After=ipckit-broker.socket\n\
         \n\
         [Service]\n\
         ExecStart={} broker\n\
         Environment=IPCKIT_LOG=info\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe.display()
    );
    for (name, text) in [
        ("ipckit-broker.socket", socket_unit),
        ("ipckit-broker.service", service_unit),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    println!(
        "enable it with: systemctl --user daemon-reload && systemctl --user enable --now ipckit-broker.socket"
    );
    println!(
        "(the broker then starts on its first client; enable ipckit-broker.service to start it at login)"
    );
    Ok(())
}
