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
/// `weights` once the chunk of steps that reads it last has run (a level runs in
/// chunks of about an eighth of the values it reads), unless `keep` says the deploy
/// graph still names it. For a caller that does not need the training weights
/// afterwards (`repfuse fuse` without `--verify`): the peak then holds about one
/// model's weights, not the sources and the results together. Released per level, a
/// plan of one place per block (RepVGG-A0, MobileOne-S0: two levels) held every
/// source while it wrote every result. A released source is checked for NaN/Inf as
/// it goes, so a failure can still name it.
pub fn execute_plan_releasing(plan: &FusionPlan, weights: &mut Weights, keep: &dyn Fn(&str) -> bool) -> Result<HashMap<String, Tensor>> {
    plan.check_bn_variances(weights)?;
    plan.output_shapes(weights)?;
    let levels = plan.levels();
    let order = run_order(&levels);
    let sources: std::collections::HashSet<&str> = plan.sources().into_iter().collect();
    // Each released source at its last reader's place in the run order.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (at, &i) in order.iter().enumerate() {
        for t in plan.steps[i].inputs().into_iter().filter(|t| sources.contains(t) && !keep(t)) {
            last.insert(t, at);
        }
    }
    let mut release: Vec<Vec<String>> = vec![vec![]; order.len()];
    for (t, at) in last {
        release[at].push(t.to_string());
    }
    let mut computed = HashMap::new();
    let mut non_finite: Option<Error> = None;
    let mut weights = weights;
    let ran = run_levels(plan, &order, &levels, &mut weights, &mut computed, RELEASE_CHUNKS, &mut |weights, done| {
        let released: Vec<(&str, Tensor)> = release[done].iter().flatten().filter_map(|t| weights.remove(t).map(|x| (t.as_str(), x))).collect();
        if non_finite.is_none() {
            // On every core, in blocks (`check_finite`): a scan of the sources one by
            // one was a quarter of the plan inside `repfuse fuse` (RepVGG-A0, 4.2 of
            // 14 ms).
            let views: Vec<(&str, &Tensor)> = released.iter().map(|(t, x)| (*t, x)).collect();
            non_finite = FusionPlan::check_finite(&views).err();
        }
        // Each drop gives the tensor's pages back (a system call): on every core too.
        released.into_par_iter().for_each(drop);
    })
    .and_then(|_| check_outputs(plan, &computed));
    match ran {
        Ok(()) => Ok(computed),
        Err(failed) => Err(non_finite.take().unwrap_or_else(|| plan.check_present_sources(weights).err().unwrap_or(failed))),
    }
}

/// A releasing executor runs each level in about this many chunks.
const RELEASE_CHUNKS: usize = 8;

fn run_steps(plan: &FusionPlan, weights: &Weights) -> Result<HashMap<String, Tensor>> {
    let levels = plan.levels();
    let mut computed = HashMap::new();
    run_levels(plan, &run_order(&levels), &levels, &mut &*weights, &mut computed, 1, &mut |_, _| {})?;
    check_outputs(plan, &computed)?;
    Ok(computed)
}

/// Step numbers in the order the executor runs them: level by level, plan order
/// within a level.
fn run_order(levels: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..levels.len()).collect();
    order.sort_by_key(|&i| levels[i]);
    order
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

/// Runs `plan`'s steps in `order`, level by level, adding their outputs to
/// `computed`. Steps of one level are independent: they run in parallel (each
/// primitive is itself parallel over output channels), in about `chunks` chunks of
/// the values the level reads; after each chunk `after(weights, done)` is told which
/// run-order positions have finished (a releasing executor drops sources there). A
/// level's place kernels, most of a fused model's bytes, are written straight into
/// one arena (huge pages, see `arena`), which only takes memory as chunks fill it.
fn run_levels<W: std::ops::Deref<Target = Weights>>(
    plan: &FusionPlan,
    order: &[usize],
    levels: &[usize],
    weights: &mut W,
    computed: &mut HashMap<String, Tensor>,
    chunks: usize,
    after: &mut dyn FnMut(&mut W, std::ops::Range<usize>),
) -> Result<()> {
    let mut from = 0;
    while from < order.len() {
        let level = levels[order[from]];
        let to = from + order[from..].iter().take_while(|&&i| levels[i] == level).count();
        let steps: Vec<&Step> = order[from..to].iter().map(|&i| &plan.steps[i]).collect();
        let lens: Vec<Option<usize>> = steps
            .iter()
            .map(|s| match s {
                Step::Place { out_shape, .. } => crate::tensor::checked_numel(out_shape),
                _ => None,
            })
            .collect();
        let mut arena = crate::arena::Arena::layout(&lens, crate::arena::Pages::Keep);
        // Chunk ends: about 1/chunks of the values the level reads each (a step's
        // output is about the size of what it reads: a place's sources, a BN fold's
        // kernel), and at least as many steps as there are threads, so every core has
        // work (LeViT-128S's first level is fifty Linear+BN folds and nothing else),
        // but never more than a `chunks`-th of the level's steps: on a many-core host
        // RepVGG-A0's place level (22 steps) would otherwise be one chunk and keep
        // every source alive to its end. Each primitive is itself parallel over
        // output channels, so a chunk of fewer steps than cores still fills them.
        let floor = rayon::current_num_threads().min(steps.len().div_ceil(chunks.max(1))).max(1);
        let reads: Vec<usize> =
            steps.iter().map(|s| s.inputs().into_iter().filter_map(|t| computed.get(t).or_else(|| weights.get(t).ok())).map(Tensor::numel).sum()).collect();
        let total: usize = reads.iter().sum();
        let (mut ends, mut acc) = (vec![], 0usize);
        for (k, read) in reads.iter().enumerate() {
            acc += read;
            let start = ends.last().copied().unwrap_or(0);
            if chunks > 1 && total > 0 && acc * chunks >= total * (ends.len() + 1) && k + 1 - start >= floor {
                ends.push(k + 1);
            }
        }
        if ends.last() != Some(&steps.len()) {
            ends.push(steps.len());
        }
        // Outputs written into the arena become tensors once it is whole.
        let mut placed: Vec<(String, usize, Vec<usize>)> = vec![];
        let mut outputs: Vec<(String, Tensor)> = vec![];
        let mut start = 0;
        for end in ends {
            let slots = Slots { source: weights, computed: std::mem::take(computed) };
            let chunk = &steps[start..end];
            let ran: Result<Vec<StepOut>> = match arena.as_mut() {
                Some((fill, starts)) => {
                    let dsts = fill.slices(&starts[start..end], &lens[start..end]);
                    chunk.par_iter().zip(dsts).map(|(s, dst)| run_step(s, &slots, dst)).collect()
                }
                None => chunk.par_iter().map(|s| run_step(s, &slots, None)).collect(),
            };
            *computed = slots.computed;
            for (k, mut o) in ran?.into_iter().enumerate() {
                if let (Some((name, shape)), Some((_, starts))) = (o.in_arena.take(), arena.as_ref()) {
                    placed.push((name, starts[start + k].expect("a step given a slice has a start"), shape));
                }
                outputs.append(&mut o.tensors);
            }
            after(weights, from + start..from + end);
            start = end;
        }
        if let Some((fill, _)) = arena {
            let arena = fill.finish();
            outputs.extend(placed.into_iter().map(|(name, start, shape)| (name, Tensor::in_arena(&arena, start, shape))));
        }
        computed.extend(outputs);
        from = to;
    }
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

#[cfg(all(test, feature = "tools"))]
mod tests {
    use super::*;

    #[test]
    fn a_releasing_run_splits_large_levels_into_chunks_in_run_order() {
        // RepVGG-A0: one place per block in the last level, most of the plan's bytes.
        let (g, w, _) = crate::zoo::build("repvgg_a0", 1, 32, 5).unwrap();
        let plan = crate::fuse(&g, &crate::FuseOptions::default()).unwrap().plan;
        let levels = plan.levels();
        let order = run_order(&levels);
        let mut chunks = vec![];
        let mut computed = HashMap::new();
        // A chunk holds at least one step per thread, capped at an eighth of the
        // level: with 2 threads (this machine, CI) and with 32 (a GPU host) the large
        // level must split, so the count does not depend on the host's cores.
        let mut many = vec![];
        for (threads, chunks, computed) in [(32, &mut many, &mut HashMap::new()), (2, &mut chunks, &mut computed)] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_levels(&plan, &order, &levels, &mut &w, computed, RELEASE_CHUNKS, &mut |_, done| chunks.push(done))).unwrap();
        }
        // The chunks cover the run order once, in order, each inside one level.
        assert_eq!(chunks.first().map(|c| c.start), Some(0));
        assert!(chunks.windows(2).all(|p| p[0].end == p[1].start), "{:?}", chunks);
        assert_eq!(chunks.last().map(|c| c.end), Some(order.len()));
        assert!(chunks.iter().all(|c| order[c.clone()].iter().all(|&i| levels[i] == levels[order[c.start]])));
        let depth = levels.iter().max().unwrap() + 1;
        for c in [&chunks, &many] {
            assert!(c.len() >= depth + RELEASE_CHUNKS / 2, "{} chunks for {} levels: the large level was not split", c.len(), depth);
        }
        // Unchunked, one chunk per level, and the same values.
        let mut whole = vec![];
        let mut again = HashMap::new();
        run_levels(&plan, &order, &levels, &mut &w, &mut again, 1, &mut |_, done| whole.push(done)).unwrap();
        assert_eq!(whole.len(), depth);
        assert_eq!(computed.len(), again.len());
        assert!(computed.iter().all(|(t, x)| again[t] == *x));
    }
}
