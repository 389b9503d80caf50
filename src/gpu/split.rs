//! Fused regions too large for one storage binding, cut by output channel.
//!
//! The GPU plan runs in windows of at most one storage binding (128 MiB on lavapipe
//! and in WebGPU's defaults); a window holds whole regions, so one region over the
//! binding could not run at all (RepVGG-B3's last stage: a 2560x1280 3x3 merge with
//! its two branches, ~150 MB). A merge (`Place`) computes each output channel from
//! the same rows of its sources, so it is cut here into merges of consecutive output
//! rows, each a region of its own, and the rows are joined after the download. Only
//! merges whose every source covers every output channel one-to-one and is a weight
//! of the model, or a depthwise identity computed for this merge alone (a batch
//! norm as a conv, a Dirac: RepVGG's identity branch, cut with it), and that cut on
//! group boundaries are cut; any other region over the binding is still refused by
//! the window packing.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::plan::{FusionPlan, PlaceSource, Step};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// A plan whose oversized merges are cut, the weights it reads (the model's plus the
/// row slices of the cut sources), and how to join the cut outputs.
pub(super) struct Split {
    pub plan: FusionPlan,
    pub weights: Weights,
    /// Each cut output: its name, full shape and its pieces in row order.
    joins: Vec<(String, Vec<usize>, Vec<String>)>,
}

/// Tensor elements a window gives `numel` values (64-element aligned, as `Arena`).
pub(super) fn padded(numel: usize) -> usize {
    numel.div_ceil(64).max(1) * 64
}

/// Cuts every `Place` step whose region needs more than `limit` elements of arena
/// (`region_need[c]` for the step's component `component[i]`); `None` when none
/// needs cutting or none can be cut, so the plan runs as it is.
pub(super) fn split_oversized(
    plan: &FusionPlan,
    weights: &Weights,
    component: &[usize],
    region_need: &HashMap<usize, usize>,
    limit: usize,
) -> Result<Option<Split>> {
    let mut cut: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let need = region_need[&component[i]];
        if need <= limit {
            continue;
        }
        let others: Vec<usize> = (0..plan.steps.len()).filter(|&j| j != i && component[j] == component[i]).collect();
        let Some(producers) = identity_producers(plan, step, &others) else { continue };
        let computed: HashMap<&str, &Step> = producers.iter().flat_map(|&j| plan.steps[j].outputs().into_iter().map(move |t| (t, &plan.steps[j]))).collect();
        if let Some(rows) = rows_per_piece(step, weights, &computed, need, limit)? {
            cut.insert(i, (rows, producers));
        }
    }
    if cut.is_empty() {
        return Ok(None);
    }
    let absorbed: Vec<usize> = cut.values().flat_map(|(_, p)| p.iter().copied()).collect();
    let mut out = Split { plan: FusionPlan::default(), weights: weights.clone(), joins: vec![] };
    for (i, step) in plan.steps.iter().enumerate() {
        match cut.get(&i) {
            Some((rows, producers)) => {
                let producers: Vec<&Step> = producers.iter().map(|&j| &plan.steps[j]).collect();
                cut_place(step, *rows, &producers, weights, &mut out)?
            }
            None if absorbed.contains(&i) => {}
            None => out.plan.steps.push(step.clone()),
        }
    }
    Ok(Some(out))
}

/// The steps of a merge's region other than the merge (`others`) when each one is a
/// depthwise identity (`BnToConv`, or a `Dirac` with a group per channel) whose
/// every output is the kernel or bias of one of the merge's sources: those are cut
/// with the merge, row for row. `None` when the region holds anything else.
fn identity_producers(plan: &FusionPlan, merge: &Step, others: &[usize]) -> Option<Vec<usize>> {
    let Step::Place { sources, .. } = merge else { return None };
    let read: Vec<&str> = sources.iter().flat_map(|s| [Some(s.kernel.as_str()), s.bias.as_deref()]).flatten().collect();
    for &j in others {
        let step = &plan.steps[j];
        let depthwise = match step {
            Step::BnToConv { .. } => true,
            Step::Dirac { channels, groups, .. } => channels == groups,
            _ => false,
        };
        if !depthwise || !step.outputs().iter().all(|t| read.contains(t)) {
            return None;
        }
    }
    Some(others.to_vec())
}

impl Split {
    /// Replaces the pieces in `computed` by the tensors they were cut from.
    pub fn join(&self, computed: &mut HashMap<String, Tensor>) -> Result<()> {
        for (name, shape, pieces) in &self.joins {
            let mut data = Vec::with_capacity(shape.iter().product());
            for p in pieces {
                let t = computed.remove(p).ok_or_else(|| Error::tensor(p, "a cut piece was not computed"))?;
                data.extend_from_slice(t.data());
            }
            computed.insert(name.clone(), Tensor::new(name, shape.clone(), data)?);
        }
        Ok(())
    }
}

/// Output rows per piece for a `Place` that can be cut, the largest divisor of its
/// output channels that fits the binding and keeps every group whole (or every piece
/// inside one group); `None` when it cannot be cut.
fn rows_per_piece(step: &Step, weights: &Weights, computed: &HashMap<&str, &Step>, need: usize, limit: usize) -> Result<Option<usize>> {
    let Step::Place { out_shape, groups, sources, .. } = step else { return Ok(None) };
    let o = out_shape[0];
    let mut tensors = 2;
    for s in sources {
        let whole = s.out_offset == 0 && s.map.out_stride == 1 && s.map.in_stride == 1 && s.map.in_offset == 0;
        let inputs = source_tensors(s);
        let from_model = inputs.iter().all(|t| weights.contains(t)) && weights.get(&s.kernel)?.shape()[0] == o;
        // A computed identity: one group per output channel of a dense merge (its
        // pieces then read their rows' input channels through the channel map).
        let identity = computed.contains_key(s.kernel.as_str()) && s.groups == o && *groups == 1 && identity_rows(computed[s.kernel.as_str()]) == Some(o);
        if !whole || !(from_model || identity) {
            return Ok(None);
        }
        tensors += inputs.len();
    }
    // The identities' batch norms (counted once per output: an overestimate).
    tensors += computed.values().map(|st| st.inputs().len()).sum::<usize>();
    // Each piece of r rows needs about r/o of the region, plus each tensor's padding.
    let room = limit.saturating_sub(tensors * 64);
    let max_rows = ((o as u128 * room as u128) / need as u128) as usize;
    let group_rows = o / (*groups).max(1);
    // A source expanded to more groups than its own is not cut (no rule makes one
    // large enough to need it), computed identities aside; otherwise whole groups per
    // piece, or pieces inside one.
    if sources.iter().any(|s| s.groups != *groups && !computed.contains_key(s.kernel.as_str())) {
        return Ok(None);
    }
    let fits = |r: usize| r.is_multiple_of(group_rows) || group_rows.is_multiple_of(r);
    Ok((1..=max_rows.min(o)).rev().find(|&r| o.is_multiple_of(r) && fits(r)).filter(|&r| r < o))
}

/// The weights a merge source reads: kernel, bias and folded batch norm.
fn source_tensors(s: &PlaceSource) -> Vec<&str> {
    let mut v = vec![s.kernel.as_str()];
    v.extend(s.bias.as_deref());
    if let Some(bn) = &s.bn {
        v.extend([bn.gamma.as_str(), bn.beta.as_str(), bn.mean.as_str(), bn.var.as_str()]);
    }
    v
}

/// Channels of a depthwise identity step (`identity_producers`).
fn identity_rows(step: &Step) -> Option<usize> {
    match step {
        Step::BnToConv { channels, .. } | Step::Dirac { channels, .. } => Some(*channels),
        _ => None,
    }
}

/// Rows `range` of a depthwise identity step, its inputs and outputs named by `tag`
/// (its batch norm's rows sliced into `out.weights`).
fn cut_identity(step: &Step, range: &std::ops::Range<usize>, tag: &dyn Fn(&str) -> String, model: &Weights, out: &mut Split) -> Result<Step> {
    let rows = range.len();
    Ok(match step {
        Step::BnToConv { bn, out_kernel, out_bias, .. } => {
            let mut bn = bn.clone();
            for n in [&mut bn.gamma, &mut bn.beta, &mut bn.mean, &mut bn.var] {
                slice_weight(n, range, tag, model, out)?;
                *n = tag(n);
            }
            Step::BnToConv { bn, channels: rows, out_kernel: tag(out_kernel), out_bias: tag(out_bias) }
        }
        Step::Dirac { kernel, out_kernel, .. } => Step::Dirac { channels: rows, groups: rows, kernel: *kernel, out_kernel: tag(out_kernel) },
        _ => unreachable!("only identities are cut with a merge"),
    })
}

/// Puts rows `range` of the weight `name` into `out.weights` as `tag(name)` (once).
fn slice_weight(name: &str, range: &std::ops::Range<usize>, tag: &dyn Fn(&str) -> String, model: &Weights, out: &mut Split) -> Result<()> {
    let piece = tag(name);
    if model.contains(&piece) {
        return Err(Error::tensor(&piece, "the model has a weight named like a piece of a cut merge"));
    }
    if !out.weights.contains(&piece) {
        let t = row_slice(out.weights.get(name)?, range, &piece)?;
        out.weights.insert(piece, t);
    }
    Ok(())
}

/// `step` (a `Place` that `rows_per_piece` accepted) as pieces of `rows` output rows,
/// with the identity steps (`producers`) that compute some of its sources cut
/// alike; `model` is the weights before any cut, whose names a piece must not take.
fn cut_place(step: &Step, rows: usize, producers: &[&Step], model: &Weights, out: &mut Split) -> Result<()> {
    let Step::Place { out_shape, groups, in_channels, sources, out_kernel, out_bias } = step else { unreachable!("only merges are cut") };
    let o = out_shape[0];
    let group_rows = o / (*groups).max(1);
    // Groups of a piece (its sources have as many), and its input channels: whole
    // groups keep their width; a piece inside one group is a dense conv over that
    // group's inputs.
    let g = if rows >= group_rows { rows / group_rows } else { 1 };
    let per = in_channels / groups;
    let computed: Vec<&str> = producers.iter().flat_map(|p| p.outputs()).collect();
    let mut kernels = vec![];
    let mut biases = vec![];
    let mut identity_pieces: Vec<Vec<String>> = vec![vec![]; computed.len()];
    for start in (0..o).step_by(rows) {
        let range = start..start + rows;
        let tag = |name: &str| format!("{}#rows{}..{}", name, range.start, range.end);
        for p in producers {
            let piece = cut_identity(p, &range, &tag, model, out)?;
            out.plan.steps.push(piece);
        }
        for (pieces, name) in identity_pieces.iter_mut().zip(&computed) {
            pieces.push(tag(name));
        }
        let mut srcs = Vec::with_capacity(sources.len());
        for s in sources {
            let mut cut = s.clone();
            cut.groups = g;
            for name in source_tensors(s) {
                if !computed.contains(&name) {
                    slice_weight(name, &range, &tag, model, out)?;
                }
            }
            if computed.contains(&s.kernel.as_str()) {
                // A piece of a depthwise identity: a group per row, row r reading the
                // merge's input channel start + r.
                cut.groups = rows;
                cut.map.in_offset = start;
            }
            cut.kernel = tag(&s.kernel);
            cut.bias = s.bias.as_deref().map(tag);
            if let Some(bn) = &mut cut.bn {
                for n in [&mut bn.gamma, &mut bn.beta, &mut bn.mean, &mut bn.var] {
                    *n = tag(n);
                }
            }
            srcs.push(cut);
        }
        let mut shape = out_shape.clone();
        shape[0] = rows;
        kernels.push(tag(out_kernel));
        biases.extend(out_bias.as_deref().map(tag));
        out.plan.steps.push(Step::Place {
            out_shape: shape,
            groups: g,
            in_channels: per * g,
            sources: srcs,
            out_kernel: tag(out_kernel),
            out_bias: out_bias.as_deref().map(tag),
        });
    }
    out.joins.push((out_kernel.clone(), out_shape.clone(), kernels));
    if let Some(b) = out_bias {
        out.joins.push((b.clone(), vec![o], biases));
    }
    // The identities' own tensors, which the plan also returns.
    for p in producers {
        for (name, pieces) in computed.iter().zip(&identity_pieces) {
            if p.outputs().contains(name) {
                let shape = match p {
                    Step::Dirac { kernel, .. } => vec![o, 1, kernel[0], kernel[1]],
                    Step::BnToConv { out_kernel, .. } if out_kernel == name => vec![o, 1, 1, 1],
                    _ => vec![o],
                };
                out.joins.push((name.to_string(), shape, pieces.clone()));
            }
        }
    }
    Ok(())
}

/// Rows `range` of `t` (its first axis): a view of its storage, not a copy.
fn row_slice(t: &Tensor, range: &std::ops::Range<usize>, name: &str) -> Result<Tensor> {
    t.row_view(range.clone()).ok_or_else(|| Error::tensor(name, format!("rows {:?} are outside shape {:?}", range, t.shape())))
}
