//! Declutter: make every branch of a sum or concat a conv, so the merge rules can
//! combine them. Identity -> dirac conv (6a), BN-only branch -> depthwise conv (8),
//! avg-pool -> depthwise conv (7). Each fires only where it enables a merge or a
//! composition; elsewhere it would only slow the network down.

use super::conv_bn::bn_params;
use super::rule::{Ctx, Patch};
use crate::graph::{Conv2d, Node, Op};
use crate::plan::Step;

fn is_join(op: &Op) -> bool {
    matches!(op, Op::Add | Op::Concat)
}

/// True when some input of join node `j`, other than `except`, is produced by a conv
/// that reads `tensor`: a sibling branch to merge with.
pub(super) fn has_conv_sibling(ctx: &Ctx, j: usize, tensor: &str, except: &str) -> bool {
    ctx.node(j)
        .inputs
        .iter()
        .filter(|t| t.as_str() != except)
        .any(|t| ctx.producer(t).map(|p| matches!(ctx.node(p).op, Op::Conv2d(_)) && ctx.node(p).inputs[0] == tensor).unwrap_or(false))
}

/// Follows `tensor` through sole-consumer BNs to the join node it feeds, if any.
pub(super) fn join_after(ctx: &Ctx, tensor: &str) -> Option<(usize, String)> {
    let mut t = tensor.to_string();
    loop {
        let c = ctx.sole_consumer(&t)?;
        match &ctx.node(c).op {
            op if is_join(op) => return Some((c, t)),
            Op::BatchNorm(_) => t = ctx.node(c).outputs[0].clone(),
            _ => return None,
        }
    }
}

fn depthwise(weight: String, bias: Option<String>, channels: usize, kernel: [usize; 2], stride: [usize; 2], pads: [usize; 4]) -> Op {
    Op::Conv2d(Conv2d { weight, bias, in_channels: channels, out_channels: channels, kernel, stride, pads, dilation: [1, 1], groups: channels })
}

/// `x + conv(x)`  =>  `id(x) + conv(x)` with `id` a depthwise 1x1 dirac conv.
pub fn identity_to_conv(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Borrowed from the graph (not from `ctx`, which `fresh` needs mutably): most
    // sums have no identity branch, and cloning each one first was most of this
    // rule's cost.
    let graph = ctx.graph;
    let n = &graph.nodes[i];
    if n.op != Op::Add {
        return None;
    }
    // `t` may itself come from a conv (y = conv(x); y + conv(y)): what matters is
    // that a sibling conv reads it.
    let t = n.inputs.iter().find(|t| ctx.shapes.get(t.as_str()).is_some_and(|s| s.len() == 4) && has_conv_sibling(ctx, i, t, t))?;
    let channels = ctx.channels(t)?;
    let w = ctx.fresh(t, "identity");
    let out = ctx.fresh(t, "identity_out");
    let id_node = Node {
        name: ctx.fresh(&n.name, "identity"),
        op: depthwise(w.clone(), None, channels, [1, 1], [1, 1], [0; 4]),
        inputs: vec![t.clone()],
        outputs: vec![out.clone()],
    };
    let mut add = n.clone();
    for x in add.inputs.iter_mut().filter(|x| *x == t) {
        *x = out.clone();
    }
    Some(Patch {
        remove: vec![i],
        params: vec![(w.clone(), vec![channels, 1, 1, 1])],
        steps: vec![Step::Dirac { channels, groups: channels, kernel: [1, 1], out_kernel: w }],
        into: id_node.name.clone(),
        add: vec![id_node, add],
        rule: "identity->conv",
    })
}

/// A BN-only branch (RepVGG's identity BN) => depthwise 1x1 conv with bias.
pub fn bn_branch_to_conv(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Borrowed until the rule applies (see `identity_to_conv`).
    let graph = ctx.graph;
    let n = &graph.nodes[i];
    let Op::BatchNorm(bn) = &n.op else { return None };
    if ctx.shapes.get(&n.inputs[0]).map(Vec::len) != Some(4) {
        return None;
    }
    let (j, _) = join_after(ctx, &n.outputs[0])?;
    if !has_conv_sibling(ctx, j, &n.inputs[0], &n.outputs[0]) {
        return None;
    }
    let (w, b) = (ctx.fresh(&n.name, "weight"), ctx.fresh(&n.name, "bias"));
    let c = bn.channels;
    Some(Patch {
        remove: vec![i],
        params: vec![(w.clone(), vec![c, 1, 1, 1]), (b.clone(), vec![c])],
        steps: vec![Step::BnToConv { bn: bn_params(bn), channels: c, out_kernel: w.clone(), out_bias: b.clone() }],
        add: vec![Node { name: n.name.clone(), op: depthwise(w, Some(b), c, [1, 1], [1, 1], [0; 4]), inputs: n.inputs.clone(), outputs: n.outputs.clone() }],
        rule: "bn->conv",
        into: n.name.clone(),
    })
}

/// Avg-pool => depthwise conv of 1/(kh*kw), when it feeds a sum/concat next to a conv
/// branch or follows a conv it can compose with. Exact only when every window divides
/// by kh*kw: count_include_pad, or no padding, and no ceil-mode overhang.
pub fn avgpool_to_conv(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    if !(matches!(ctx.node(i).op, Op::AvgPool2d(_))) {
        return None;
    }
    let n = ctx.node(i).clone();
    let Op::AvgPool2d(p) = &n.op else { return None };
    let input = &n.inputs[0];
    // Only a stride-1 1x1 conv before the pool composes with it (1x1 -> KxK).
    let after_conv = ctx
        .producer(input)
        .is_some_and(|q| matches!(&ctx.node(q).op, Op::Conv2d(c) if c.is_pointwise() && c.stride == [1, 1]) && ctx.sole_consumer(input) == Some(i));
    let before_merge = join_after(ctx, &n.outputs[0]).is_some_and(|(j, t)| has_conv_sibling(ctx, j, input, &t));
    if !after_conv && !before_merge {
        return None;
    }
    let padded = p.pads.iter().any(|&x| x > 0);
    if padded && !p.count_include_pad {
        let reason = format!("count_include_pad=False with padding {:?}: border windows divide by fewer taps, which no conv can do", p.pads);
        ctx.refuse("avgpool_to_conv", &[&n.name], reason);
        return None;
    }
    let in_shape = ctx.shapes.get(input)?.clone();
    if p.ceil_mode {
        let floor = (0..2).all(|a| {
            crate::graph::window_out(in_shape[2 + a], p.kernel[a], p.stride[a], p.pads[a] + p.pads[a + 2], 1, true)
                == crate::graph::window_out(in_shape[2 + a], p.kernel[a], p.stride[a], p.pads[a] + p.pads[a + 2], 1, false)
        });
        if !floor {
            ctx.refuse("avgpool_to_conv", &[&n.name], "ceil_mode adds partial windows at the border, which no conv can do".into());
            return None;
        }
    }
    let c = in_shape[1];
    let w = ctx.fresh(&n.name, "weight");
    Some(Patch {
        remove: vec![i],
        params: vec![(w.clone(), vec![c, 1, p.kernel[0], p.kernel[1]])],
        steps: vec![Step::AvgPoolKernel { channels: c, kernel: p.kernel, out_kernel: w.clone() }],
        add: vec![Node { name: n.name.clone(), op: depthwise(w, None, c, p.kernel, p.stride, p.pads), inputs: n.inputs.clone(), outputs: n.outputs.clone() }],
        rule: "avgpool->conv",
        into: n.name,
    })
}
