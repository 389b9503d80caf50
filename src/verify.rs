//! Equivalence checks and the tolerance policy (DESIGN.md).
//!
//! `|x - r| <= atol + rtol * |r|` against the f64-accumulated CPU reference. For one
//! conv: atol 1e-5, rtol 5e-4. A network of depth D (conv/linear layers on its
//! longest path) rounds its f32 activations once per layer, so the absolute floor
//! grows with D: atol = 1e-5 * D. lavapipe flushes fp32 denormals, which the absolute
//! floor also covers.

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Allowed error of a fused output: `|x - r| <= atol * max(1, max|r|) + rtol * |r|`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// Absolute part, relative to the largest reference magnitude (at least 1).
    pub atol: f64,
    /// Relative part, per element.
    pub rtol: f64,
}

impl Tolerance {
    /// Float32 rounding of one fused conv (f64 arithmetic, rounded once).
    pub const SINGLE_CONV: Tolerance = Tolerance { atol: 1e-5, rtol: 5e-4 };

    /// Tolerance for `depth` conv/linear layers in sequence: `atol` grows linearly with depth.
    pub fn for_depth(depth: usize) -> Tolerance {
        Tolerance { atol: Self::SINGLE_CONV.atol * depth.max(1) as f64, rtol: Self::SINGLE_CONV.rtol }
    }

    /// Tolerance for `g`, from its [`depth`].
    pub fn for_graph(g: &Graph) -> Tolerance {
        Self::for_depth(depth(g))
    }

    /// For weights stored in float16/bfloat16: rounding a fused weight to half
    /// precision moves it by up to 2^-11 relative (bf16: 2^-8), so the floor is 1e-3
    /// per layer (x max|ref|) and rtol 1e-2.
    pub fn half(g: &Graph) -> Tolerance {
        Tolerance { atol: 1e-3 * depth(g).max(1) as f64, rtol: 1e-2 }
    }
}

/// Conv/Linear layers on the longest path from an input to an output.
pub fn depth(g: &Graph) -> usize {
    let mut d: HashMap<&str, usize> = HashMap::new();
    let mut best = 0;
    for n in &g.nodes {
        let here = n.inputs.iter().filter_map(|t| d.get(t.as_str())).max().copied().unwrap_or(0) + matches!(n.op, Op::Conv2d(_) | Op::Linear(_)) as usize;
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
    /// Flat index of the largest violation of the tolerance (or of max_abs).
    pub worst_index: usize,
    /// Elements outside the tolerance.
    pub over_tolerance: usize,
    /// Elements compared.
    pub count: usize,
    /// The tolerance applied, with `atol` already scaled by `max(1, max|r|)`.
    pub tolerance: Tolerance,
}

impl ErrorStats {
    /// No element outside the tolerance.
    pub fn passed(&self) -> bool {
        self.over_tolerance == 0
    }
}

/// Compares `actual` with `reference` elementwise; `Error::Tensor` when shapes differ.
pub fn compare(actual: &Tensor, reference: &Tensor, tol: Tolerance) -> Result<ErrorStats> {
    if actual.shape() != reference.shape() {
        return Err(Error::tensor("output", format!("shapes differ: {:?} vs reference {:?}", actual.shape(), reference.shape())));
    }
    let scale = reference.data().iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let tol = Tolerance { atol: tol.atol * scale.max(1.0), rtol: tol.rtol };
    let mut s = ErrorStats { max_abs: 0.0, max_rel: 0.0, worst_index: 0, over_tolerance: 0, count: actual.numel(), tolerance: tol };
    let mut worst_excess = f64::NEG_INFINITY;
    for (i, (&x, &r)) in actual.data().iter().zip(reference.data()).enumerate() {
        let (x, r) = (x as f64, r as f64);
        let err = (x - r).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        s.max_abs = s.max_abs.max(err);
        if r.abs() >= 1e-3 * scale && r != 0.0 {
            s.max_rel = s.max_rel.max(err / r.abs());
        }
        let excess = err - (tol.atol + tol.rtol * r.abs());
        if excess > 0.0 {
            s.over_tolerance += 1;
        }
        if excess > worst_excess {
            worst_excess = excess;
            s.worst_index = i;
        }
    }
    Ok(s)
}

/// Seeded random inputs in [-1, 1) for every graph input.
pub fn random_inputs(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    g.inputs
        .iter()
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
/// inputs and compares every output, with the tolerance for the original's depth.
pub fn check_equivalence(original: &Graph, original_w: &Weights, fused: &Graph, fused_w: &Weights, seed: u64) -> Result<Equivalence> {
    check_equivalence_with(original, original_w, fused, fused_w, seed, Tolerance::for_graph(original))
}

/// `check_equivalence` with an explicit tolerance (e.g. `Tolerance::half` for models
/// stored in float16/bfloat16).
pub fn check_equivalence_with(original: &Graph, original_w: &Weights, fused: &Graph, fused_w: &Weights, seed: u64, tol: Tolerance) -> Result<Equivalence> {
    let inputs = random_inputs(original, seed);
    let r = crate::cpu::forward(original, original_w, &inputs)?;
    let x = crate::cpu::forward(fused, fused_w, &inputs)?;
    let mut outputs = Vec::new();
    for name in &original.outputs {
        let a = x.get(name).ok_or_else(|| Error::Graph(format!("fused graph lost output `{}`", name)))?;
        outputs.push((name.clone(), compare(a, &r[name], tol)?));
    }
    Ok(Equivalence { outputs })
}

/// Op types the reference forward cannot run (Opaque nodes), if any: end-to-end
/// verification needs none.
pub fn unrunnable_ops(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g.nodes.iter().filter_map(|n| if let Op::Opaque(o) = &n.op { Some(o.op_type.clone()) } else { None }).collect();
    v.sort();
    v.dedup();
    v
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
}

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
    check_regions_with(original, original_w, fused, origins, fused_w, seed, Tolerance::for_graph)
}

/// `check_regions` with the tolerance chosen per region graph (`Tolerance::half`
/// for weights stored in half precision).
pub fn check_regions_with(
    original: &Graph,
    original_w: &Weights,
    fused: &Graph,
    origins: &std::collections::BTreeMap<String, Vec<String>>,
    fused_w: &Weights,
    seed: u64,
    tolerance: fn(&Graph) -> Tolerance,
) -> Result<Vec<RegionCheck>> {
    let shapes = crate::graph::infer_shapes(original)?;
    let mut out = vec![];
    for (k, (name, from)) in origins.iter().enumerate() {
        let node = fused.node(name).expect("origins name deploy nodes");
        let check = |why: String| RegionCheck { node: name.clone(), from: from.clone(), error: None, skipped: Some(why) };
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
        let mut want = node.inputs.clone();
        want.sort();
        let mut have = inputs.clone();
        have.sort();
        if !produced.contains(out_t) || want != have {
            out.push(check(format!("not a self-contained region (reads {:?}, deploy node reads {:?})", have, want)));
            continue;
        }
        let Some(in_shapes) = inputs.iter().map(|t| shapes.get(t).cloned()).collect::<Option<Vec<_>>>() else {
            out.push(check("input shapes unknown (downstream of an op the reference cannot run)".into()));
            continue;
        };
        let vi = |ts: &[String]| ts.iter().zip(&in_shapes).map(|(t, s)| crate::graph::ValueInfo { name: t.clone(), shape: s.clone() }).collect();
        let sub_orig =
            Graph { inputs: vi(&inputs), outputs: vec![out_t.clone()], nodes: members.into_iter().cloned().collect(), params: original.params.clone() };
        let sub_fused = Graph { inputs: vi(&inputs), outputs: vec![out_t.clone()], nodes: vec![node.clone()], params: fused.params.clone() };
        let feeds = random_inputs(&sub_orig, seed.wrapping_add(k as u64));
        let r = crate::cpu::forward(&sub_orig, original_w, &feeds)?;
        let x = crate::cpu::forward(&sub_fused, fused_w, &feeds)?;
        let stats = compare(&x[out_t], &r[out_t], tolerance(&sub_orig))?;
        out.push(RegionCheck { node: name.clone(), from: from.clone(), error: Some(stats), skipped: None });
    }
    Ok(out)
}
