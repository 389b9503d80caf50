//! Paradigm 5: two convs in sequence become one, when one of them is 1x1.
//!
//! 1x1 (A) then KxK (B) is exact when B does not zero-pad, or A adds no bias: with a
//! bias, A's output border holds the bias but B's zero padding would put 0 there
//! (the seed's `fuse_1x1_kxk_conv` ignored this). Padding on A itself is fine: A maps
//! zero-padded input to its bias, which is what the fused conv computes too.
//! KxK (A) then 1x1 (B) is exact when B has stride 1 and no padding.

use super::conv_like::ConvLike;
use super::geometry::{coarsest_groups, composed_ranges};
use super::rule::{Ctx, Patch};
use crate::graph::Node;
use crate::plan::{ConvOperand, Step};

pub fn compose_sequence(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Cheap kind check first: rules run on every node of every wave.
    if !(matches!(ctx.node(i).op, crate::graph::Op::Conv2d(_) | crate::graph::Op::Linear(_))) {
        return None;
    }
    // Nothing is cloned until both nodes are conv-like: most convs read an
    // activation, a sum or a batch norm, and this runs on every conv every wave.
    let p = ctx.producer(ctx.node(i).inputs.first()?)?;
    if std::mem::discriminant(&ctx.node(p).op) != std::mem::discriminant(&ctx.node(i).op) {
        return None;
    }
    let second_node = ctx.node(i).clone();
    let b = ConvLike::from_op(&second_node.op)?;
    let t = &second_node.inputs[0];
    let first_node = ctx.node(p).clone();
    // Same kind (both convs or both Linears): the op variants matched above.
    let a = ConvLike::from_op(&first_node.op)?;
    let names = [first_node.name.as_str(), second_node.name.as_str()];
    if ctx.sole_consumer(t) != Some(i) {
        if a.is_pointwise() || b.is_pointwise() {
            let reason = format!("`{}` output `{}` is also read elsewhere: fusing it into `{}` would change the other readers", names[0], t, names[1]);
            ctx.refuse("compose_sequence", &names, reason);
        }
        return None;
    }
    // A strided 1x1 followed by a 1x1 is the KxK -> 1x1 case (one strided 1x1).
    let fused_geometry = if a.is_pointwise() && !(a.stride != [1, 1] && b.is_pointwise()) {
        if a.stride != [1, 1] {
            let reason = format!("1x1 conv `{}` has stride {:?}: its subsampling cannot move into the following conv", names[0], a.stride);
            ctx.refuse("compose_sequence", &names, reason);
            return None;
        }
        if a.bias.is_some() && b.has_padding() {
            let reason = format!(
                "`{}` adds a bias and `{}` zero-pads its output (pads {:?}): the fused conv would see the bias on the border where the original sees 0; pad with the bias value or move the padding to the 1x1 conv",
                names[0], names[1], b.pads
            );
            ctx.refuse("compose_sequence", &names, reason);
            return None;
        }
        let mut pads = b.pads;
        for (x, y) in pads.iter_mut().zip(a.pads) {
            *x += y;
        }
        b.with(|c| c.pads = pads)
    } else if b.is_pointwise() {
        if b.stride != [1, 1] || b.has_padding() {
            let reason = format!("1x1 conv `{}` has stride {:?} / pads {:?} after `{}`: not one conv", names[1], b.stride, b.pads, names[0]);
            ctx.refuse("compose_sequence", &names, reason);
            return None;
        }
        a.with(|c| c.out_channels = b.out_channels)
    } else {
        // KxK then KxK widens the kernel; not a re-parameterization we apply.
        return None;
    };
    let ranges = composed_ranges(a.in_channels, a.out_channels, a.groups, b.out_channels, b.groups);
    let groups = coarsest_groups(b.out_channels, a.in_channels, &ranges);
    // Composition is exact either way; it is only worth it when it does not densify
    // the KxK kernel (a depthwise KxK then a dense 1x1 becomes a dense KxK) and costs at
    // most `compose_cost_limit` (1.5 by default) times the pair's MACs (one layer fewer saves a whole feature-map round trip).
    let kernel_cost = |c: &ConvLike| (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1];
    let out_px = ctx.shapes.get(&second_node.outputs[0]).map_or(1, |s| s.iter().skip(2).product::<usize>());
    let mid_px = ctx.shapes.get(t).map_or(1, |s| s.iter().skip(2).product::<usize>());
    let before = a.out_channels * kernel_cost(&a) * mid_px + b.out_channels * kernel_cost(&b) * out_px;
    let after = b.out_channels * (a.in_channels / groups) * fused_geometry.kernel[0] * fused_geometry.kernel[1] * out_px;
    let spatial_groups = if a.is_pointwise() { b.groups } else { a.groups };
    let worth_it = groups >= spatial_groups && after as f64 <= ctx.compose_cost_limit * before as f64;
    // ...unless the result then merges into a sibling conv of the same input (DBB's
    // 1x1 -> avg and 1x1 -> KxK branches), where its kernel costs nothing extra.
    let merges_next =
        super::branch::join_after(ctx, &second_node.outputs[0]).is_some_and(|(j, t)| super::branch::has_conv_sibling(ctx, j, &first_node.inputs[0], &t));
    if !worth_it && !merges_next {
        let reason =
            format!("exact, but not worth it: the fused conv ({} groups) would cost {} MACs per sample against {} for the pair", groups, after, before);
        ctx.refuse("compose_sequence", &names, reason);
        return None;
    }
    let w = ctx.fresh(&second_node.name, "weight");
    let bias = (a.bias.is_some() || b.bias.is_some()).then(|| ctx.fresh(&second_node.name, "bias"));
    let fused = fused_geometry.with(|c| {
        c.weight = w.clone();
        c.bias = bias.clone();
        c.in_channels = a.in_channels;
        c.groups = groups;
    });
    let mut params = vec![(w.clone(), fused.weight_shape())];
    params.extend(bias.iter().map(|n| (n.clone(), vec![b.out_channels])));
    Some(Patch {
        remove: vec![p, i],
        params,
        steps: vec![Step::Compose {
            first: ConvOperand { kernel: a.weight.clone(), bias: a.bias.clone(), groups: a.groups },
            second: ConvOperand { kernel: b.weight.clone(), bias: b.bias.clone(), groups: b.groups },
            in_channels: a.in_channels,
            out_shape: fused.weight_shape(),
            groups,
            out_kernel: w,
            out_bias: bias,
        }],
        add: vec![Node { name: second_node.name.clone(), op: fused.to_op(), inputs: first_node.inputs.clone(), outputs: second_node.outputs.clone() }],
        rule: "compose",
        into: second_node.name,
    })
}
