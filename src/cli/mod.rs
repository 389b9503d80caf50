//! The `repfuse` command's subcommands. Thin: parsing, the library call, printing.

pub mod commands;
pub mod table;

use std::sync::atomic::{AtomicBool, Ordering};

/// `-q`: no human output (errors and `--json` still print).
static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `println!` for human output, silenced by `-q`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            println!($($arg)*);
        }
    };
}

/// A stderr spinner for a stage that can take more than a second; hidden under
/// `-q`, `--json`, or when stderr is not a terminal.
pub fn spinner(json: bool, msg: &str) -> indicatif::ProgressBar {
    if quiet() || json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb.set_message(msg.to_string());
    pb
}
