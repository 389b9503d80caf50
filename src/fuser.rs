//! The embedding API: a `Fuser` is built once (it holds the GPU context and its
//! pipeline cache), then fuses any number of models, from any thread.

use std::sync::OnceLock;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fuse::{fuse, FuseOptions, Fusion, FusionReport};
use crate::gpu::GpuContext;
use crate::graph::Graph;
use crate::weights::Weights;

/// Where the weight arithmetic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "tools", derive(clap::ValueEnum))]
pub enum Backend {
    /// The native CPU reference for a plan that reads less than
    /// [`AUTO_GPU_MIN_SOURCE_BYTES`] of weights (it finishes sooner than a GPU device
    /// opens); above that a hardware GPU when one exists, and the CPU reference when
    /// the only adapter is a software one (lavapipe/llvmpipe/WARP), slower than native
    /// code.
    Auto,
    /// The GPU engine; fails when no adapter opens.
    Gpu,
    /// The native CPU reference.
    Cpu,
}

/// `Backend::Auto` opens a GPU only for a plan reading at least this many bytes of
/// weights. Opening one is not free: on this project's CI machine (lavapipe) the probe
/// alone made `repfuse fuse` on MobileOne-S0 (22 MB) take 0.23-0.38 s and 120 MB of
/// resident memory against 0.11-0.13 s and 40 MB on the CPU, and hardware drivers
/// also take 0.1 s or more to start a device. The CPU reference runs plans at 0.6-2.3
/// GB/s of weights on 2 cores (RepVGG-A0: 16 ms; the 4 GB synthetic RepVGG: 5-6 s),
/// so below 256 MiB it is done in about the time a device takes to open.
pub const AUTO_GPU_MIN_SOURCE_BYTES: usize = 256 << 20;

/// A fused model and how it was made.
#[derive(Clone, Debug)]
pub struct Fused {
    /// The deploy graph.
    pub graph: Graph,
    /// Deploy weights, one per parameter the deploy graph names.
    pub weights: Weights,
    /// What was fused and refused, before/after counts.
    pub report: FusionReport,
    /// Deploy node -> the original nodes it replaces (see `verify::check_regions`).
    pub origins: std::collections::BTreeMap<String, Vec<String>>,
    /// The backend that ran and why it was chosen.
    pub backend: Backend,
    /// Why `backend` was chosen (e.g. which adapter, or why the CPU), for logs.
    pub backend_reason: String,
}

/// Fuses models on a chosen backend; build once, share across threads.
pub struct Fuser {
    backend: Backend,
    /// `Auto` opens a GPU only for a plan reading at least this many bytes.
    auto_gpu_min_source_bytes: usize,
    /// The context, or why it did not open: (no adapter at all?, the message).
    gpu: OnceLock<std::result::Result<GpuContext, (bool, String)>>,
}

impl Fuser {
    /// A fuser for `backend`. The GPU is opened on first use, not here.
    pub fn new(backend: Backend) -> Self {
        Fuser { backend, auto_gpu_min_source_bytes: AUTO_GPU_MIN_SOURCE_BYTES, gpu: OnceLock::new() }
    }

    /// Sets the plan size from which `Auto` opens a GPU (default
    /// [`AUTO_GPU_MIN_SOURCE_BYTES`]); 0 makes `Auto` open one for every plan, as a
    /// long-lived embedder that has paid for the device may want.
    pub fn auto_gpu_min_source_bytes(mut self, bytes: usize) -> Self {
        self.auto_gpu_min_source_bytes = bytes;
        self
    }

    /// The GPU context, opened once.
    pub fn gpu(&self) -> Result<&GpuContext> {
        self.gpu.get_or_init(|| GpuContext::new().map_err(|e| (matches!(e, Error::NoAdapter(_)), e.to_string()))).as_ref().map_err(|(none, e)| {
            // A missing adapter and a device that failed to start are different faults.
            if *none {
                Error::NoAdapter(e.trim_start_matches("no GPU adapter: ").to_string())
            } else {
                Error::Gpu(e.clone())
            }
        })
    }

    /// Which backend `fuse` will use for a plan reading `source_bytes` of weights, and
    /// why.
    pub fn resolve(&self, source_bytes: usize) -> Result<(Backend, String)> {
        match self.backend {
            Backend::Auto if source_bytes < self.auto_gpu_min_source_bytes => Ok((
                Backend::Cpu,
                format!(
                    "the plan reads {:.1} MB of weights, under the {:.1} MB for which opening a GPU pays (use --backend gpu to force it)",
                    source_bytes as f64 / 1e6,
                    self.auto_gpu_min_source_bytes as f64 / 1e6
                ),
            )),
            Backend::Cpu => Ok((Backend::Cpu, "asked for the CPU reference".into())),
            Backend::Gpu => {
                let g = self.gpu()?;
                Ok((Backend::Gpu, format!("asked for the GPU: {} ({:?})", g.info.name, g.info.backend)))
            }
            Backend::Auto => match self.gpu() {
                Ok(g) if !g.is_software() => Ok((Backend::Gpu, format!("hardware adapter {} ({:?})", g.info.name, g.info.backend))),
                Ok(g) => Ok((Backend::Cpu, format!("only a software adapter ({}): the native CPU reference is faster", g.info.name))),
                Err(e) => Ok((Backend::Cpu, format!("no GPU adapter ({})", e))),
            },
        }
    }

    /// Fuses `graph` and computes its deploy weights on the chosen backend.
    ///
    /// ```
    /// use repfuse::{Backend, Fuser, FuseOptions};
    /// let (graph, weights, _) = repfuse::zoo::build("acnet", 1, 16, 0).unwrap();
    /// let fuser = Fuser::new(Backend::Cpu);
    /// let fused = fuser.fuse(&graph, &weights, &FuseOptions::default()).unwrap();
    /// assert!(fused.graph.count("Conv") < graph.count("Conv"));
    /// ```
    pub fn fuse(&self, graph: &Graph, weights: &Weights, opts: &FuseOptions) -> Result<Fused> {
        let f = fuse(graph, opts)?;
        let (backend, backend_reason) = self.resolve(source_bytes(&f.plan, weights))?;
        self.compute(f, weights, backend, backend_reason)
    }

    /// Runs `f`'s plan on `backend` (resolved) and assembles the deploy weights.
    fn compute(&self, f: Fusion, weights: &Weights, backend: Backend, backend_reason: String) -> Result<Fused> {
        tracing::info!(?backend, reason = %backend_reason, "weight arithmetic backend");
        let weights = match backend {
            Backend::Gpu => {
                let computed = crate::gpu::execute_plan_gpu(self.gpu()?, &f.plan, weights)?;
                f.assemble_weights(weights, &computed)?
            }
            _ => f.weights_cpu(weights)?,
        };
        Ok(Fused { graph: f.graph, weights, report: f.report, origins: f.origins, backend, backend_reason })
    }

    /// [`Fuser::fuse`] for a caller that does not need the training weights
    /// afterwards: on the CPU reference each source tensor leaves `weights` once the
    /// plan has read it for the last time (those the deploy graph still names stay),
    /// so the peak memory holds about one model, not the sources and the results
    /// together. On the GPU it is `fuse`.
    pub fn fuse_releasing(&self, graph: &Graph, weights: &mut Weights, opts: &FuseOptions) -> Result<Fused> {
        let f = fuse(graph, opts)?;
        let (backend, backend_reason) = self.resolve(source_bytes(&f.plan, weights))?;
        if backend == Backend::Gpu {
            return self.compute(f, weights, backend, backend_reason);
        }
        tracing::info!(?backend, reason = %backend_reason, "weight arithmetic backend (releasing sources)");
        let computed = crate::cpu::execute_plan_releasing(&f.plan, weights, &|t| f.graph.params.contains_key(t))?;
        let weights = f.assemble_weights(weights, &computed)?;
        Ok(Fused { graph: f.graph, weights, report: f.report, origins: f.origins, backend, backend_reason })
    }
}

/// Bytes of the source weights `plan` reads (as f32, as both executors hold them).
fn source_bytes(plan: &crate::plan::FusionPlan, weights: &Weights) -> usize {
    plan.sources().into_iter().filter_map(|n| weights.get(n).ok()).map(|t| 4 * t.numel()).sum()
}

#[cfg(all(test, feature = "tools"))]
mod tests {
    use super::*;

    #[test]
    fn auto_runs_a_small_plan_on_the_cpu_without_opening_a_gpu() {
        let (g, w, _) = crate::zoo::build("acnet", 1, 16, 0).unwrap();
        let fuser = Fuser::new(Backend::Auto);
        let fused = fuser.fuse(&g, &w, &FuseOptions::default()).unwrap();
        assert_eq!(fused.backend, Backend::Cpu);
        assert!(fused.backend_reason.contains("MB of weights"), "{}", fused.backend_reason);
        assert!(fuser.gpu.get().is_none(), "no GPU may be probed for a small plan");
        // The same plan with the bar at 0 probes (whatever the machine has).
        let eager = Fuser::new(Backend::Auto).auto_gpu_min_source_bytes(0);
        let fused = eager.fuse(&g, &w, &FuseOptions::default()).unwrap();
        assert!(eager.gpu.get().is_some());
        assert!(!fused.backend_reason.contains("MB of weights"), "{}", fused.backend_reason);
    }
}
