//! The `repfuse` command: arguments, the library call, printing, the exit code.
//! In the library so the binary and the Python package's `repfuse` console script
//! run the same command.

mod commands;
mod table;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Backend;

use std::sync::atomic::{AtomicBool, Ordering};

/// `-q`: no human output (errors and `--json` still print).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets `-q` for this process.
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// Whether `-q` is set.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `println!` for human output, silenced by `-q`.
#[macro_export]
#[doc(hidden)]
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

#[derive(Parser)]
#[command(
    name = "repfuse",
    version,
    about = "Structural re-parameterization of ConvNets: fuse training-form multi-branch blocks into plain convs, exactly.",
    after_help = "Exit codes: 0 success; 1 error (bad input or arguments, unreadable or unwritable file, GPU failure); 2 verification over tolerance (nothing written)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print nothing but errors (and `--json` output).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More detail on stderr: -v stages, -vv every rewrite wave.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Build a zoo model, fuse it, verify it, print a table.
    Demo {
        #[arg(long, default_value = "repvgg_a0")]
        model: String,
        /// Input height and width.
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, value_enum, default_value = "auto")]
        backend: Backend,
        #[arg(long)]
        json: bool,
    },
    /// Fuse a model file (.onnx, or .json + .safetensors) into its deploy form.
    Fuse {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        backend: Backend,
        /// Run original and fused forward on seeded random inputs; refuse to write
        /// the output when over tolerance.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
        /// Compose 1x1/KxK sequences only up to this MAC ratio.
        #[arg(long, default_value_t = 1.5)]
        compose_cost_limit: f64,
        /// Absorb ConvNeXt-style residual shortcuts by widening the block (paradigm
        /// 6b): exact, fewer nodes, more FLOPs.
        #[arg(long)]
        widen_shortcuts: bool,
        /// Write float initializers in the input's float type (the default).
        #[arg(long, conflicts_with = "f32")]
        keep_dtype: bool,
        /// Write a float16/bfloat16 ONNX model as float32 (initializers and graph
        /// inputs/outputs).
        #[arg(long)]
        f32: bool,
        /// Flush the written model to the device (fsync of the file and its folder)
        /// before exiting. Without it the write is atomic (a temp file and a rename:
        /// never a partial model) but an OS crash right after may lose it.
        #[arg(long)]
        fsync: bool,
        /// Testing the verifier: scale the first fused weight by 1 + 1e-3 before
        /// verifying and writing, so `--verify` must fail (exit 2, nothing written).
        #[arg(long, hide = true)]
        inject_fault: bool,
    },
    /// Run two models on the same seeded random inputs and compare their outputs.
    Verify {
        original: PathBuf,
        fused: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Show ops, parameters, FLOPs, and what would be fused or refused (writes nothing).
    Inspect {
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Time fusion (CPU and GPU) and forward passes against same-run baselines.
    Bench {
        /// Zoo models, or model files (.onnx, or .json with its .safetensors), whose
        /// weight arithmetic to time kernel by kernel (default: repvgg_a0, repvgg_b0,
        /// mobileone_s0, unless --onnx or --scaling is given).
        #[arg(long)]
        model: Vec<String>,
        /// ONNX files to run through `repfuse fuse` stage by stage, next to a
        /// page-cache copy of the same bytes and the whole command's time and memory.
        #[arg(long)]
        onnx: Vec<PathBuf>,
        /// Time the rewrite on synthetic RepVGG chains of 100 to 10,000 blocks.
        #[arg(long)]
        scaling: bool,
        #[arg(long, value_enum, default_value = "auto")]
        backend: Backend,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Also time the forward pass at this input size (CPU reference).
        #[arg(long)]
        forward_size: Option<usize>,
        /// Write the JSON results under benches/results/, named by adapter.
        #[arg(long)]
        save: bool,
        #[arg(long)]
        json: bool,
    },
    /// List every wgpu adapter with its key limits.
    Adapters {
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line `args` (program name first) and returns the exit code:
/// 0 success, 1 error, 2 verification over tolerance.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Usage errors exit 1, not clap's 2, which here means "over tolerance".
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    set_quiet(cli.quiet);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    // A second run in the same process (the Python console script) keeps the first
    // subscriber.
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false).try_init();
    let result = match cli.command {
        Command::Demo { model, size, backend, json } => commands::demo(&model, size, backend, json),
        Command::Fuse { input, output, backend, verify, json, compose_cost_limit, widen_shortcuts, keep_dtype: _, f32, fsync, inject_fault } => {
            crate::io::atomic::set_fsync(fsync);
            commands::fuse(&commands::FuseArgs { input, output, backend, verify, json, compose_cost_limit, widen_shortcuts, f32, inject_fault })
        }
        Command::Verify { original, fused, seed, json } => commands::verify(&original, &fused, seed, json),
        Command::Inspect { input, json } => commands::inspect(&input, json),
        Command::Adapters { json } => commands::adapters(json),
        Command::Bench { model, onnx, scaling, backend, reps, forward_size, save, json } => {
            commands::bench(&commands::BenchArgs { models: model, onnx, scaling, backend, reps, forward_size, save, json })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            1
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the
/// message already holds (an I/O error names its path and OS error, and a context
/// that names the same file would otherwise repeat both).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}
