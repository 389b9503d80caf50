//! Fused regions too large for one storage binding, cut by output channel.
//!
//! The GPU plan runs in windows of at most one storage binding (128 MiB on lavapipe
//! and in WebGPU's defaults); a window holds whole regions, so one region over the
//! binding could not run at all (RepVGG-B3's last stage: a 2560x1280 3x3 merge with
//! its two branches, ~150 MB). A merge (`Place`) computes each output channel from
//! the same rows of its sources, so it is cut here into merges of consecutive output
//! rows, each a region of its own, and the rows are joined after the download. Only
//! merges whose every source is a weight of the model (not computed by another
//! step), covers every output channel one-to-one and cuts on group boundaries are
//! cut; any other region over the binding is still refused by the window packing.

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
    let steps_of = |c: usize| component.iter().filter(|&&x| x == c).count();
    let mut cut: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let need = region_need[&component[i]];
        if need <= limit || steps_of(component[i]) != 1 {
            continue;
        }
        if let Some(rows) = rows_per_piece(step, weights, need, limit)? {
            cut.insert(i, rows);
        }
    }
    if cut.is_empty() {
        return Ok(None);
    }
    let mut out = Split { plan: FusionPlan::default(), weights: weights.clone(), joins: vec![] };
    for (i, step) in plan.steps.iter().enumerate() {
        match cut.get(&i) {
            Some(&rows) => cut_place(step, rows, weights, &mut out)?,
            None => out.plan.steps.push(step.clone()),
        }
    }
    Ok(Some(out))
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
fn rows_per_piece(step: &Step, weights: &Weights, need: usize, limit: usize) -> Result<Option<usize>> {
    let Step::Place { out_shape, groups, sources, .. } = step else { return Ok(None) };
    let o = out_shape[0];
    let mut tensors = 2;
    for s in sources {
        let whole = s.out_offset == 0 && s.map.out_stride == 1 && s.map.in_stride == 1 && s.map.in_offset == 0;
        let inputs = source_tensors(s);
        if !whole || !inputs.iter().all(|t| weights.contains(t)) || weights.get(&s.kernel)?.shape()[0] != o {
            return Ok(None);
        }
        tensors += inputs.len();
    }
    // Each piece of r rows needs about r/o of the region, plus each tensor's padding.
    let room = limit.saturating_sub(tensors * 64);
    let max_rows = ((o as u128 * room as u128) / need as u128) as usize;
    let group_rows = o / (*groups).max(1);
    // A source expanded to more groups than its own is not cut (no rule makes one
    // large enough to need it); otherwise whole groups per piece, or pieces inside one.
    if sources.iter().any(|s| s.groups != *groups) {
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

/// `step` (a `Place` that `rows_per_piece` accepted) as pieces of `rows` output rows;
/// `model` is the weights before any cut, whose names a piece must not take.
fn cut_place(step: &Step, rows: usize, model: &Weights, out: &mut Split) -> Result<()> {
    let Step::Place { out_shape, groups, in_channels, sources, out_kernel, out_bias } = step else { unreachable!("only merges are cut") };
    let o = out_shape[0];
    let group_rows = o / (*groups).max(1);
    // Groups of a piece (its sources have as many), and its input channels: whole
    // groups keep their width; a piece inside one group is a dense conv over that
    // group's inputs.
    let g = if rows >= group_rows { rows / group_rows } else { 1 };
    let per = in_channels / groups;
    let mut kernels = vec![];
    let mut biases = vec![];
    for start in (0..o).step_by(rows) {
        let range = start..start + rows;
        let tag = |name: &str| format!("{}#rows{}..{}", name, range.start, range.end);
        let mut srcs = Vec::with_capacity(sources.len());
        for s in sources {
            let mut cut = s.clone();
            cut.groups = g;
            for name in source_tensors(s) {
                let piece = tag(name);
                if model.contains(&piece) {
                    return Err(Error::tensor(&piece, "the model has a weight named like a piece of a cut merge"));
                }
                if !out.weights.contains(&piece) {
                    let t = row_slice(out.weights.get(name)?, &range, &piece)?;
                    out.weights.insert(piece, t);
                }
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
    Ok(())
}

/// Rows `range` of `t` (its first axis) as a tensor of its own.
fn row_slice(t: &Tensor, range: &std::ops::Range<usize>, name: &str) -> Result<Tensor> {
    let row = t.numel() / t.shape()[0].max(1);
    let mut shape = t.shape().to_vec();
    shape[0] = range.len();
    Tensor::new(name, shape, t.data()[range.start * row..range.end * row].to_vec())
}
