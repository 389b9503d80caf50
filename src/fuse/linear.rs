//! Paradigm 9 in graphs: after global pooling a 1x1 conv is a Linear. When
//! `Flatten(conv1x1(s))` is summed with a Linear branch, the conv becomes a Linear
//! reading `Flatten(s)`, so `merge_add` can sum the two into one Linear.

use super::rule::{Ctx, Patch};
use crate::graph::{Linear, Node, Op};
use crate::plan::{PlaceSource, Step};

pub fn conv1x1_to_linear(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Cheap kind check first: rules run on every node of every wave.
    if !(ctx.node(i).op == Op::Flatten) {
        return None;
    }
    let flat = ctx.node(i).clone();
    if flat.op != Op::Flatten {
        return None;
    }
    let p = ctx.producer(&flat.inputs[0])?;
    let conv_node = ctx.node(p).clone();
    let Op::Conv2d(c) = &conv_node.op else { return None };
    if ctx.sole_consumer(&flat.inputs[0]) != Some(i) || !c.is_pointwise() || c.has_padding() {
        return None;
    }
    let s = &conv_node.inputs[0];
    if ctx.shapes.get(s).map(|sh| &sh[2..]) != Some(&[1, 1][..]) {
        return None;
    }
    // Only where it lets a merge happen: the flattened output is summed with a Linear.
    let j = ctx.sole_consumer(&flat.outputs[0])?;
    let has_linear_sibling =
        ctx.node(j).op == Op::Add && ctx.node(j).inputs.iter().any(|t| ctx.producer(t).is_some_and(|q| matches!(ctx.node(q).op, Op::Linear(_))));
    if !has_linear_sibling {
        return None;
    }
    // Read an existing Flatten of `s` when there is one, so both Linears share it.
    let existing = ctx.consumers(s).iter().copied().find(|&k| k != p && ctx.node(k).op == Op::Flatten);
    let mut add = vec![];
    let flat_s = match existing {
        Some(k) => ctx.node(k).outputs[0].clone(),
        None => {
            let out = ctx.fresh(s, "flat");
            add.push(Node { name: ctx.fresh(&flat.name, "flatten"), op: Op::Flatten, inputs: vec![s.clone()], outputs: vec![out.clone()] });
            out
        }
    };
    let w = ctx.fresh(&conv_node.name, "linear_weight");
    let (o, ci) = (c.out_channels, c.in_channels);
    let lin = Linear { weight: w.clone(), bias: c.bias.clone(), in_features: ci, out_features: o };
    add.push(Node { name: conv_node.name.clone(), op: Op::Linear(lin), inputs: vec![flat_s], outputs: flat.outputs.clone() });
    Some(Patch {
        remove: vec![p, i],
        params: vec![(w.clone(), vec![o, ci])],
        // A dense view of the kernel as [O, I]; `place` also expands a grouped one.
        steps: vec![Step::Place {
            out_shape: vec![o, ci],
            groups: 1,
            in_channels: ci,
            sources: vec![PlaceSource::new(c.weight.clone(), None, c.groups)],
            out_kernel: w,
            out_bias: None,
        }],
        add,
        rule: "conv1x1->linear",
        into: conv_node.name,
    })
}
