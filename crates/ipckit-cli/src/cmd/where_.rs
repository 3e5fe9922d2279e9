//! `ipckit where NAME`: how a Windows-style name maps to this system.

use ipckit::name::Name;
use ipckit::namespace::{Location, Namespace};

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A name as a Windows program writes it: `\\.\pipe\NAME`, `\\.\mailslot\NAME`,
    /// `Local\NAME`, `Global\NAME`, ...
    name: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CmdResult {
    let name = Name::parse(&args.name)?;
    let ns = Namespace::from_env();
    let (kind, location) = match &name {
        Name::Pipe(_) => ("pipe", ns.locate(&name)?),
        Name::Mailslot(_) => ("mailslot", ns.locate(&name)?),
        Name::Object(_) => ("object", ns.locate(&name)?),
    };
    let mut json = serde_json::json!({ "name": name.to_string(), "kind": kind });
    match &location {
        Location::Path(p) => json["path"] = p.display().to_string().into(),
        Location::Object { path, shm_name } => {
            json["path"] = path.display().to_string().into();
            json["shm_name"] = shm_name.clone().into();
            json["shm_path"] = format!("/dev/shm/{shm_name}").into();
        }
        Location::Remote(r) => json["remote"] = r.clone().into(),
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    println!("name      {name}");
    println!("kind      {kind}");
    match location {
        Location::Path(p) => println!("path      {}", p.display()),
        Location::Object { path, shm_name } => {
            println!("side file {}", path.display());
            println!("shm name  /{shm_name}  (file /dev/shm/{shm_name})");
        }
        Location::Remote(r) => println!("remote    {r} (needs the broker's network gateway)"),
    }
    Ok(())
}
