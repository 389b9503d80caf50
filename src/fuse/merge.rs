//! Paradigms 2/3/4: parallel branches that read the same tensor become one conv.
//! Sums place every kernel into the largest window (centred or asymmetric, dilated
//! where needed); concats stack them on output channels. The result keeps the
//! coarsest exact group count.

use std::collections::BTreeMap;

use super::conv_like::{ConvLike, Kind};
use super::geometry::{coarsest_groups, merge_windows, summed_groups, Window};
use super::rule::{Ctx, Patch};
use crate::graph::{Conv2d, Node, Op};
use crate::plan::{PlaceSource, Step};

/// `Add(Add(a, b), c)` => `Add(a, b, c)` when the inner sum has no other reader.
/// The outermost sum of a tree takes the whole tree at once (a chain of k sums is one
/// patch, not k-1 waves), keeping the order of the summands.
pub fn flatten_add(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Cheap kind check first: rules run on every node of every wave.
    if ctx.node(i).op != Op::Add {
        return None;
    }
    if absorbing_sum(ctx, &ctx.node(i).outputs[0]).is_some() {
        return None; // the sum reading this one takes it
    }
    // Nothing to flatten unless some input is a sum this one absorbs: asked before
    // allocating anything, since most sums read none.
    let absorbs = |t: &String| ctx.producer(t).is_some_and(|p| ctx.node(p).op == Op::Add && absorbing_sum(ctx, t) == Some(i));
    if !ctx.node(i).inputs.iter().any(absorbs) {
        return None;
    }
    let mut remove = vec![i];
    // Borrowed until the sum is known to flatten (most sums read no other sum).
    let mut inputs: Vec<&str> = vec![];
    let mut todo: Vec<(usize, usize)> = vec![(i, 0)];
    // Depth-first, in input order, without recursion: chains can be long.
    while let Some((k, pos)) = todo.pop() {
        let Some(t) = ctx.node(k).inputs.get(pos) else { continue };
        todo.push((k, pos + 1));
        match ctx.producer(t).filter(|&p| ctx.node(p).op == Op::Add && absorbing_sum(ctx, t) == Some(k)) {
            Some(p) => {
                remove.push(p);
                todo.push((p, 0));
            }
            None => inputs.push(t),
        }
    }
    if remove.len() == 1 {
        return None;
    }
    let n = ctx.node(i);
    let merged = Node { inputs: inputs.into_iter().map(str::to_string).collect(), name: n.name.clone(), op: n.op.clone(), outputs: n.outputs.clone() };
    Some(Patch { remove, into: n.name.clone(), add: vec![merged], rule: "flatten add", ..Default::default() })
}

/// The sum that can take in the sum writing `t`: the one reader of `t`, an Add that
/// reads it once.
fn absorbing_sum(ctx: &Ctx, t: &str) -> Option<usize> {
    let c = ctx.sole_consumer(t)?;
    let n = ctx.node(c);
    (n.op == Op::Add && n.inputs.iter().filter(|x| *x == t).count() == 1).then_some(c)
}

/// A conv branch of a join: its node index, conv view and output tensor.
struct Branch {
    node: usize,
    conv: ConvLike,
}

/// The conv-like producers of `join`'s inputs that only the join reads, keyed by
/// (kind, input tensor), in input order.
/// Branches whose output is also read elsewhere cannot merge; where they had a
/// sibling to merge with, that is reported as a refusal.
fn conv_branches(ctx: &mut Ctx, join: usize) -> BTreeMap<(u8, String), Vec<(usize, Branch)>> {
    let n = ctx.node(join).clone();
    // (kind, input tensor) -> (position in the join, branch, output read elsewhere).
    type Found = Vec<(usize, Branch, bool)>;
    let mut groups: BTreeMap<(u8, String), Found> = BTreeMap::new();
    for (pos, t) in n.inputs.iter().enumerate() {
        if n.inputs.iter().filter(|x| *x == t).count() != 1 {
            continue;
        }
        let Some(p) = ctx.producer(t) else { continue };
        let Some(conv) = ConvLike::from_op(&ctx.node(p).op) else { continue };
        let key = (if conv.kind == Kind::Conv { 0 } else { 1 }, ctx.node(p).inputs[0].clone());
        let shared = ctx.sole_consumer(t) != Some(join);
        groups.entry(key).or_default().push((pos, Branch { node: p, conv }, shared));
    }
    let mut out = BTreeMap::new();
    for (key, members) in groups {
        let mut keep = vec![];
        let siblings = members.len() >= 2;
        for (pos, b, shared) in members {
            if shared {
                if siblings {
                    let name = ctx.node(b.node).name.clone();
                    let reason = format!("`{}` output is also read outside `{}`: merging it would change the other readers", name, n.name);
                    let rule = if n.op == Op::Concat { "merge_concat" } else { "merge_add" };
                    ctx.refuse(rule, &[&name, &n.name], reason);
                }
                continue;
            }
            keep.push((pos, b));
        }
        out.insert(key, keep);
    }
    out
}

/// The merged conv, the step computing its weights, and its new parameters.
type Merged = (ConvLike, Step, Vec<(String, Vec<usize>)>);

/// Builds the merged conv of `branches` (summed when `stack` is false, stacked on
/// output channels when true), or returns why it would not be exact.
fn merge_branches(ctx: &mut Ctx, branches: &[&Branch], stack: bool, name: &str) -> Result<Merged, String> {
    let windows: Vec<Window> = branches.iter().map(|b| b.conv.window()).collect();
    let merged = merge_windows(&windows)?;
    let in_channels = branches[0].conv.in_channels;
    let mut out_offsets = Vec::with_capacity(branches.len());
    let mut out_channels = 0;
    for b in branches {
        if !stack && b.conv.out_channels != branches[0].conv.out_channels {
            return Err("branches have different output channel counts".into());
        }
        out_offsets.push(if stack { out_channels } else { 0 });
        out_channels = if stack { out_channels + b.conv.out_channels } else { b.conv.out_channels };
    }
    let groups = if stack {
        let ranges: Vec<_> = branches.iter().zip(&out_offsets).flat_map(|(b, &off)| b.conv.input_ranges(off)).collect();
        coarsest_groups(out_channels, in_channels, &ranges)
    } else {
        summed_groups(branches.iter().map(|b| b.conv.groups))
    };
    let w = ctx.fresh(name, "weight");
    let bias = branches.iter().any(|b| b.conv.bias.is_some()).then(|| ctx.fresh(name, "bias"));
    let conv = ConvLike {
        kind: branches[0].conv.kind,
        conv: Conv2d { weight: w.clone(), bias: bias.clone(), in_channels, out_channels, groups, ..Conv2d::from_window(merged.window) },
    };
    let sources = branches
        .iter()
        .enumerate()
        .map(|(k, b)| PlaceSource {
            offset: merged.offsets[k],
            step: merged.steps[k],
            out_offset: out_offsets[k],
            ..PlaceSource::new(b.conv.weight.clone(), b.conv.bias.clone(), b.conv.groups)
        })
        .collect();
    let mut params = vec![(w.clone(), conv.weight_shape())];
    params.extend(bias.iter().map(|b| (b.clone(), vec![out_channels])));
    let step = Step::Place { out_shape: conv.weight_shape(), groups, in_channels, sources, out_kernel: w, out_bias: bias };
    Ok((conv, step, params))
}

/// Builds the patch replacing `members` (positions in the join's input list) by one
/// conv; the join keeps its other inputs, or disappears when none are left.
fn replace_in_join(ctx: &mut Ctx, join: usize, members: &[(usize, &Branch)], stack: bool, rule: &'static str) -> Option<Patch> {
    let n = ctx.node(join).clone();
    let names: Vec<String> = members.iter().map(|(_, b)| ctx.node(b.node).name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let branches: Vec<&Branch> = members.iter().map(|(_, b)| *b).collect();
    let base = format!("{}.merged", n.name);
    let (conv, step, params) = match merge_branches(ctx, &branches, stack, &base) {
        Ok(x) => x,
        Err(reason) => {
            ctx.refuse(rule, &name_refs, reason);
            return None;
        }
    };
    let input = ctx.node(branches[0].node).inputs[0].clone();
    let whole = members.len() == n.inputs.len();
    let (node_name, out) = if whole { (n.name.clone(), n.outputs[0].clone()) } else { (ctx.fresh(&n.name, "merged"), ctx.fresh(&n.name, "merged_out")) };
    let mut add = vec![Node { name: node_name.clone(), op: conv.to_op(), inputs: vec![input], outputs: vec![out.clone()] }];
    let mut remove: Vec<usize> = branches.iter().map(|b| b.node).collect();
    remove.push(join);
    if !whole {
        // The merged output takes the place of the first member; the rest drop out.
        let first = members[0].0;
        let inputs = n
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(k, t)| {
                if k == first {
                    Some(out.clone())
                } else if members.iter().any(|(p, _)| *p == k) {
                    None
                } else {
                    Some(t.clone())
                }
            })
            .collect();
        add.push(Node { inputs, ..n.clone() });
    }
    Some(Patch { remove, add, params, steps: vec![step], rule, into: node_name })
}

/// `Add(conv_a(x), conv_b(x), ...)` => `conv(x)` (plus any other summands).
pub fn merge_add(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    if ctx.node(i).op != Op::Add {
        return None;
    }
    let groups = conv_branches(ctx, i);
    for members in groups.values().filter(|m| m.len() >= 2) {
        let members: Vec<(usize, &Branch)> = members.iter().map(|(p, b)| (*p, b)).collect();
        if let Some(p) = replace_in_join(ctx, i, &members, false, "merge_add") {
            return Some(p);
        }
    }
    None
}

/// `Concat(conv_a(x), conv_b(x), ...)` => one conv with stacked output channels.
/// Only consecutive inputs merge, so the channel order is kept.
pub fn merge_concat(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    if ctx.node(i).op != Op::Concat {
        return None;
    }
    let groups = conv_branches(ctx, i);
    for members in groups.values() {
        // Split into runs of adjacent positions.
        let mut run: Vec<(usize, &Branch)> = vec![];
        let mut runs = vec![];
        for (p, b) in members {
            if run.last().is_some_and(|(q, _)| q + 1 != *p) {
                runs.push(std::mem::take(&mut run));
            }
            run.push((*p, b));
        }
        runs.push(run);
        for run in runs.iter().filter(|r| r.len() >= 2 && r.iter().all(|(_, b)| b.conv.kind == Kind::Conv)) {
            if let Some(p) = replace_in_join(ctx, i, run, true, "merge_concat") {
                return Some(p);
            }
        }
    }
    None
}
