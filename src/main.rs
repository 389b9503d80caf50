//! The `repfuse` command (see `repfuse::cli`).

#[cfg(feature = "mimalloc")]
#[path = "alloc.rs"]
mod alloc;

/// Small blocks from mimalloc, large ones from the system (see `alloc.rs`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: alloc::SplitAllocator = alloc::SplitAllocator;

fn main() {
    // Mesa's drivers (lavapipe, and its OpenGL path) print "error: XDG_RUNTIME_DIR is
    // invalid or not set" when it is unset, as on servers and in containers; only
    // window-system code reads it, and that line reads like a repfuse failure. Set
    // here, before any thread exists.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    std::process::exit(repfuse::cli::run(std::env::args_os()));
}
