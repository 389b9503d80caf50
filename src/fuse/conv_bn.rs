//! Paradigm 1: a BN after a conv (or Linear) folds into it; a BN before a conv folds
//! into that conv when the conv does not zero-pad the BN's output.

use super::conv_like::ConvLike;
use super::rule::{Ctx, Patch};
use crate::graph::{BatchNorm, Node, Op};
use crate::plan::{BnParams, ConvOperand, Step};

pub fn bn_params(b: &BatchNorm) -> BnParams {
    BnParams { gamma: b.gamma.clone(), beta: b.beta.clone(), mean: b.mean.clone(), var: b.var.clone(), eps: b.eps }
}

fn bn_at<'a>(ctx: &'a Ctx, i: usize) -> Option<&'a BatchNorm> {
    match &ctx.node(i).op {
        Op::BatchNorm(b) => Some(b),
        _ => None,
    }
}

/// conv -> BN  =>  conv with scaled kernel and shifted bias.
pub fn fold_bn_into_conv(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    // Every BN is looked at every wave: rule out the common misses before cloning.
    bn_at(ctx, i)?;
    let p = ctx.producer(&ctx.node(i).inputs[0])?;
    if !matches!(ctx.node(p).op, Op::Conv2d(_) | Op::Linear(_)) {
        return None;
    }
    let bn = bn_params(bn_at(ctx, i)?);
    let (n, prod) = (ctx.node(i), ctx.node(p));
    let conv = ConvLike::from_op(&prod.op)?;
    if conv.out_channels != bn_at(ctx, i)?.channels {
        return None;
    }
    // Only the fields the patch keeps are copied (each wave looks at every BN).
    let (prod_name, prod_inputs, bn_name, bn_input, bn_outputs) =
        (prod.name.clone(), prod.inputs.clone(), n.name.clone(), n.inputs[0].clone(), n.outputs.clone());
    if ctx.sole_consumer(&bn_input) != Some(i) {
        let reason = format!("`{}` output `{}` is also read elsewhere: folding the BN would change what the other readers see", prod_name, bn_input);
        ctx.refuse("fold_bn_into_conv", &[&prod_name, &bn_name], reason);
        return None;
    }
    let w = ctx.fresh(&prod_name, "weight");
    let b = ctx.fresh(&prod_name, "bias");
    // The view becomes the fused op: its old names move into the step.
    let mut fused = conv;
    let kernel = std::mem::replace(&mut fused.weight, w.clone());
    let bias = fused.bias.replace(b.clone());
    Some(Patch {
        remove: vec![p, i],
        params: vec![(w.clone(), fused.weight_shape()), (b.clone(), vec![fused.out_channels])],
        steps: vec![Step::FoldBn { kernel, bias, bn, out_kernel: w, out_bias: b }],
        add: vec![Node { name: prod_name.clone(), op: fused.into_op(), inputs: prod_inputs, outputs: bn_outputs }],
        rule: "conv+bn",
        into: prod_name,
    })
}

/// BN -> conv  =>  conv reading the BN's input. Exact only without padding: a
/// zero-padded border would see 0 where the BN would have produced its shift.
pub fn fold_bn_into_next(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    bn_at(ctx, i)?;
    let c = ctx.sole_consumer(&ctx.node(i).outputs[0])?;
    if !matches!(ctx.node(c).op, Op::Conv2d(_) | Op::Linear(_)) {
        return None;
    }
    let bn = bn_at(ctx, i)?.clone();
    let n = ctx.node(i).clone();
    let next = ctx.node(c).clone();
    let conv = ConvLike::from_op(&next.op)?;
    if conv.in_channels != bn.channels {
        return None;
    }
    if conv.has_padding() {
        let reason = format!("`{}` zero-pads the BN output (pads {:?}): the border would see 0, not the BN's shift", next.name, conv.pads);
        ctx.refuse("fold_bn_into_next", &[&n.name, &next.name], reason);
        return None;
    }
    let (dw_k, dw_b) = (ctx.fresh(&n.name, "dw_weight"), ctx.fresh(&n.name, "dw_bias"));
    let (w, b) = (ctx.fresh(&next.name, "weight"), ctx.fresh(&next.name, "bias"));
    let fused = conv.with(|c| {
        c.weight = w.clone();
        c.bias = Some(b.clone());
    });
    Some(Patch {
        remove: vec![i, c],
        params: vec![(w.clone(), fused.weight_shape()), (b.clone(), vec![conv.out_channels])],
        steps: vec![
            Step::BnToConv { bn: bn_params(&bn), channels: bn.channels, out_kernel: dw_k.clone(), out_bias: dw_b.clone() },
            Step::Compose {
                first: ConvOperand { kernel: dw_k, bias: Some(dw_b), groups: bn.channels },
                second: ConvOperand { kernel: conv.weight.clone(), bias: conv.bias.clone(), groups: conv.groups },
                in_channels: bn.channels,
                out_shape: fused.weight_shape(),
                groups: conv.groups,
                out_kernel: w,
                out_bias: Some(b),
            },
        ],
        add: vec![Node { name: next.name.clone(), op: fused.to_op(), inputs: n.inputs.clone(), outputs: next.outputs.clone() }],
        rule: "bn+conv",
        into: next.name,
    })
}
