//! One module per subcommand.

pub mod bench;
pub mod ls;
pub mod tour;
pub mod where_;

/// The error type of subcommands: anything that displays.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;
