//! `repfuse bench --onnx FILE` and `--scaling`: what a user of `repfuse fuse` feels.
//!
//! Each ONNX file goes through the command's stages in this process (read, rewrite,
//! weight arithmetic on the CPU, atomic write), each the median of the reps, next to
//! the floor measured in the same run: a page-cache copy of the same bytes (the file
//! read, the deploy model's byte count written). The whole command also runs as a
//! child process, for its wall time and peak resident memory. The scaling series
//! times the rewrite alone on synthetic RepVGG chains, per node.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{median_ms, median_ms_after};
use crate::error::{Error, Result};
use crate::fuse::{fuse, FuseOptions};

/// The process's peak resident memory so far (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// One ONNX file through `repfuse fuse`, stage by stage.
#[derive(Debug, Serialize)]
pub struct FileBench {
    /// The file.
    pub file: String,
    /// Its size.
    pub bytes_read: u64,
    /// Size of the deploy model written.
    pub bytes_written: u64,
    /// Median: map the file, parse, decode the weights.
    pub read_ms: f64,
    /// Median: the graph rewrite alone.
    pub rewrite_ms: f64,
    /// Median: the weight arithmetic on the CPU reference.
    pub plan_ms: f64,
    /// Median: the atomic write of the deploy model.
    pub write_ms: f64,
    /// Sum of the stage medians.
    pub stages_ms: f64,
    /// Median: a page-cache copy of the same bytes (read the file, write as many
    /// bytes as the deploy model to a new file in the same folder).
    pub copy_ms: f64,
    /// `stages_ms / copy_ms`.
    pub ratio_to_copy: f64,
    /// Median wall time of `repfuse fuse FILE -o OUT` as a child process, as a user
    /// types it (default backend, start-up included), OUT a new file; `None` when the
    /// binary is not at hand.
    pub command_ms: Option<f64>,
    /// The backend that command ran, and why (its own report).
    pub command_backend: Option<String>,
    /// The same with OUT already there: the rename over it makes ext4 start writing
    /// the new file back first (`auto_da_alloc`, kept for crash safety, see
    /// `io/atomic.rs`).
    pub command_replace_ms: Option<f64>,
    /// The child's peak resident memory (its own `VmHWM` report).
    pub command_peak_rss_bytes: Option<u64>,
    /// `command_peak_rss_bytes / bytes_read`.
    pub rss_ratio_to_file: Option<f64>,
}

/// Benchmarks `path` (see [`FileBench`]); `exe` is the `repfuse` binary for the
/// whole-command run. Temporary outputs go to a folder beside nothing important
/// (the system temp folder).
pub fn bench_file(path: &Path, reps: usize, exe: Option<&Path>) -> Result<FileBench> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io { path: std::env::temp_dir(), source: e })?;
    let out = dir.path().join("deploy.onnx");
    let read_ms = median_ms(reps, || crate::io::onnx::read_onnx(path))?;
    let m = crate::io::onnx::read_onnx(path)?;
    let opts = FuseOptions::default();
    let rewrite_ms = median_ms(reps, || fuse(&m.graph, &opts))?;
    let f = fuse(&m.graph, &opts)?;
    let plan_ms = median_ms(reps, || f.weights_cpu(&m.weights))?;
    let w = f.weights_cpu(&m.weights)?;
    // Each rep writes a new file (replacing an existing one adds ext4's flush on
    // rename: `command_replace_ms`).
    let write_ms = median_ms_after(reps, || remove(&out), || crate::io::onnx::write_onnx(Some(&m), &f.graph, &w, &out))?;
    let bytes_written = std::fs::metadata(&out).map_err(|e| Error::Io { path: out.clone(), source: e })?.len();
    let bytes_read = std::fs::metadata(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?.len();
    let copy = dir.path().join("copy.bin");
    // The previous copy is removed untimed, as the write stage's and the command's
    // previous outputs are: the floor and the stages both write new files.
    let copy_ms = median_ms_after(
        reps,
        || remove(&copy),
        || {
            let b = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
            std::fs::write(&copy, &b[..(bytes_written as usize).min(b.len())]).map_err(|e| Error::Io { path: copy.clone(), source: e })
        },
    )?;
    let stages_ms = read_ms + rewrite_ms + plan_ms + write_ms;
    let (command_ms, command_replace_ms, command_peak_rss_bytes, command_backend) = match exe {
        Some(exe) => {
            let (new, replace, rss, backend) = command(exe, path, &out, reps)?;
            (Some(new), Some(replace), rss, backend)
        }
        None => (None, None, None, None),
    };
    Ok(FileBench {
        file: path.display().to_string(),
        bytes_read,
        bytes_written,
        read_ms,
        rewrite_ms,
        plan_ms,
        write_ms,
        stages_ms,
        copy_ms,
        ratio_to_copy: stages_ms / copy_ms,
        command_ms,
        command_backend,
        command_replace_ms,
        command_peak_rss_bytes,
        rss_ratio_to_file: command_peak_rss_bytes.map(|r| r as f64 / bytes_read as f64),
    })
}

/// Removes `path` if it is there (a benchmark's previous output).
fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path: path.to_path_buf(), source: e }),
        _ => Ok(()),
    }
}

/// Median wall times of `exe fuse path -o out --json` (the default backend), with
/// `out` new and with `out` already there, the largest peak RSS, and the backend the
/// command reported with its reason.
fn command(exe: &Path, path: &Path, out: &Path, reps: usize) -> Result<(f64, f64, Option<u64>, Option<String>)> {
    let mut rss = None;
    let mut backend = None;
    let mut run = || {
        let o = std::process::Command::new(exe)
            .args(["fuse", "--json", "-q", "-o"])
            .arg(out)
            .arg(path)
            .output()
            .map_err(|e| Error::Io { path: exe.to_path_buf(), source: e })?;
        if !o.status.success() {
            return Err(Error::Graph(format!("`repfuse fuse {}` failed: {}", path.display(), String::from_utf8_lossy(&o.stderr))));
        }
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|e| Error::Graph(format!("fuse --json: {}", e)))?;
        rss = rss.max(doc["peak_rss_bytes"].as_u64());
        backend = Some(format!("{}: {}", doc["backend"].as_str().unwrap_or("?"), doc["backend_reason"].as_str().unwrap_or("?")));
        Ok(())
    };
    let new = median_ms_after(reps, || remove(out), &mut run)?;
    let replace = median_ms(reps, &mut run)?;
    Ok((new, replace, rss, backend))
}

/// The rewrite's cost at one chain length.
#[derive(Debug, Serialize)]
pub struct ScalePoint {
    /// RepVGG blocks in the chain.
    pub blocks: usize,
    /// Nodes of the training graph.
    pub nodes: usize,
    /// Median rewrite time.
    pub rewrite_ms: f64,
    /// `rewrite_ms / nodes`, in microseconds.
    pub us_per_node: f64,
}

/// Times the rewrite alone on chains of `blocks` RepVGG blocks (8 channels, 8x8):
/// flat `us_per_node` means time linear in the graph.
pub fn rewrite_scaling(blocks: &[usize], reps: usize) -> Result<Vec<ScalePoint>> {
    let mut out = vec![];
    for &n in blocks {
        let mut b = crate::zoo::GraphBuilder::new(1);
        let mut x = b.input("x", &[1, 8, 8, 8]);
        for _ in 0..n {
            x = crate::zoo::blocks::repvgg_block(&mut b, &x, 8, 1, 1);
        }
        b.output(&x);
        let (g, _) = b.finish();
        let t = Instant::now();
        let rewrite_ms = median_ms(reps, || fuse(&g, &FuseOptions::default()))?;
        tracing::info!(blocks = n, s = t.elapsed().as_secs_f64(), "scaling point");
        out.push(ScalePoint { blocks: n, nodes: g.nodes.len(), rewrite_ms, us_per_node: rewrite_ms * 1e3 / g.nodes.len() as f64 });
    }
    Ok(out)
}
