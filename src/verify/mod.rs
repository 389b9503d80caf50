//! Equivalence checks and the tolerance policy (README "Exactness and proof").
//!
//! A correct fusion differs from the original only by float rounding. The CPU
//! reference (f64 sums, f32 values between ops) computes, with every output element,
//! its rounding-error scale `S` (`cpu/error_scale.rs`: the standard deviation of the
//! accumulated rounding error, in units of the unit roundoff `u`, propagated through
//! every op of the original graph). An element passes when
//! `|fused - original| <= sigmas * u * S + floor`. `u` is 2^-24 for float32 weights
//! (2^-11 float16, 2^-8 bfloat16: the fused weights are rounded to the file's type),
//! `sigmas` is 8: the error of a correct fusion is the sum of two such random
//! errors (original and fused), so 8 sigmas is about 5.7 of their combined standard
//! deviation, above the largest of a million gaussian samples (~5). The floor, 1e-30,
//! only covers denormals flushed to zero.
//!
//! Measured: correct fusions of the fixtures and zoo use under a tenth of the bound;
//! a fold that drops the BN eps, a branch that loses its bias, a kernel placed one tap
//! off, or swapped pads exceed it by orders of magnitude (tests/mutations.rs).
//!
//! Comparisons without an error scale (GPU against CPU, a file against PyTorch's
//! output) use `S = max|reference|` with `sigmas` grown by the square root of the
//! number of f32 roundings on the path (`Tolerance::f32_sums`, `for_graph`).

use std::collections::HashMap;
use std::path::Path;

pub mod tract_engine;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Unit roundoff of float32, float16 and bfloat16.
pub const UNIT_F32: f64 = 1.0 / (1u64 << 24) as f64;
/// Unit roundoff of float16.
pub const UNIT_F16: f64 = 1.0 / (1u64 << 11) as f64;
/// Unit roundoff of bfloat16.
pub const UNIT_BF16: f64 = 1.0 / (1u64 << 8) as f64;

/// Allowed error of an element: `sigmas * unit * scale + floor`, where `scale` is the
/// element's rounding-error scale (or `max|reference|` where none is known).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// Unit roundoff of the precision the compared values were rounded to.
    pub unit: f64,
    /// How many error scales an element may be off.
    pub sigmas: f64,
    /// Absolute floor (flushed denormals).
    pub floor: f64,
    /// Absolute allowance from the model's measured conditioning, 0 where not
    /// measured: [`SENSITIVITY_SIGMAS`] times the most any output element of the
    /// original moved when every input element was moved by one or two units in the
    /// last place (see [`check_equivalence_onnx`]). An element may be off by the larger of
    /// this and the error-scale bound.
    pub sensitivity: f64,
}

/// How many times the original's measured one-ulp input sensitivity a fused model's
/// output may differ by. A correct fusion changes the rounding at every fused layer
/// by about one unit, and a network amplifies such a change as it amplifies one of
/// its input. Measured with ONNX Runtime on 23 timm models (7 fixtures and 16 other
/// sizes and families, random weights): the fused model's largest error was 0.68 to
/// 2.54 times the largest output change of a half-to-one-ulp input perturbation,
/// while those models amplify a rounding of their input 2x to 10^5x past
/// `u * max|y|` (LCNetV2-L 650x, RepViT-M1.5 780x): a bound without this term
/// failed correct fusions of the ill-conditioned ones.
pub const SENSITIVITY_SIGMAS: f64 = 8.0;

/// The share of `max|y|` past which a conditioning allowance makes an end-to-end
/// comparison inconclusive ([`ErrorStats::inconclusive`]). Measured with tract on
/// 26 timm models (random weights) and the in-repo fixtures: the allowance was at
/// most 2.8e-4 of `max|y|` (LCNetV2-L) on every model but RepVGG-D2se, where it
/// was 8.7 times `max|y|`.
pub const INCONCLUSIVE_SHARE: f64 = 0.01;

impl Tolerance {
    /// Values computed in f32 against an error scale from the reference.
    pub const F32: Tolerance = Tolerance { unit: UNIT_F32, sigmas: 8.0, floor: 1e-30, sensitivity: 0.0 };

    /// Weights stored in `ft` (fused weights rounded to it), against an error scale.
    pub fn for_float(ft: crate::io::onnx::FloatType) -> Tolerance {
        use crate::io::onnx::FloatType;
        let unit = match ft {
            FloatType::F32 => UNIT_F32,
            FloatType::F16 => UNIT_F16,
            FloatType::BF16 => UNIT_BF16,
        };
        Tolerance { unit, ..Self::F32 }
    }

    /// Against `max|reference|`: values made by f32 sums of up to `terms` terms
    /// (random-walk rounding grows like the square root of the count).
    pub fn f32_sums(terms: usize) -> Tolerance {
        Tolerance { sigmas: Self::F32.sigmas * (terms.max(1) as f64).sqrt(), ..Self::F32 }
    }

    /// This tolerance for weights the GPU plan computed: each carries the f32
    /// roundings of its steps (the BN scale's add, square root and division, the
    /// products, the sums of up to 16 branches), not one rounding of an exact f64
    /// value as the CPU reference's do. The same widening as the GPU-vs-CPU plan
    /// bound (`f32_sums(16)`). Measured: LeViT-128S's averaged Linear+BN heads
    /// checked alone came to 1.11x the unwidened bound with lavapipe's weights (0.28x
    /// widened), 0.17x with the CPU reference's. The widening is f32 error, so it is
    /// added in f32 units: for weights stored in float16 it is 0.04% of the bound,
    /// and both backends make the same refusals (multiplying a float16 bound by 4
    /// let the GPU path keep a FastViT RepMixer fold whose float16 rounding the CPU
    /// path refused at 1.2x).
    pub fn for_gpu_weights(self) -> Tolerance {
        let f32_arithmetic = (Self::f32_sums(16).sigmas - Self::F32.sigmas) * UNIT_F32;
        Tolerance { sigmas: self.sigmas + f32_arithmetic / self.unit, ..self }
    }

    /// Against `max|reference|`, for an engine that runs whole models in f32 (tract):
    /// `nodes` roundings on the longest path (`depth_all`), each a random error of up
    /// to one unit roundoff of values up to `max|reference|` (weights in `unit`), at
    /// 16 sigmas: models with long reductions (attention, state-space mixers) round
    /// more per node. Measured: two independent correct runtimes (ONNX Runtime and
    /// PyTorch) differ by up to 0.25 of this bound (EfficientViM-M1, the worst of 19
    /// timm models); correct fusions use 0.01-0.55 of it; a dropped BN eps fails it by
    /// 3x-11000x.
    pub fn for_engine(nodes: usize, unit: f64) -> Tolerance {
        Tolerance { unit, sigmas: 2.0 * Self::F32.sigmas * (nodes.max(1) as f64).sqrt(), ..Self::F32 }
    }

    /// Against `max|reference|`: the outputs of `g` computed with f32 sums (a GPU
    /// forward): `depth` layers of up to `K` terms each.
    pub fn for_graph(g: &Graph) -> Tolerance {
        Self::f32_sums(depth(g).max(1) * max_reduction(g).max(1))
    }
}

/// Longest reduction of one output element (conv `Cin/groups * kh * kw`, linear `in`).
pub fn max_reduction(g: &Graph) -> usize {
    g.nodes.iter().map(|n| n.op.def().reduction_len().unwrap_or(1)).max().unwrap_or(1)
}

/// Nodes of any kind on the longest path from an input to an output.
pub fn depth_all(g: &Graph) -> usize {
    let mut d: HashMap<&str, usize> = HashMap::new();
    let mut best = 0;
    for n in &g.nodes {
        let here = n.inputs.iter().filter_map(|t| d.get(t.as_str())).max().copied().unwrap_or(0) + 1;
        for o in &n.outputs {
            d.insert(o, here);
        }
        best = best.max(here);
    }
    best
}

/// Layers that sum in f32 (conv, linear: `OpDef::reduction_len`) on the longest path from an input to an output.
pub fn depth(g: &Graph) -> usize {
    let mut d: HashMap<&str, usize> = HashMap::new();
    let mut best = 0;
    for n in &g.nodes {
        let here = n.inputs.iter().filter_map(|t| d.get(t.as_str())).max().copied().unwrap_or(0) + n.op.def().reduction_len().is_some() as usize;
        for o in &n.outputs {
            d.insert(o, here);
        }
        best = best.max(here);
    }
    best
}

/// Error of `actual` against `reference`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorStats {
    /// Largest `|x - r|` (infinite if any output is NaN).
    pub max_abs: f64,
    /// Largest `|x - r| / |r|` over elements with `|r|` at least 1e-3 of the largest
    /// `|r|` (relative error of values near zero says nothing).
    pub max_rel: f64,
    /// Largest `|x - r| / allowed`: under 1 passes; how close a pass came to failing.
    pub worst_ratio: f64,
    /// Largest `|r|`.
    pub reference_max: f64,
    /// Flat index of the element with `worst_ratio`.
    pub worst_index: usize,
    /// The allowed error at `worst_index`.
    pub allowed_at_worst: f64,
    /// Elements outside the tolerance.
    pub over_tolerance: usize,
    /// Elements compared.
    pub count: usize,
    /// The tolerance applied.
    pub tolerance: Tolerance,
}

impl ErrorStats {
    /// No element outside the tolerance.
    pub fn passed(&self) -> bool {
        self.over_tolerance == 0
    }

    /// The model's measured conditioning allows more than [`INCONCLUSIVE_SHARE`] of
    /// the output's largest value: the network amplifies a rounding of its input so
    /// far (a chaotic forward pass: RepVGG-D2se with random weights moves its output
    /// 1.5e7 for one-ulp input changes) that a defect of that size could not be told
    /// from a correct fusion. Only the regions checked alone prove such a model.
    pub fn inconclusive(&self) -> bool {
        self.tolerance.sensitivity > INCONCLUSIVE_SHARE * self.reference_max
    }
}

/// Compares `actual` with `reference` elementwise with `S = max|reference|`;
/// `Error::Tensor` when shapes differ.
pub fn compare(actual: &Tensor, reference: &Tensor, tol: Tolerance) -> Result<ErrorStats> {
    compare_scaled(actual, reference, None, tol)
}

/// Compares `actual` with `reference` elementwise; each element may be off by
/// `tol.sigmas * tol.unit * scale[i] + tol.floor` (`scale` None: `max|reference|`).
pub fn compare_scaled(actual: &Tensor, reference: &Tensor, scale: Option<&Tensor>, tol: Tolerance) -> Result<ErrorStats> {
    if actual.shape() != reference.shape() {
        return Err(Error::tensor("output", format!("shapes differ: {:?} vs reference {:?}", actual.shape(), reference.shape())));
    }
    if scale.is_some_and(|s| s.shape() != reference.shape()) {
        return Err(Error::tensor("output", "error scale and reference differ in shape"));
    }
    let max_ref = reference.data().iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let mut s = ErrorStats {
        max_abs: 0.0,
        max_rel: 0.0,
        worst_ratio: 0.0,
        reference_max: max_ref,
        worst_index: 0,
        allowed_at_worst: 0.0,
        over_tolerance: 0,
        count: actual.numel(),
        tolerance: tol,
    };
    for (i, (&x, &r)) in actual.data().iter().zip(reference.data()).enumerate() {
        let (x, r) = (x as f64, r as f64);
        let err = (x - r).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        s.max_abs = s.max_abs.max(err);
        if r.abs() >= 1e-3 * max_ref && r != 0.0 {
            s.max_rel = s.max_rel.max(err / r.abs());
        }
        let sc = scale.map_or(max_ref, |t| t.data()[i] as f64);
        let allowed = (tol.sigmas * tol.unit * sc).max(tol.sensitivity) + tol.floor;
        // NaN errors were made infinite above, so the ratio is never NaN.
        let ratio = err / allowed;
        if ratio > 1.0 {
            s.over_tolerance += 1;
        }
        if ratio > s.worst_ratio || i == 0 {
            s.worst_ratio = ratio;
            s.worst_index = i;
            s.allowed_at_worst = allowed;
        }
    }
    Ok(s)
}

/// Seeded random inputs in [-1, 1) for every graph input.
pub fn random_inputs(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    random_inputs_for(&g.inputs, seed)
}

/// Seeded random inputs in [-1, 1) for the inputs `vs`.
pub fn random_inputs_for(vs: &[crate::graph::ValueInfo], seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    vs.iter()
        .map(|v| {
            let n = v.shape.iter().product();
            let data = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            (v.name.clone(), Tensor::from_parts(v.shape.clone(), data))
        })
        .collect()
}

/// Per-output error of one graph against another on the same random inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Equivalence {
    /// Output name and its error, one per graph output.
    pub outputs: Vec<(String, ErrorStats)>,
}

impl Equivalence {
    /// Every output within its tolerance.
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(|(_, s)| s.passed())
    }
    /// Largest absolute error over all outputs.
    pub fn max_abs(&self) -> f64 {
        self.outputs.iter().map(|(_, s)| s.max_abs).fold(0.0, f64::max)
    }
    /// Largest relative error over all outputs.
    pub fn max_rel(&self) -> f64 {
        self.outputs.iter().map(|(_, s)| s.max_rel).fold(0.0, f64::max)
    }
}

/// Runs `original` and `fused` forward on the CPU reference with the same seeded
/// inputs and compares every output against the original's error scale, with
/// float32 weights ([`Tolerance::F32`]).
pub fn check_equivalence(original: &Graph, original_w: &Weights, fused: &Graph, fused_w: &Weights, seed: u64) -> Result<Equivalence> {
    check_equivalence_with(original, original_w, fused, fused_w, seed, Tolerance::F32)
}

/// `check_equivalence` with an explicit tolerance (e.g. `Tolerance::for_float(F16)`
/// for models stored in float16).
pub fn check_equivalence_with(original: &Graph, original_w: &Weights, fused: &Graph, fused_w: &Weights, seed: u64, tol: Tolerance) -> Result<Equivalence> {
    let inputs = random_inputs(original, seed);
    let r = crate::cpu::forward_with_error_scale(original, original_w, &inputs)?;
    let x = crate::cpu::forward(fused, fused_w, &inputs)?;
    let mut outputs = Vec::new();
    for name in &original.outputs {
        let a = x.get(name).ok_or_else(|| Error::Graph(format!("fused graph lost output `{}`", name)))?;
        let (reference, scale) = &r[name];
        outputs.push((name.clone(), compare_scaled(a, reference, Some(scale), tol)?));
    }
    Ok(Equivalence { outputs })
}

/// An ONNX model as bytes, with the folder its external data lives in.
pub struct OnnxSource<'a> {
    /// The model file's bytes.
    pub bytes: &'a [u8],
    /// Where `location` entries of external initializers resolve.
    pub dir: Option<&'a Path>,
}

/// An end-to-end check by the ONNX engine: the outputs' errors and which form of
/// the engine ran.
#[derive(Clone, Debug, Serialize)]
pub struct EngineCheck {
    /// Errors per output, against the original run by the same engine.
    pub equivalence: Equivalence,
    /// The engine and the form it ran each model in.
    pub engine: String,
}

/// Runs two ONNX models with the ONNX engine (tract) on the same seeded inputs of the
/// shapes `inputs` and compares every output of `original` with `fused`'s, under
/// `tol` (see [`Tolerance::for_engine`]). For graphs the f64 reference cannot run.
pub fn check_equivalence_onnx(original: &OnnxSource, fused: &OnnxSource, inputs: &[crate::graph::ValueInfo], seed: u64, tol: Tolerance) -> Result<EngineCheck> {
    let a = tract_engine::TractModel::load(original.bytes, original.dir, inputs)?;
    let b = tract_engine::TractModel::load(fused.bytes, fused.dir, inputs)?;
    let feeds = random_inputs_for(inputs, seed);
    let (ra, rb) = (a.run(&feeds)?, b.run(&feeds)?);
    let moved = input_sensitivity(&a, &feeds, &ra, tol.unit, seed)?;
    let mut names: Vec<&String> = ra.keys().collect();
    names.sort();
    let mut outputs = vec![];
    for name in names {
        let x = rb.get(name).ok_or_else(|| Error::Graph(format!("fused model lost output `{}`", name)))?;
        let tol = Tolerance { sensitivity: SENSITIVITY_SIGMAS * moved.get(name).copied().unwrap_or(0.0), ..tol };
        outputs.push((name.clone(), compare(x, &ra[name], tol)?));
    }
    let mut engine = String::from("tract-onnx 0.23, typed form (no graph optimisation)");
    if a.widened || b.widened {
        engine.push_str(", half precision widened to float32");
    }
    Ok(EngineCheck { equivalence: Equivalence { outputs }, engine })
}

/// Per output of `model`, the most any element moved from `base` (its outputs on
/// `feeds`) when every input element was moved by `2 * unit` of itself (one or two
/// units in the last place of the weights' precision, either sign at random), the larger of two
/// draws: how much this network amplifies a rounding of its input, which the
/// error-scale bound, without one for ops only the engine runs, cannot know.
fn input_sensitivity(
    model: &tract_engine::TractModel,
    feeds: &HashMap<String, Tensor>,
    base: &HashMap<String, Tensor>,
    unit: f64,
    seed: u64,
) -> Result<HashMap<String, f64>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e45);
    let mut moved: HashMap<String, f64> = HashMap::new();
    for _ in 0..2 {
        let nudged: HashMap<String, Tensor> = feeds
            .iter()
            .map(|(k, t)| {
                let data = t.data().iter().map(|&v| (v as f64 * (1.0 + 2.0 * unit * if rng.random::<bool>() { 1.0 } else { -1.0 })) as f32).collect();
                (k.clone(), Tensor::from_parts(t.shape().to_vec(), data))
            })
            .collect();
        for (name, y) in model.run(&nudged)? {
            let Some(y0) = base.get(&name) else { continue };
            let d = y.data().iter().zip(y0.data()).fold(0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs()));
            let e = moved.entry(name).or_insert(0.0);
            *e = e.max(if d.is_nan() { 0.0 } else { d });
        }
    }
    Ok(moved)
}

/// Op types the reference forward cannot run (Opaque nodes), if any: end-to-end
/// verification needs none.
pub fn unrunnable_ops(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g.nodes.iter().filter_map(|n| if let Op::Opaque(o) = &n.op { Some(o.op_type.clone()) } else { None }).collect();
    v.sort();
    v.dedup();
    v
}

/// The deploy nodes computing `node` from the tensors `inputs`: `node` and, for
/// each tensor it reads that is not among them, its deploy producer, recursively,
/// in topological order; None when that reaches a graph input or more than 64 nodes.
fn deploy_side(fused: &Graph, node: &crate::graph::Node, inputs: &[String]) -> Option<Vec<crate::graph::Node>> {
    let producer: HashMap<&str, &crate::graph::Node> = fused.nodes.iter().flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n))).collect();
    let mut picked: Vec<&str> = vec![];
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        if picked.contains(&n.name.as_str()) {
            continue;
        }
        picked.push(&n.name);
        if picked.len() > 64 {
            return None;
        }
        for t in n.inputs.iter().filter(|t| !inputs.contains(t)) {
            todo.push(producer.get(t.as_str())?);
        }
    }
    // Every region input must still be read, or the two sides take different inputs.
    let nodes: Vec<crate::graph::Node> = fused.nodes.iter().filter(|n| picked.contains(&n.name.as_str())).cloned().collect();
    inputs.iter().all(|t| nodes.iter().any(|n| n.inputs.contains(t))).then_some(nodes)
}

/// One fused region checked alone: the original nodes it replaced against the deploy
/// node, on random inputs of the region's input shapes.
#[derive(Clone, Debug, Serialize)]
pub struct RegionCheck {
    /// The deploy node checked.
    pub node: String,
    /// The original nodes it replaces.
    pub from: Vec<String>,
    /// Its error against the original region; `None` when skipped.
    pub error: Option<ErrorStats>,
    /// Why the region could not be run alone (unknown shapes, not self-contained).
    pub skipped: Option<String>,
    /// The deploy nodes the check ran (this node and the deploy producers it needs
    /// from inside the region); empty when not run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deploy_nodes: Vec<String>,
    /// A region that is not self-contained on its own but lies inside another one
    /// that was checked and passed: the deploy node of that region, whose check ran this node
    /// and every original node this one replaces (RepGhostNet's merged branch conv,
    /// inside the residual Add that reads it).
    pub covered_by: Option<String>,
}

/// Why a region whose original nodes need tensors its deploy side does not read (or
/// that does not produce the deploy node's output) was not run alone; `mark_covered`
/// looks for it.
const NOT_SELF_CONTAINED: &str = "not a self-contained region";

/// Runs every fused region alone: the original sub-graph of the nodes a
/// deploy node replaced, against that deploy node. Works where end-to-end checks
/// cannot (graphs with ops the reference does not run), and localises an error to
/// one region where they can.
pub fn check_regions(
    original: &Graph,
    original_w: &Weights,
    fused: &Graph,
    origins: &std::collections::BTreeMap<String, Vec<String>>,
    fused_w: &Weights,
    seed: u64,
) -> Result<Vec<RegionCheck>> {
    check_regions_with(original, original_w, fused, origins, fused_w, seed, Tolerance::F32)
}

/// `check_regions` with an explicit tolerance (`Tolerance::for_float` for weights
/// stored in half precision).
pub fn check_regions_with(
    original: &Graph,
    original_w: &Weights,
    fused: &Graph,
    origins: &std::collections::BTreeMap<String, Vec<String>>,
    fused_w: &Weights,
    seed: u64,
    tolerance: Tolerance,
) -> Result<Vec<RegionCheck>> {
    // Lenient, and with the shapes the reader's engine analysis proved past ops the
    // reference does not model (`Graph::known_shapes`), so regions there still run.
    let shapes = crate::graph::infer_shapes_seeded(original, crate::graph::Shapes::default())?;
    let mut out = vec![];
    for (k, (name, from)) in origins.iter().enumerate() {
        let node = fused.node(name).expect("origins name deploy nodes");
        let check =
            |why: String| RegionCheck { node: name.clone(), from: from.clone(), error: None, skipped: Some(why), deploy_nodes: vec![], covered_by: None };
        let members: Vec<&crate::graph::Node> = original.nodes.iter().filter(|n| from.contains(&n.name)).collect();
        let produced: std::collections::HashSet<&String> = members.iter().flat_map(|n| &n.outputs).collect();
        let mut inputs: Vec<String> = vec![];
        for n in &members {
            for t in &n.inputs {
                if !produced.contains(t) && !original.params.contains_key(t) && !inputs.contains(t) {
                    inputs.push(t.clone());
                }
            }
        }
        let out_t = &node.outputs[0];
        // The deploy side: the node, and the deploy nodes making what it reads from
        // inside the region (a residual Add that now reads a merged conv), back to the
        // region's inputs.
        let Some(deploy) = deploy_side(fused, node, &inputs) else {
            let mut have = inputs.clone();
            have.sort();
            out.push(check(format!("{} (reads {:?}, deploy node reads {:?})", NOT_SELF_CONTAINED, have, node.inputs)));
            continue;
        };
        if !produced.contains(out_t) {
            out.push(check(format!("{} (does not produce {})", NOT_SELF_CONTAINED, out_t)));
            continue;
        }
        let Some(in_shapes) = inputs.iter().map(|t| shapes.get(t).cloned()).collect::<Option<Vec<_>>>() else {
            out.push(check("input shapes unknown (downstream of an op the reference cannot run, and no ONNX engine shape for it)".into()));
            continue;
        };
        let vi = |ts: &[String]| ts.iter().zip(&in_shapes).map(|(t, s)| crate::graph::ValueInfo { name: t.clone(), shape: s.clone() }).collect();
        let sub_orig = Graph {
            inputs: vi(&inputs),
            outputs: vec![out_t.clone()],
            nodes: members.into_iter().cloned().collect(),
            params: original.params.clone(),
            known_shapes: original.known_shapes.clone(),
        };
        let deploy_nodes = deploy.iter().map(|n| n.name.clone()).collect();
        let sub_fused =
            Graph { inputs: vi(&inputs), outputs: vec![out_t.clone()], nodes: deploy, params: fused.params.clone(), known_shapes: fused.known_shapes.clone() };
        let feeds = random_inputs(&sub_orig, seed.wrapping_add(k as u64));
        let r = crate::cpu::forward_with_error_scale(&sub_orig, original_w, &feeds)?;
        let x = crate::cpu::forward(&sub_fused, fused_w, &feeds)?;
        let (reference, scale) = &r[out_t];
        let stats = compare_scaled(&x[out_t], reference, Some(scale), tolerance)?;
        out.push(RegionCheck { node: name.clone(), from: from.clone(), error: Some(stats), skipped: None, deploy_nodes, covered_by: None });
    }
    mark_covered(&mut out);
    Ok(out)
}

/// Marks each region that could not run alone for want of its neighbours but lies
/// inside a region that ran and passed: one whose check ran this deploy node and
/// whose original nodes include all of this one's. Its arithmetic was then checked
/// as part of the larger region's output (through whatever that region does with
/// it), and the report says by which. Inside a failing region it stays skipped: the
/// failure is reported there.
fn mark_covered(regions: &mut [RegionCheck]) {
    let cover: Vec<Option<String>> = regions
        .iter()
        .map(|r| {
            if r.error.is_some() || !r.skipped.as_deref().is_some_and(|s| s.starts_with(NOT_SELF_CONTAINED)) {
                return None;
            }
            let passed = |m: &RegionCheck| m.error.as_ref().is_some_and(|e| e.passed());
            regions.iter().find(|m| passed(m) && m.deploy_nodes.contains(&r.node) && r.from.iter().all(|n| m.from.contains(n))).map(|m| m.node.clone())
        })
        .collect();
    for (r, c) in regions.iter_mut().zip(cover) {
        if c.is_some() {
            r.skipped = None;
            r.covered_by = c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_widening_is_f32_arithmetic_whatever_the_stored_precision() {
        let f32_sums = Tolerance::f32_sums(16).sigmas;
        let f32 = Tolerance::F32.for_gpu_weights();
        assert!((f32.sigmas - f32_sums).abs() < 1e-9, "float32 weights: the f32_sums(16) bound, {:?}", f32);
        let f16 = Tolerance::for_float(crate::io::onnx::FloatType::F16);
        let widened = f16.for_gpu_weights();
        let added = (widened.sigmas - f16.sigmas) * widened.unit;
        assert!((added / ((f32_sums - Tolerance::F32.sigmas) * UNIT_F32) - 1.0).abs() < 1e-9, "float16 weights: {:?}", widened);
    }
}
