//! A model fused end to end, the way `repfuse fuse` does it and the Python package
//! does it: fuse, verify (the f64 reference, the ONNX engine on the file as read
//! against the file as it will be written, and every region alone), and only then
//! the deploy model to write. One place, so the command and the bindings cannot
//! drift apart.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fuser::{Fused, Fuser};
use crate::io::onnx::FloatType;
use crate::io::LoadedModel;
use crate::verify::{check_equivalence_with, unrunnable_ops, EngineCheck, OnnxSource, RegionCheck, Tolerance};
use crate::weights::Weights;
use crate::FuseOptions;

/// How to fuse, verify and write one model.
#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// The rewrite's options.
    pub fuse: FuseOptions,
    /// Run the original and the fused model and refuse a result over tolerance.
    pub verify: bool,
    /// Write a float16/bfloat16 ONNX model as float32.
    pub f32: bool,
    /// Testing the verifier: scale the first fused weight by 1 + 1e-3 so that
    /// verification must fail.
    pub inject_fault: bool,
}

/// The engine name of the reference's end-to-end check.
pub const REFERENCE_ENGINE: &str = "CPU reference, f64 sums, per-element error scale";

/// A fused model with its proof, ready to write.
pub struct Deployment {
    /// The model as read (converted to float32 under `DeployOptions::f32`): the writer
    /// keeps its file shape.
    pub model: LoadedModel,
    /// The deploy graph, its weights and the report.
    pub fused: Fused,
    /// End-to-end checks that ran, the tightest (the reference's) first.
    pub checks: Vec<EngineCheck>,
    /// Why no end-to-end check could run, when none did under `verify`.
    pub skipped: Option<String>,
    /// Every fused region run alone on the reference (empty without `verify`).
    pub regions: Vec<RegionCheck>,
    /// Wall time of the rewrite and the weight arithmetic.
    pub fuse_ms: f64,
}

impl Deployment {
    /// Every check that ran is within tolerance (true when none ran).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.equivalence.passed()) && !self.regions.iter().any(|r| r.error.as_ref().is_some_and(|e| !e.passed()))
    }

    /// The deploy model as ONNX bytes (the input must have been ONNX).
    pub fn onnx_bytes(&self) -> Result<Vec<u8>> {
        let src = self.model.onnx.as_ref().ok_or_else(|| Error::Graph("the model was not read from ONNX; write it to a native .json file".into()))?;
        crate::io::onnx::onnx_bytes(Some(src), &self.fused.graph, &self.fused.weights)
    }

    /// Writes the deploy model to `path` (`.onnx` or native `.json`), atomically.
    /// Refused when a check failed: no deploy model that lies is ever written.
    pub fn save(&self, path: &Path) -> Result<()> {
        if !self.passed() {
            return Err(Error::Graph(format!("not writing {}: the fused model is over tolerance", path.display())));
        }
        crate::io::save_model(path, self.model.onnx.as_ref(), &self.fused.graph, &self.fused.weights)
    }

    /// The result as JSON, the same fields for `repfuse fuse --json` and Python.
    pub fn to_json(&self) -> Value {
        let first = self.checks.first();
        json!({
            "backend": self.fused.backend, "backend_reason": self.fused.backend_reason, "fuse_ms": self.fuse_ms,
            "report": self.fused.report,
            "verification": first.map(|c| &c.equivalence), "verification_engine": first.map(|c| &c.engine),
            "verifications": checks_json(&self.checks),
            "verification_skipped": self.skipped, "regions": self.regions, "passed": self.passed(),
        })
    }
}

/// Each check as `{engine, verification, passed, inconclusive}`.
pub fn checks_json(checks: &[EngineCheck]) -> Vec<Value> {
    checks
        .iter()
        .map(|c| {
            let inconclusive = c.equivalence.outputs.iter().any(|(_, s)| s.inconclusive());
            json!({"engine": c.engine, "verification": c.equivalence, "passed": c.equivalence.passed(), "inconclusive": inconclusive})
        })
        .collect()
}

/// Fuses `model` on `fuser` and, under `opts.verify`, proves the result. `source` is
/// the ONNX file as read (bytes and folder), for the ONNX engine's check; the model's
/// own weights are never changed.
pub fn deploy(mut model: LoadedModel, source: Option<&OnnxSource>, fuser: &Fuser, opts: &DeployOptions) -> Result<Deployment> {
    // The file's own float type: the engine runs the file as read, in that precision.
    let file_unit = model.onnx.as_ref().map_or(Tolerance::F32.unit, |m| Tolerance::for_float(m.float_type).unit);
    if opts.f32 {
        model.onnx = model.onnx.map(|m| m.as_f32()).transpose()?;
        crate::io::onnx::carried_nodes_as_f32(&mut model.graph)?;
    }
    if opts.verify {
        return deploy_verified(model, source, fuser, opts, file_unit);
    }
    let t = Instant::now();
    let mut fused = {
        // Nothing reads the training weights after fusion (the writer takes the
        // deploy weights): let the plan give their memory back as it goes.
        if let Some(m) = model.onnx.as_mut() {
            m.weights = Weights::new();
        }
        fuser.fuse_releasing(&model.graph, &mut model.weights, &opts.fuse)?
    };
    if opts.inject_fault {
        fused.weights = inject_fault(&fused);
    }
    let fuse_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Deployment { model, fused, checks: vec![], skipped: None, regions: vec![], fuse_ms })
}

/// Fusions of one model a float16/bfloat16 file gets: the first, and one more per
/// round of regions refused for their rounding.
const STORED_TYPE_ROUNDS: usize = 3;

/// `deploy` under `verify`. A model stored in float16 or bfloat16 has its fused
/// weights rounded to that type, and a fold can leave them in its subnormal range
/// (FastViT's layer scales of 1e-5 times a conv: every product under float16's
/// smallest normal, 6.1e-5, keeps a few bits) while the original computes the same
/// values from normal numbers. Such a region fails its check alone; its original
/// nodes are then kept as they are (refused, with the measured error as the reason)
/// and the model is fused again, so the rest still fuses. A float32 model gets no
/// second try: a region over tolerance there is a wrong rewrite, reported as such.
fn deploy_verified(mut model: LoadedModel, source: Option<&OnnxSource>, fuser: &Fuser, opts: &DeployOptions, file_unit: f64) -> Result<Deployment> {
    let mut fuse_opts = opts.fuse.clone();
    for round in 1.. {
        let t = Instant::now();
        let mut fused = fuser.fuse(&model.graph, &model.weights, &fuse_opts)?;
        if opts.inject_fault {
            fused.weights = inject_fault(&fused);
        }
        let fuse_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut d = Deployment { model, fused, checks: vec![], skipped: None, regions: vec![], fuse_ms };
        // Verify the model as it will be written: weights rounded to the file's float type.
        let stored = d.model.onnx.as_ref().map(|m| m.float_type).filter(|t| *t != FloatType::F32);
        let written = stored.map(|ft| round_weights(&d.fused.weights, ft));
        let written_w = written.as_ref().unwrap_or(&d.fused.weights);
        let tol = stored.map_or(Tolerance::F32, Tolerance::for_float);
        // GPU-computed weights carry f32 rounding of every step (see `for_gpu_weights`).
        let tol = if d.fused.backend == crate::fuser::Backend::Gpu { tol.for_gpu_weights() } else { tol };
        let (checks, skipped) = end_to_end(&d.model, source, &d.fused, written_w, tol, file_unit)?;
        d.regions = crate::verify::check_regions_with(&d.model.graph, &d.model.weights, &d.fused.graph, &d.fused.origins, written_w, 7, tol)?;
        (d.checks, d.skipped) = (checks, skipped);
        let Some(ft) = stored.filter(|_| !d.passed() && !opts.inject_fault && round < STORED_TYPE_ROUNDS) else { return Ok(d) };
        let mut kept = 0;
        for r in &d.regions {
            let Some(e) = r.error.as_ref().filter(|e| !e.passed()) else { continue };
            let why = format!("fused, its weights rounded to {:?} are {:.1}x over tolerance when the region runs alone (`{}`)", ft, e.worst_ratio, r.node);
            for n in &r.from {
                kept += fuse_opts.frozen.insert(n.clone(), why.clone()).is_none() as usize;
            }
        }
        if kept == 0 {
            return Ok(d);
        }
        tracing::info!(round, kept, "regions over tolerance in the stored float type: fusing again without them");
        model = d.model;
    }
    unreachable!("the loop returns by its last round")
}

/// Runs the original model and the fused one on seeded inputs: on the f64 reference
/// when it can run every op, and (ONNX input) on the ONNX engine, the file as read
/// against the fused model as it will be written, which also checks what the reader
/// lifted. `Ok((vec![], Some(why)))` when neither can.
fn end_to_end(
    model: &LoadedModel,
    source: Option<&OnnxSource>,
    fused: &Fused,
    written_w: &Weights,
    tol: Tolerance,
    file_unit: f64,
) -> Result<(Vec<EngineCheck>, Option<String>)> {
    let mut checks = vec![];
    let ops = unrunnable_ops(&model.graph);
    if ops.is_empty() {
        let eq = check_equivalence_with(&model.graph, &model.weights, &fused.graph, written_w, 7, tol)?;
        checks.push(EngineCheck { equivalence: eq, engine: REFERENCE_ENGINE.into() });
    }
    let (Some(onnx), Some(source)) = (&model.onnx, source) else {
        let why = format!("the graph has ops the reference cannot run ({}) and is not an ONNX file", ops.join(", "));
        return Ok((checks, (!ops.is_empty()).then_some(why)));
    };
    let written = crate::io::onnx::onnx_bytes(Some(onnx), &fused.graph, written_w)?;
    let tol = Tolerance::for_engine(crate::verify::depth_all(&model.graph), tol.unit.max(file_unit));
    match crate::verify::check_equivalence_onnx(source, &OnnxSource { bytes: &written, dir: source.dir }, &model.graph.inputs, 7, tol) {
        Ok(c) => checks.push(c),
        Err(e) if checks.is_empty() => return Ok((checks, Some(format!("the reference cannot run {} and the ONNX engine failed: {}", ops.join(", "), e)))),
        Err(e) => tracing::warn!("the ONNX engine could not run the model ({}); the reference checked it", e),
    }
    Ok((checks, None))
}

/// Runs two models on the same seeded inputs: the reference when it can run both,
/// and the ONNX engine on the two files when both are ONNX (`a_src`, `b_src`).
pub fn compare_models(a: &LoadedModel, a_src: Option<&OnnxSource>, b: &LoadedModel, b_src: Option<&OnnxSource>, seed: u64) -> Result<Vec<EngineCheck>> {
    if a.graph.inputs != b.graph.inputs {
        return Err(Error::Graph(format!("the models take different inputs: {:?} vs {:?}", a.graph.inputs, b.graph.inputs)));
    }
    // The coarser of the two files' float types bounds the rounding of the weights.
    let tol =
        [a, b]
            .iter()
            .filter_map(|m| m.onnx.as_ref().map(|o| Tolerance::for_float(o.float_type)))
            .fold(Tolerance::F32, |t, u| if u.unit > t.unit { u } else { t });
    let unrunnable: Vec<String> = [a, b].iter().flat_map(|m| unrunnable_ops(&m.graph)).collect();
    let mut checks = vec![];
    if unrunnable.is_empty() {
        let eq = check_equivalence_with(&a.graph, &a.weights, &b.graph, &b.weights, seed, tol)?;
        checks.push(EngineCheck { equivalence: eq, engine: REFERENCE_ENGINE.into() });
    }
    if let (Some(sa), Some(sb)) = (a_src, b_src) {
        // The files as they are, through an independent engine (it also checks what
        // repfuse's reader made of them).
        let t = Tolerance::for_engine(crate::verify::depth_all(&a.graph), tol.unit);
        match crate::verify::check_equivalence_onnx(sa, sb, &a.graph.inputs, seed, t) {
            Ok(c) => checks.push(c),
            Err(e) if checks.is_empty() => {
                return Err(Error::Graph(format!("the reference cannot run ops {} and the ONNX engine failed: {}", unrunnable.join(", "), e)))
            }
            Err(e) => tracing::warn!("the ONNX engine could not run the models ({}); the reference checked them", e),
        }
    }
    if checks.is_empty() {
        return Err(Error::Graph(format!("the reference cannot run ops {} and the ONNX engine needs two ONNX files", unrunnable.join(", "))));
    }
    Ok(checks)
}

/// What `repfuse inspect` shows: inputs, outputs, the report of the rewrite that
/// would run (nothing computed, nothing written), and the ops the reference cannot run.
/// Returns the report and the whole as JSON.
pub fn inspect(model: &LoadedModel) -> Result<(crate::FusionReport, Value)> {
    let f = crate::fuse(&model.graph, &FuseOptions::default())?;
    let doc = json!({"inputs": model.graph.inputs, "outputs": model.graph.outputs, "nodes": model.graph.nodes.len(), "report": f.report, "unrunnable_ops": unrunnable_ops(&model.graph)});
    Ok((f.report, doc))
}

/// The fused weights with the first weight of the first fused node scaled by 1 + 1e-3:
/// a defect far above f32 rounding, for testing the verifier end to end.
fn inject_fault(fused: &Fused) -> Weights {
    let mut w = fused.weights.clone();
    let first = fused.origins.keys().next().and_then(|n| fused.graph.node(n)).and_then(|n| match &n.op {
        crate::graph::Op::Conv2d(c) => Some(c.weight.clone()),
        crate::graph::Op::Linear(l) => Some(l.weight.clone()),
        _ => None,
    });
    if let Some(name) = first {
        let t = w.get(&name).expect("deploy weights hold every deploy parameter").clone();
        let data = t.data().iter().map(|v| v * (1.0 + 1e-3)).collect();
        w.insert(name.clone(), crate::Tensor::new(&name, t.shape().to_vec(), data).expect("same shape"));
    }
    w
}

/// The weights as a file of float type `ft` stores them.
fn round_weights(w: &Weights, ft: FloatType) -> Weights {
    let mut out = Weights::new();
    for (k, t) in w.iter() {
        let d: Vec<f32> = t.data().iter().map(|v| ft.round(*v)).collect();
        out.insert(k.clone(), crate::Tensor::new(k, t.shape().to_vec(), d).expect("same shape"));
    }
    out
}
