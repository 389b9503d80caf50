//! Runs a FusionPlan on the CPU: the reference executor the GPU engine is checked
//! against. Reads source weights by shared reference and never writes them.

use std::collections::HashMap;

use rayon::prelude::*;

use super::primitives::{self, BnFold, BnTensors, ComposeInput, PlaceInput};
use crate::error::{Error, Result};
use crate::plan::{BnParams, FusionPlan, Step};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Source weights plus the tensors computed so far.
struct Slots<'a> {
    source: &'a Weights,
    computed: HashMap<String, Tensor>,
}

impl Slots<'_> {
    fn get(&self, name: &str) -> Result<&Tensor> {
        if self.computed.contains_key(name) {
            return Ok(&self.computed[name]);
        }
        self.source.get(name)
    }
    fn get_opt(&self, name: Option<&String>) -> Result<Option<Tensor>> {
        name.map(|n| self.get(n).cloned()).transpose()
    }
}

fn bn_tensors(slots: &Slots, bn: &BnParams) -> Result<[Tensor; 4]> {
    Ok([slots.get(&bn.gamma)?.clone(), slots.get(&bn.beta)?.clone(), slots.get(&bn.mean)?.clone(), slots.get(&bn.var)?.clone()])
}

fn with_shape(name: &str, t: Tensor, shape: &[usize]) -> Result<Tensor> {
    t.reshaped(shape.to_vec()).ok_or_else(|| Error::tensor(name, format!("computed {:?} cannot be viewed as {:?}", t.shape(), shape)))
}

/// Executes every step; returns all computed tensors by name.
pub fn execute_plan(plan: &FusionPlan, weights: &Weights) -> Result<HashMap<String, Tensor>> {
    // The full finiteness scan of the sources is deferred (see
    // `FusionPlan::check_bn_variances`): one pass less over every weight. When a step
    // or the output check fails, a non-finite source is the likelier cause, and the
    // scan names it.
    plan.check_bn_variances(weights)?;
    plan.output_shapes(weights)?;
    run_steps(plan, weights).or_else(|failed| {
        plan.check_sources(weights)?;
        Err(failed)
    })
}

/// `execute_plan` that gives memory back as it goes: each source tensor leaves
/// `weights` after the last dependency level that reads it, unless `keep` says the
/// deploy graph still names it. For a caller that does not need the training weights
/// afterwards (`repfuse fuse` without `--verify`): the peak then holds about one
/// model's weights, not the sources and the results together. A released source is
/// checked for NaN/Inf as it goes, so a failure can still name it.
pub fn execute_plan_releasing(plan: &FusionPlan, weights: &mut Weights, keep: &dyn Fn(&str) -> bool) -> Result<HashMap<String, Tensor>> {
    plan.check_bn_variances(weights)?;
    plan.output_shapes(weights)?;
    let levels = plan.levels();
    let depth = levels.iter().max().map_or(0, |l| l + 1);
    let sources: std::collections::HashSet<&str> = plan.sources().into_iter().collect();
    let mut release: Vec<Vec<String>> = vec![vec![]; depth];
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (s, &l) in plan.steps.iter().zip(&levels) {
        for t in s.inputs().into_iter().filter(|t| sources.contains(t)) {
            let e = last.entry(t).or_insert(l);
            *e = (*e).max(l);
        }
    }
    for (t, l) in last {
        if !keep(t) {
            release[l].push(t.to_string());
        }
    }
    let mut computed = HashMap::new();
    let mut non_finite: Option<Error> = None;
    for (level, gone) in release.iter().enumerate() {
        let ran =
            run_level(plan, &levels, level, weights, &mut computed).and_then(|_| if level + 1 == depth { check_outputs(plan, &computed) } else { Ok(()) });
        if let Err(failed) = ran {
            return Err(non_finite.take().unwrap_or_else(|| plan.check_present_sources(weights).err().unwrap_or(failed)));
        }
        let released: Vec<(&str, Tensor)> = gone.iter().filter_map(|t| weights.remove(t).map(|x| (t.as_str(), x))).collect();
        if non_finite.is_none() {
            // On every core, in blocks (`check_finite`): a scan of the sources one by
            // one was a quarter of the plan inside `repfuse fuse` (RepVGG-A0, 4.2 of
            // 14 ms).
            let views: Vec<(&str, &Tensor)> = released.iter().map(|(t, x)| (*t, x)).collect();
            non_finite = FusionPlan::check_finite(&views).err();
        }
        // Each drop gives the tensor's pages back (a system call): on every core too.
        released.into_par_iter().for_each(drop);
    }
    if depth == 0 {
        check_outputs(plan, &computed)?;
    }
    Ok(computed)
}

fn run_steps(plan: &FusionPlan, weights: &Weights) -> Result<HashMap<String, Tensor>> {
    let levels = plan.levels();
    let depth = levels.iter().max().map_or(0, |l| l + 1);
    let mut computed = HashMap::new();
    for level in 0..depth {
        run_level(plan, &levels, level, weights, &mut computed)?;
    }
    check_outputs(plan, &computed)?;
    Ok(computed)
}

/// `FusionPlan::check_outputs` but for the place kernels, which `primitives::place`
/// checked as it rounded them (one pass over the largest outputs less).
fn check_outputs(plan: &FusionPlan, computed: &HashMap<String, Tensor>) -> Result<()> {
    let placed: std::collections::HashSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Place { out_kernel, .. } => Some(out_kernel.as_str()),
            _ => None,
        })
        .collect();
    plan.check_outputs_unless(computed, |n| placed.contains(n))
}

/// Runs the steps of one dependency level, adding their outputs to `computed`. Steps
/// of one level are independent: they run in parallel (each primitive is itself
/// parallel over output channels). The level's place kernels, most of a fused
/// model's bytes, are written straight into one arena (huge pages, see `arena`).
fn run_level(plan: &FusionPlan, levels: &[usize], level: usize, weights: &Weights, computed: &mut HashMap<String, Tensor>) -> Result<()> {
    let slots = Slots { source: weights, computed: std::mem::take(computed) };
    let steps: Vec<&Step> = plan.steps.iter().zip(levels).filter(|(_, l)| **l == level).map(|(s, _)| s).collect();
    let lens: Vec<Option<usize>> = steps
        .iter()
        .map(|s| match s {
            Step::Place { out_shape, .. } => crate::tensor::checked_numel(out_shape),
            _ => None,
        })
        .collect();
    let filled = crate::arena::Arena::fill_parallel(&lens, crate::arena::Pages::Keep, |i, dst| run_step(steps[i], &slots, dst));
    let outputs: Result<Vec<Vec<(String, Tensor)>>> = match filled {
        Some(f) => f
            .results
            .into_iter()
            .zip(&f.starts)
            .map(|(o, start)| {
                let mut o = o?;
                if let (Some((name, shape)), Some(start)) = (o.in_arena.take(), start) {
                    o.tensors.push((name, Tensor::in_arena(&f.arena, *start, shape)));
                }
                Ok(o.tensors)
            })
            .collect(),
        None => steps.par_iter().map(|s| run_step(s, &slots, None).map(|o| o.tensors)).collect(),
    };
    *computed = slots.computed;
    computed.extend(outputs?.into_iter().flatten());
    Ok(())
}

/// What one step computed: tensors it allocated, and the name and shape of the one
/// it wrote into the level's arena, if any.
struct StepOut {
    tensors: Vec<(String, Tensor)>,
    in_arena: Option<(String, Vec<usize>)>,
}

/// Runs one step; a place writes its kernel into `dst` when given one (its arena
/// slice, exactly the kernel's size).
fn run_step(step: &Step, slots: &Slots, dst: Option<&mut [f32]>) -> Result<StepOut> {
    let mut out = Vec::with_capacity(2);
    let mut in_arena = None;
    match step {
        Step::FoldBn { kernel, bias, bn, out_kernel, out_bias } => {
            let k = slots.get(kernel)?.clone();
            let b = slots.get_opt(bias.as_ref())?;
            let [g, be, m, v] = bn_tensors(slots, bn)?;
            let bnt = BnTensors { gamma: &g, beta: &be, mean: &m, var: &v, eps: bn.eps };
            let (k2, b2) = primitives::fold_bn(&k, b.as_ref(), &bnt).map_err(|e| in_step(e, out_kernel))?;
            out.push((out_kernel.to_string(), k2));
            out.push((out_bias.to_string(), b2));
        }
        Step::BnToConv { bn, channels, out_kernel, out_bias } => {
            let [g, be, m, v] = bn_tensors(slots, bn)?;
            let bnt = BnTensors { gamma: &g, beta: &be, mean: &m, var: &v, eps: bn.eps };
            let (k, b) = primitives::bn_to_conv(&bnt, *channels).map_err(|e| in_step(e, out_kernel))?;
            out.push((out_kernel.to_string(), k));
            out.push((out_bias.to_string(), b));
        }
        Step::Dirac { channels, groups, kernel, out_kernel } => {
            out.push((out_kernel.to_string(), primitives::dirac(*channels, *groups, *kernel)?));
        }
        Step::AvgPoolKernel { channels, kernel, out_kernel } => {
            out.push((out_kernel.to_string(), primitives::avgpool_kernel(*channels, *kernel)));
        }
        Step::Place { out_shape, groups, in_channels, sources, out_kernel, out_bias } => {
            let mut owned = Vec::with_capacity(sources.len());
            for s in sources {
                let folded = match &s.bn {
                    Some(bn) => {
                        let [g, be, m, v] = bn_tensors(slots, bn)?;
                        let o = g.numel();
                        Some(
                            primitives::bn_scale_shift(&BnTensors { gamma: &g, beta: &be, mean: &m, var: &v, eps: bn.eps }, o)
                                .map_err(|e| in_step(e, out_kernel))?,
                        )
                    }
                    None => None,
                };
                owned.push((slots.get(&s.kernel)?.clone(), slots.get_opt(s.bias.as_ref())?, folded));
            }
            let inputs: Vec<PlaceInput> = sources
                .iter()
                .zip(&owned)
                .map(|(s, (k, b, f))| PlaceInput {
                    kernel: k,
                    bias: b.as_ref(),
                    groups: s.groups,
                    offset: s.offset,
                    step: s.step,
                    out_offset: s.out_offset,
                    map: s.map,
                    bn: f.as_ref().map(|(scale, shift)| BnFold { scale, shift }),
                })
                .collect();
            let b = match dst {
                Some(dst) => {
                    let b = primitives::place_into(super::out_buffer::as_slots(dst), out_shape, *groups, *in_channels, &inputs);
                    in_arena = Some((out_kernel.to_string(), out_shape.clone()));
                    b
                }
                None => primitives::place(out_shape, *groups, *in_channels, &inputs).map(|(k, b)| {
                    out.push((out_kernel.to_string(), k));
                    b
                }),
            }
            .map_err(|e| in_step(e, out_kernel))?;
            put_bias(&mut out, out_bias, b, out_shape[0]);
        }
        Step::Compose { first, second, in_channels, out_shape, groups, out_kernel, out_bias } => {
            let (ka, ba) = (slots.get(&first.kernel)?.clone(), slots.get_opt(first.bias.as_ref())?);
            let (kb, bb) = (slots.get(&second.kernel)?.clone(), slots.get_opt(second.bias.as_ref())?);
            let (k, b) = primitives::compose(
                &ComposeInput { kernel: &ka, bias: ba.as_ref(), groups: first.groups },
                &ComposeInput { kernel: &kb, bias: bb.as_ref(), groups: second.groups },
                *in_channels,
                *groups,
            )
            .map_err(|e| in_step(e, out_kernel))?;
            out.push((out_kernel.to_string(), with_shape(out_kernel, k, out_shape)?));
            put_bias(&mut out, out_bias, b, out_shape[0]);
        }
    }
    Ok(StepOut { tensors: out, in_arena })
}

/// Writes the bias a step computed; a step that names a bias output always gets one
/// (zeros when no source had a bias), so the graph never names a missing tensor.
fn put_bias(out: &mut Vec<(String, Tensor)>, name: &Option<String>, b: Option<Tensor>, channels: usize) {
    if let Some(n) = name {
        out.push((n.to_string(), b.unwrap_or_else(|| Tensor::zeros(vec![channels]))));
    }
}

fn in_step(e: Error, out: &str) -> Error {
    match e {
        // The primitives name operands by role ("place source", "var"), not by
        // tensor name, which only the plan knows: the error names the output.
        Error::Tensor { tensor, why } => Error::tensor(out, format!("{}: {}", tensor, why)),
        other => other,
    }
}
