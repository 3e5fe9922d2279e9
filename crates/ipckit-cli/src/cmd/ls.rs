//! `ipckit ls`: the live named objects of the user's namespace.

use ipckit::namespace::{Entry, Namespace};

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array of objects instead of a table.
    #[arg(long)]
    json: bool,
}

fn scope_str(e: &Entry) -> &'static str {
    match e.scope {
        ipckit::name::Scope::Local => "local",
        ipckit::name::Scope::Global => "global",
    }
}

pub fn run(args: Args) -> CmdResult {
    let ns = Namespace::user()?;
    let entries = ns.entries()?;
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "kind": e.folder.dir_name(),
                    "scope": scope_str(e),
                    "name": e.name,
                    "path": e.path.display().to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no live objects in {}", ns.runtime_dir().display());
        return Ok(());
    }
    println!("{:<9} {:<7} {:<32} PATH", "KIND", "SCOPE", "NAME");
    for e in &entries {
        let name = e.name.as_deref().unwrap_or("(long name)");
        println!("{:<9} {:<7} {:<32} {}", e.folder.dir_name(), scope_str(e), name, e.path.display());
    }
    Ok(())
}
