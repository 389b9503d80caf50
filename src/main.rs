//! The `repfuse` command (see `repfuse::cli`).

fn main() {
    std::process::exit(repfuse::cli::run(std::env::args_os()));
}
