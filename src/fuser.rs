//! The embedding API: a `Fuser` is built once (it holds the GPU context and its
//! pipeline cache), then fuses any number of models, from any thread.

use std::sync::OnceLock;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fuse::{fuse, FuseOptions, FusionReport};
use crate::gpu::GpuContext;
use crate::graph::Graph;
use crate::weights::Weights;

/// Where the weight arithmetic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "tools", derive(clap::ValueEnum))]
pub enum Backend {
    /// A hardware GPU when one exists; the native CPU reference when the only adapter
    /// is a software one (lavapipe/llvmpipe/WARP), which is slower than native code.
    Auto,
    /// The GPU engine; fails when no adapter opens.
    Gpu,
    /// The native CPU reference.
    Cpu,
}

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
    /// The context, or why it did not open: (no adapter at all?, the message).
    gpu: OnceLock<std::result::Result<GpuContext, (bool, String)>>,
}

impl Fuser {
    /// A fuser for `backend`. The GPU is opened on first use, not here.
    pub fn new(backend: Backend) -> Self {
        Fuser { backend, gpu: OnceLock::new() }
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

    /// Which backend `fuse` will use, and why.
    pub fn resolve(&self) -> Result<(Backend, String)> {
        match self.backend {
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
        let (backend, backend_reason) = self.resolve()?;
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
        let (backend, backend_reason) = self.resolve()?;
        if backend == Backend::Gpu {
            return self.fuse(graph, weights, opts);
        }
        let f = fuse(graph, opts)?;
        tracing::info!(?backend, reason = %backend_reason, "weight arithmetic backend (releasing sources)");
        let computed = crate::cpu::execute_plan_releasing(&f.plan, weights, &|t| f.graph.params.contains_key(t))?;
        let weights = f.assemble_weights(weights, &computed)?;
        Ok(Fused { graph: f.graph, weights, report: f.report, origins: f.origins, backend, backend_reason })
    }
}
