//! The rewrite engine: rules that each look at one node, driven to a fixpoint, with
//! the graph validated after every patch. Output: the deploy graph, the FusionPlan
//! that computes its new weights, and the FusionReport.

mod apply;
mod branch;
mod conv_bn;
pub mod conv_like;
pub mod geometry;
mod left;
mod linear;
mod merge;
mod origins;
mod report;
mod rule;
mod sequence;
mod shortcut;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

pub use report::{FusedRegion, FusionReport, Left, Refusal};
use rule::{tensor_key, Ctx, Patch, Rule};

use crate::error::{Error, Result};
use crate::graph::{Graph, GraphIndex};
use crate::plan::FusionPlan;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Knobs of [`fuse`]; the default is exact and never costs more FLOPs than a sequence merge allows.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// A 1x1/KxK sequence is composed only when the fused conv costs at most this
    /// many times the pair's MACs (and does not densify a grouped KxK), unless it then
    /// merges into a sibling branch. One layer fewer saves a feature-map round trip,
    /// so a little more arithmetic can still be faster.
    pub compose_cost_limit: f64,
    /// Paradigm 6b: absorb ConvNeXt-style residual shortcuts by widening the block
    /// (exact, but more FLOPs; the report shows how many). Off by default.
    pub widen_shortcuts: bool,
    /// Original nodes no rewrite may remove, each with the reason reported for the
    /// refusal. The pipeline fills it when a region fused alone fails verification
    /// (a float16 model whose fused weights underflow), and fuses again without them.
    pub frozen: BTreeMap<String, String>,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions { compose_cost_limit: 1.5, widen_shortcuts: false, frozen: BTreeMap::new() }
    }
}

/// Rules in priority order. Declutter (make every branch a conv) comes before merge
/// (sum, concat, compose), so merges see the simplest form.
const RULES: &[(&str, Rule)] = &[
    ("fold_bn_into_conv", conv_bn::fold_bn_into_conv),
    ("flatten_add", merge::flatten_add),
    ("identity_to_conv", branch::identity_to_conv),
    ("bn_branch_to_conv", branch::bn_branch_to_conv),
    ("avgpool_to_conv", branch::avgpool_to_conv),
    ("conv1x1_to_linear", linear::conv1x1_to_linear),
    ("compose_sequence", sequence::compose_sequence),
    ("merge_add", merge::merge_add),
    ("merge_concat", merge::merge_concat),
    ("fold_bn_into_next", conv_bn::fold_bn_into_next),
    ("widen_shortcut", shortcut::widen_shortcut),
];

/// The result of fusing a graph: deploy graph, the plan for its weights, the report.
#[derive(Clone, Debug)]
pub struct Fusion {
    /// The deploy graph; its new parameters are the plan's outputs.
    pub graph: Graph,
    /// Weight arithmetic that turns the source weights into the deploy ones.
    pub plan: FusionPlan,
    /// What was fused, what was refused and why, before/after counts.
    pub report: FusionReport,
    /// For each deploy node made by a rewrite: the original nodes it replaces (the
    /// region `verify::check_regions` runs alone).
    pub origins: BTreeMap<String, Vec<String>>,
}

/// Fuses every exact pattern in `graph`. Never mutates `graph`; refuses (and reports)
/// rewrites that would not be exact.
pub fn fuse(graph: &Graph, opts: &FuseOptions) -> Result<Fusion> {
    let shapes_before = graph.validate()?;
    tracing::info!(nodes = graph.nodes.len(), params = graph.params.len(), "fusing");
    // Borrowed until the first wave: that wave's commit copies only the nodes it
    // keeps (the first wave folds every conv+BN pair: most nodes of a training graph
    // go, and copying them only to drop them was 5% of MobileOne-S0's rewrite).
    let mut g: Cow<Graph> = Cow::Borrowed(graph);
    let mut plan = FusionPlan::default();
    let mut report =
        FusionReport { ops_before: graph.op_histogram(), params_before: graph.param_count(), flops_before: graph.flops(&shapes_before), ..Default::default() };
    let mut counter = 0usize;
    let mut seen = BTreeSet::new();
    let mut refusals = Vec::new();
    let mut origins = origins::Origins::new(graph);
    // Each wave removes at least one node or replaces a pattern by a smaller one; the
    // bound only guards against a rule bug turning into an endless loop.
    let max_patches = 16 * graph.nodes.len() + 16;
    let mut shapes = shapes_before;
    let mut names = apply::NodeNames::new(&g);
    let mut spare_nodes = vec![];
    for _ in 0..max_patches {
        let index = GraphIndex::new(&g);
        let mut ctx = Ctx {
            graph: &g,
            index: &index,
            queried: Default::default(),
            shapes: &shapes,
            counter: &mut counter,
            refusals: &mut refusals,
            seen_refusals: &mut seen,
            compose_cost_limit: opts.compose_cost_limit,
            widen_shortcuts: opts.widen_shortcuts,
        };
        let wave = next_wave(&mut ctx, &origins, &opts.frozen);
        if wave.is_empty() {
            return finish(g.into_owned(), plan, report, refusals, origins, &graph.params, &shapes);
        }
        tracing::debug!(rule = wave[0].rule, patches = wave.len(), "rewrite wave");
        report.waves += 1;
        let rule = wave[0].rule;
        let layout = apply::check_wave(&g, &index, &wave, &names, rule)?;
        let (nodes, params) = record(&g, &mut plan, &mut report, &mut origins, wave);
        apply::commit(&mut g, &mut spare_nodes, nodes, params, layout, &mut names, &mut shapes, rule)?;
    }
    Err(Error::Graph(format!("rewrite did not reach a fixpoint after {} patches (a rule bug)", max_patches)))
}

/// Every patch the highest-priority rule that applies anywhere finds, as long as the
/// patches are independent: applying such a wave at once is the same as applying its
/// patches one by one, without re-indexing the graph between them. A patch's decision
/// rests on the nodes it removes, on who produces the tensors it reads, and on who
/// reads the tensors whose consumers it asked about; so two patches are independent
/// when they remove different nodes and neither writes (or re-routes the readers of)
/// a tensor the other touches. Two patches may both read one tensor: MobileOne's
/// parallel conv+BN branches of one input fold in one wave, not one wave per branch.
fn next_wave(ctx: &mut Ctx, origins: &origins::Origins, frozen: &BTreeMap<String, String>) -> Vec<Patch> {
    let graph = ctx.graph;
    // The first frozen original node a patch would remove, if any.
    let frozen_in = |p: &Patch| -> Option<(&str, &String)> {
        if frozen.is_empty() {
            return None;
        }
        let union = origins.union(p.remove.iter().map(|&k| graph.nodes[k].name.as_str()));
        union.iter().find_map(|&i| frozen.get_key_value(origins.source_name(i)).map(|(k, v)| (k.as_str(), v)))
    };
    for (_, rule) in RULES {
        let mut wave: Vec<Patch> = vec![];
        let mut nodes = vec![false; graph.nodes.len()];
        // Tensors a kept patch writes or asked the readers of (no other patch may
        // touch them), and tensors kept patches only read (others may read them too).
        let mut exclusive: HashSet<u64> = HashSet::new();
        let mut shared: HashSet<u64> = HashSet::new();
        // One pair of buffers for every patch's written and read tensors.
        let (mut owned, mut read): (Vec<u64>, Vec<u64>) = (vec![], vec![]);
        for i in 0..graph.nodes.len() {
            if nodes[i] {
                continue;
            }
            ctx.queried.borrow_mut().clear();
            let Some(p) = rule(ctx, i) else { continue };
            if let Some((node, why)) = frozen_in(&p) {
                let nodes: Vec<&str> = p.remove.iter().map(|&k| graph.nodes[k].name.as_str()).collect();
                ctx.refuse(p.rule, &nodes, format!("`{}` is kept: {}", node, why));
                continue;
            }
            let removed = p.remove.iter().map(|&k| &graph.nodes[k]);
            owned.clear();
            owned.extend(removed.clone().chain(&p.add).flat_map(|n| n.outputs.iter().map(|t| tensor_key(t))).chain(ctx.queried.borrow().iter().copied()));
            read.clear();
            read.extend(removed.chain(&p.add).flat_map(|n| n.inputs.iter().map(|t| tensor_key(t))));
            if p.remove.iter().any(|&k| nodes[k])
                || owned.iter().any(|t| exclusive.contains(t) || shared.contains(t))
                || read.iter().any(|t| exclusive.contains(t))
            {
                continue;
            }
            p.remove.iter().for_each(|&k| nodes[k] = true);
            exclusive.extend(&owned);
            shared.extend(&read);
            wave.push(p);
        }
        if !wave.is_empty() {
            return wave;
        }
    }
    vec![]
}

/// A wave's new nodes, per patch, and its new parameters.
type Recorded = (Vec<Vec<crate::graph::Node>>, Vec<(String, Vec<usize>)>);

/// Records a wave in the plan, the report and the origins; returns each patch's new
/// nodes (placed by `apply::commit`) and the new parameters.
fn record(g: &Graph, plan: &mut FusionPlan, report: &mut FusionReport, origins: &mut origins::Origins, wave: Vec<Patch>) -> Recorded {
    let mut params = vec![];
    let mut nodes = Vec::with_capacity(wave.len());
    for patch in wave {
        let mut from: Vec<String> = patch.remove.iter().map(|&i| g.nodes[i].name.clone()).collect();
        from.sort();
        // Every new node stands for the union of the original nodes it replaces.
        let union = origins.union(patch.remove.iter().map(|&i| g.nodes[i].name.as_str()));
        for n in &patch.add {
            origins.record(&n.name, union.clone());
        }
        report.fused.push(FusedRegion { rule: patch.rule.to_string(), from, into: patch.into });
        params.extend(patch.params);
        plan.steps.extend(patch.steps);
        nodes.push(patch.add);
    }
    (nodes, params)
}

/// Names computed parameters after the deploy node that uses them (`<node>.weight`,
/// `<node>.bias`) instead of the rewrite's internal names, where that name is free:
/// not a source parameter and not any tensor the plan touches. The names are
/// borrowed, not copied, while the renames are decided: only renamed tensors allocate.
fn tidy_names(g: &mut Graph, plan: &mut FusionPlan, source_params: &crate::graph::ParamShapes) {
    let map: HashMap<String, String> = {
        let mut computed: HashSet<&str> = HashSet::with_capacity(2 * plan.steps.len());
        computed.extend(plan.steps.iter().flat_map(|s| s.outputs()));
        // Every name the plan reads is a source parameter or one it computes, so
        // "taken" is those three name sets, asked directly (collecting them into one
        // set hashed every source parameter's long name again).
        let taken = |t: &str| source_params.contains_key(t) || computed.contains(t) || g.params.contains_key(t);
        let mut new_taken: HashSet<String> = HashSet::new();
        let mut map = HashMap::new();
        for n in &g.nodes {
            let (weight, bias) = match &n.op {
                crate::graph::Op::Conv2d(c) => (&c.weight, c.bias.as_ref()),
                crate::graph::Op::Linear(l) => (&l.weight, l.bias.as_ref()),
                _ => continue,
            };
            for (field, suffix) in [(Some(weight), "weight"), (bias, "bias")] {
                let Some(field) = field.filter(|f| computed.contains(f.as_str())) else { continue };
                let new = format!("{}.{}", n.name, suffix);
                if !taken(&new) && !new_taken.contains(&new) && !map.contains_key(field) {
                    new_taken.insert(new.clone());
                    map.insert(field.clone(), new);
                }
            }
        }
        map
    };
    if map.is_empty() {
        return;
    }
    for n in &mut g.nodes {
        let (weight, bias) = match &mut n.op {
            crate::graph::Op::Conv2d(c) => (&mut c.weight, c.bias.as_mut()),
            crate::graph::Op::Linear(l) => (&mut l.weight, l.bias.as_mut()),
            _ => continue,
        };
        for field in std::iter::once(weight).chain(bias) {
            if let Some(new) = map.get(field.as_str()) {
                *field = new.clone();
            }
        }
    }
    g.params = std::mem::take(&mut g.params).into_iter().map(|(k, v)| (map.get(&k).cloned().unwrap_or(k), v)).collect();
    for s in &mut plan.steps {
        s.for_each_name(&mut |t| {
            if let Some(n) = map.get(t) {
                *t = n.clone();
            }
        });
    }
}

fn finish(
    mut g: Graph,
    plan: FusionPlan,
    mut report: FusionReport,
    refusals: Vec<Refusal>,
    origins: origins::Origins,
    source_params: &crate::graph::ParamShapes,
    kept: &crate::graph::Shapes,
) -> Result<Fusion> {
    let origins = origins.into_names(&g);
    let mut used: HashSet<&str> = HashSet::with_capacity(3 * g.nodes.len());
    used.extend(g.nodes.iter().flat_map(|n| n.op.params().into_iter().chain(n.inputs.iter().map(String::as_str))));
    g.params.retain(|k, _| used.contains(k.as_str()));
    let mut plan = plan;
    plan.fold_bn_into_place(&g.params);
    tidy_names(&mut g, &mut plan, source_params);
    // One full validation of the result (the waves checked only what they changed);
    // the shapes the waves kept up to date must be those of a full inference (the
    // steps above rename and drop parameters only, never activations).
    let shapes = g.validate()?;
    if let Some((t, s)) = shapes.iter().find(|(t, s)| kept.get(*t) != Some(s)) {
        return Err(Error::Graph(format!("internal error: the rewrite kept shape {:?} for `{}`, inference gives {:?}", kept.get(t), t, s)));
    }
    if kept.len() != shapes.len() {
        return Err(Error::Graph(format!("internal error: the rewrite kept {} tensor shapes, inference gives {}", kept.len(), shapes.len())));
    }
    // A refusal stays in the report only while the nodes it names still exist: a
    // pattern refused one way and fused another way is not a refusal.
    let mut names: HashSet<&str> = HashSet::with_capacity(g.nodes.len());
    names.extend(g.nodes.iter().map(|n| n.name.as_str()));
    report.refused = refusals.into_iter().filter(|r| r.nodes.iter().all(|n| names.contains(n.as_str()))).collect();
    report.left = left::explain(&g, &report.refused);
    report.carried = left::carried(&g);
    report.ops_after = g.op_histogram();
    report.params_after = g.param_count();
    report.flops_after = g.flops(&shapes);
    report.plan_steps = plan.steps.len();
    tracing::info!(fused = report.fused.len(), refused = report.refused.len(), plan_steps = report.plan_steps, "fused");
    Ok(Fusion { graph: g, plan, report, origins })
}

impl Fusion {
    /// The deploy weights: untouched source tensors (shared, not copied) plus the
    /// tensors the plan computed, for exactly the parameters the deploy graph names.
    pub fn assemble_weights(&self, source: &Weights, computed: &std::collections::HashMap<String, Tensor>) -> Result<Weights> {
        let mut out = Weights::new();
        for name in self.graph.params.keys() {
            let t = match computed.get(name) {
                Some(t) => t.clone(),
                // Non-float constants (shape tensors, int weights) read only by
                // carried-through nodes are not f32 weights; writers keep them.
                None if !source.contains(name) && !self.graph.nodes.iter().any(|n| n.op.params().contains(&name.as_str())) => continue,
                None => source.get(name)?.clone(),
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// Runs the plan on the CPU reference and assembles the deploy weights.
    pub fn weights_cpu(&self, source: &Weights) -> Result<Weights> {
        let computed = crate::cpu::execute_plan(&self.plan, source)?;
        self.assemble_weights(source, &computed)
    }
}
