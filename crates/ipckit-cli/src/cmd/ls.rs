//! `ipckit ls`: the live named objects of the user's namespace.

use ipckit::name::{ObjectName, Scope};
use ipckit::namespace::{Entry, Folder, Namespace};
use ipckit::object::{ObjectInfo, ObjectKind, describe, sweep};
use ipckit::pipe::PipeType;

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array of objects instead of a table.
    #[arg(long)]
    json: bool,
}

fn scope_str(scope: Scope) -> &'static str {
    match scope {
        Scope::Local => "local",
        Scope::Global => "global",
    }
}

/// What `ls` knows of one live object.
struct Row {
    kind: String,
    scope: Scope,
    name: String,
    os_name: String,
    size: Option<u64>,
    holders: Vec<u32>,
    /// Kind-specific details (a channel's depth and ends).
    details: serde_json::Value,
}

/// Details of the kernel object `name` (`Local\x` or `Global\x`), if it is alive.
pub fn object_info(name: &str) -> Result<Option<ObjectInfo>, Box<dyn std::error::Error>> {
    let name = ObjectName::parse(name)?;
    let ns = Namespace::from_env();
    let path = ns.object_path(&name);
    let component = path
        .file_name()
        .and_then(|c| c.to_str())
        .unwrap_or_default()
        .to_owned();
    Ok(describe(&ns, name.scope(), &component)?)
}

fn row(ns: &Namespace, e: &Entry) -> ipckit::Result<Option<Row>> {
    let name = e.name.clone().unwrap_or_else(|| "(long name)".into());
    if e.folder == Folder::Pipe && e.scope == Scope::Local {
        return pipe_row(ns, e, &name);
    }
    if e.folder == Folder::Mailslot && e.scope == Scope::Local {
        return mailslot_row(ns, e, &name);
    }
    if e.folder != Folder::Object {
        return Ok(Some(Row {
            kind: e.folder.dir_name().into(),
            scope: e.scope,
            name,
            os_name: e.path.display().to_string(),
            size: None,
            holders: Vec::new(),
            details: serde_json::Value::Null,
        }));
    }
    let component = e
        .path
        .file_name()
        .and_then(|c| c.to_str())
        .unwrap_or_default();
    // Dead objects (no holder left) are not shown: they no longer exist for anybody.
    let Some(info) = describe(ns, e.scope, component)? else {
        return Ok(None);
    };
    let prefix = if e.scope == Scope::Global {
        r"Global\"
    } else {
        r"Local\"
    };
    let details = match info.kind {
        ObjectKind::Channel => match ipckit::channel::describe(ns, &format!("{prefix}{name}")) {
            Ok(c) => serde_json::json!({
                "depth": c.depth,
                "receiver": c.receiver,
                "senders": c.senders,
                "capacity": c.geometry.capacity,
                "lanes": c.geometry.lanes,
                "max_message": c.geometry.max_message,
            }),
            Err(_) => serde_json::Value::Null,
        },
        _ => serde_json::Value::Null,
    };
    Ok(Some(Row {
        details,
        kind: info.kind.as_str().into(),
        scope: e.scope,
        name: format!("{prefix}{name}"),
        os_name: info
            .shm_name
            .map(|s| format!("/dev/shm/{s}"))
            .unwrap_or_else(|| e.path.display().to_string()),
        size: (info.size > 0).then_some(info.size),
        holders: info.holders,
    }))
}

/// A local named pipe: shown while one of its instances lives.
fn pipe_row(ns: &Namespace, e: &Entry, name: &str) -> ipckit::Result<Option<Row>> {
    let component = e
        .path
        .file_name()
        .and_then(|c| c.to_str())
        .unwrap_or_default();
    let Some(st) = ipckit::pipe::describe(ns, component)? else {
        return Ok(None);
    };
    let mode = match st.info.pipe_type {
        PipeType::Byte => "byte",
        PipeType::Message => "message",
    };
    Ok(Some(Row {
        kind: "pipe".into(),
        scope: e.scope,
        name: format!(r"\\.\pipe\{name}"),
        os_name: e.path.display().to_string(),
        size: None,
        holders: st.servers.clone(),
        details: serde_json::json!({
            "mode": mode,
            "instances": st.instances,
            "max_instances": st.max_instances(),
            "free": st.free,
            "servers": st.servers,
        }),
    }))
}

/// A local mailslot: shown while its server lives.
fn mailslot_row(ns: &Namespace, e: &Entry, name: &str) -> ipckit::Result<Option<Row>> {
    let component = e
        .path
        .file_name()
        .and_then(|c| c.to_str())
        .unwrap_or_default();
    let Some(st) = ipckit::mailslot::describe(ns, component)? else {
        return Ok(None);
    };
    Ok(Some(Row {
        kind: "mailslot".into(),
        scope: e.scope,
        name: format!(r"\\.\mailslot\{name}"),
        os_name: e.path.display().to_string(),
        size: None,
        holders: vec![st.server_pid],
        details: serde_json::json!({
            "max_message_size": st.max_message_size,
            "queued": st.queued,
            "read_timeout_ms": st.read_timeout.map(|t| t.as_millis() as u64),
        }),
    }))
}

/// The live pipes that the user of the folder `e` (`GLOBAL/pipe/UID`) shares with others.
fn shared_pipe_rows(ns: &Namespace, e: &Entry) -> ipckit::Result<Vec<Row>> {
    let Some(owner) = e
        .path
        .file_name()
        .and_then(|c| c.to_str())
        .and_then(|c| c.parse::<u32>().ok())
    else {
        return Ok(Vec::new());
    };
    Ok(ipckit::pipe::describe_shared(ns, owner)?
        .into_iter()
        .map(|(component, st)| {
            let name =
                ipckit::name::decode_component(&component).unwrap_or_else(|| "(long name)".into());
            let mode = match st.info.pipe_type {
                PipeType::Byte => "byte",
                PipeType::Message => "message",
            };
            Row {
                kind: "pipe".into(),
                scope: e.scope,
                name: format!(r"\\.\pipe\{name}"),
                os_name: e.path.join(&component).display().to_string(),
                size: None,
                holders: st.servers.clone(),
                details: serde_json::json!({
                    "mode": mode,
                    "instances": st.instances,
                    "max_instances": st.max_instances(),
                    "free": st.free,
                    "servers": st.servers,
                    "shared_by": owner,
                }),
            }
        })
        .collect())
}

/// The live `ncalrpc` endpoints (sockets in `RUNTIME/rpc/`), registered with the broker or not.
fn rpc_rows(ns: &Namespace) -> ipckit::Result<Vec<Row>> {
    Ok(ipckit::rpc::local_endpoints(ns)?
        .into_iter()
        .map(|e| Row {
            kind: "ncalrpc".to_owned(),
            scope: Scope::Local,
            name: format!(
                "ncalrpc:[{}]",
                e.endpoint.as_deref().unwrap_or("(long name)")
            ),
            os_name: e.path.display().to_string(),
            size: None,
            holders: vec![e.server_pid],
            details: serde_json::Value::Null,
        })
        .collect())
}

/// What the broker holds (RPC endpoints, windows, DDE services, ...), when one runs: `ls` never
/// starts it, and without it lists the namespace folders alone.
fn broker_rows(ns: &Namespace) -> Vec<Row> {
    if ipckit::broker::running_pid(ns).is_none() {
        return Vec::new();
    }
    let entries = match ipckit::broker::BrokerClient::connect(ns).and_then(|c| c.list(None, "")) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("the broker did not answer: {e}");
            return Vec::new();
        }
    };
    entries
        .into_iter()
        .map(|e| {
            let mut value = String::from_utf8_lossy(&e.value).into_owned();
            if value.chars().count() > 40 {
                value = value.chars().take(39).collect::<String>() + "…";
            }
            Row {
                kind: e.kind.as_str().to_owned(),
                scope: Scope::Local,
                name: e.name,
                os_name: "(broker)".to_owned(),
                size: None,
                holders: vec![e.pid],
                details: serde_json::json!({ "broker": true, "value": value, "age_ms": e.age_ms }),
            }
        })
        .collect()
}

fn details_text(kind: &str, d: &serde_json::Value) -> String {
    match (kind, d) {
        (_, serde_json::Value::Null) => "-".to_owned(),
        (_, d) if d["broker"] == true => d["value"].as_str().unwrap_or("").to_owned(),
        ("pipe", d) => {
            let max = d["max_instances"]
                .as_u64()
                .map_or_else(|| "unlimited".to_owned(), |m| m.to_string());
            let shared = d["shared_by"]
                .as_u64()
                .map_or_else(String::new, |uid| format!(", shared by uid {uid}"));
            format!(
                "{}, instances {}/{max}, free {}{shared}",
                d["mode"].as_str().unwrap_or("?"),
                d["instances"],
                d["free"]
            )
        }
        ("mailslot", d) => format!(
            "queued {}, max {} B, timeout {}",
            d["queued"],
            d["max_message_size"],
            d["read_timeout_ms"]
                .as_u64()
                .map_or_else(|| "forever".to_owned(), |ms| format!("{ms} ms"))
        ),
        (_, d) => format!(
            "depth {}, receiver {}, senders {}",
            d["depth"], d["receiver"], d["senders"]
        ),
    }
}

pub fn run(args: Args) -> CmdResult {
    let ns = Namespace::user()?;
    // Free the files of objects whose last holder died; they are gone already.
    sweep(&ns)?;
    ipckit::mailslot::sweep(&ns)?;
    let mut rows = Vec::new();
    for e in ns.entries()? {
        if e.folder == Folder::Pipe && e.scope == Scope::Global {
            // GLOBAL/pipe/UID: the pipes that user shares with others.
            rows.extend(shared_pipe_rows(&ns, &e)?);
            continue;
        }
        if let Some(r) = row(&ns, &e)? {
            rows.push(r);
        }
    }
    rows.extend(rpc_rows(&ns)?);
    rows.extend(broker_rows(&ns));
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kind": r.kind,
                    "scope": scope_str(r.scope),
                    "name": r.name,
                    "os_name": r.os_name,
                    "size": r.size,
                    "holders": r.holders,
                    "details": r.details,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no live objects in {}", ns.runtime_dir().display());
        return Ok(());
    }
    println!(
        "{:<10} {:<7} {:<28} {:>10}  {:<16} {:<44} OS NAME",
        "KIND", "SCOPE", "NAME", "SIZE", "HOLDERS", "DETAILS"
    );
    for r in &rows {
        let size = r.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let holders = r
            .holders
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let details = details_text(&r.kind, &r.details);
        println!(
            "{:<10} {:<7} {:<28} {:>10}  {:<16} {:<44} {}",
            r.kind,
            scope_str(r.scope),
            r.name,
            size,
            holders,
            details,
            r.os_name
        );
    }
    Ok(())
}
