//! Paradigm 6b (opt-in): the residual shortcut of a ConvNeXt/RepNeXt-style block,
//! `x + P(act(E(D(x))))` with D depthwise, E a 1x1 expansion and P a 1x1 projection,
//! becomes one shortcut-free chain `P'(act(E'(D'(x))))`.
//!
//! The identity rides along through the activation because, for ReLU, GELU and SiLU,
//! `act(x) - act(-x) = x` (LeakyReLU gives `(1 + alpha) x`): D' also emits x
//! (interleaved with D's channels, keeping D depthwise), E' forwards +x and -x, and P'
//! adds `act(x) - act(-x)`. Exact, but it widens E by 2C channels: the added FLOPs are
//! in the report, which is why it is opt-in.

use super::rule::{Ctx, Patch};
use crate::graph::{Activation, Conv2d, Node, Op};
use crate::plan::{ChannelMap, PlaceSource, Step};

fn conv_at(ctx: &Ctx, tensor: &str) -> Option<(usize, Conv2d)> {
    let p = ctx.producer(tensor)?;
    match &ctx.node(p).op {
        Op::Conv2d(c) => Some((p, c.clone())),
        _ => None,
    }
}

fn dense_pointwise(c: &Conv2d) -> bool {
    c.is_pointwise() && c.groups == 1 && c.stride == [1, 1] && !c.has_padding()
}

/// `1 / k` where `act(x) - act(-x) = k x`, for the activations that have one.
fn odd_part_scale(a: Activation) -> Option<f32> {
    match a {
        Activation::Relu | Activation::Gelu | Activation::Silu => Some(1.0),
        Activation::LeakyRelu(alpha) if alpha > -1.0 => Some(1.0 / (1.0 + alpha)),
        _ => None,
    }
}

pub fn widen_shortcut(ctx: &mut Ctx, i: usize) -> Option<Patch> {
    if !ctx.widen_shortcuts {
        return None;
    }
    let ch = match_chain(ctx, i)?;
    let d = &ch.d;
    let centred = (0..2).all(|a| d.kernel[a] % 2 == 1 && d.pads[a] == (d.kernel[a] / 2) * d.dilation[a] && d.pads[a + 2] == d.pads[a]);
    if !centred {
        let why = format!("depthwise kernel {:?} with pads {:?} has no centre tap to carry x", d.kernel, d.pads);
        ctx.refuse("widen_shortcut", &ch.names.iter().map(String::as_str).collect::<Vec<_>>(), why);
        return None;
    }
    Some(widened(ctx, ch))
}

/// A matched block `x -> D (depthwise) -> E (dense 1x1) -> act -> P (dense 1x1) -> + x`
/// with every intermediate read once: node indices, the three convs, and names
/// `[D, E, act, P, add]`.
struct Chain {
    add: Node,
    nodes: [usize; 5],
    d: Conv2d,
    e: Conv2d,
    p: Conv2d,
    act: Activation,
    /// `1 / k` where `act(x) - act(-x) = k x`.
    inv: f32,
    x: String,
    names: [String; 5],
}

/// The block ending at Add node `i`, when it has the shape above.
fn match_chain(ctx: &Ctx, i: usize) -> Option<Chain> {
    let add = ctx.node(i).clone();
    if add.op != Op::Add || add.inputs.len() != 2 {
        return None;
    }
    let sole = |t: &str, by: usize| ctx.sole_consumer(t) == Some(by);
    // Either order: (projection output, shortcut).
    let (pi, p, x) = [(0, 1), (1, 0)].iter().find_map(|&(a, b)| {
        let (pi, p) = conv_at(ctx, &add.inputs[a])?;
        (dense_pointwise(&p) && sole(&add.inputs[a], i)).then(|| (pi, p, add.inputs[b].clone()))
    })?;
    let ai = ctx.producer(&ctx.node(pi).inputs[0])?;
    let act_node = ctx.node(ai);
    let Op::Activation(act) = act_node.op else { return None };
    let inv = odd_part_scale(act)?;
    let (ei, e) = conv_at(ctx, &act_node.inputs[0])?;
    let (di, d) = conv_at(ctx, &ctx.node(ei).inputs[0])?;
    let c = d.in_channels;
    let chain_ok = sole(&act_node.outputs[0], pi)
        && sole(&act_node.inputs[0], ai)
        && sole(&ctx.node(ei).inputs[0], ei)
        && ctx.node(di).inputs[0] == x
        && d.groups == c
        && d.out_channels == c
        && d.stride == [1, 1]
        && dense_pointwise(&e)
        && e.in_channels == c
        && p.out_channels == c
        && p.in_channels == e.out_channels;
    let names = [ctx.node(di).name.clone(), ctx.node(ei).name.clone(), act_node.name.clone(), ctx.node(pi).name.clone(), add.name.clone()];
    chain_ok.then_some(Chain { add, nodes: [di, ei, ai, pi, i], d, e, p, act, inv, x, names })
}

/// The widened block: D' carries x beside D(x), E' passes +x and -x beside E's
/// outputs, and P' adds `(act(x) - act(-x)) / k = x` back, so the Add goes.
fn widened(ctx: &mut Ctx, ch: Chain) -> Patch {
    let Chain { add, nodes, d, e, p, act, inv, x, names } = ch;
    let (c, h) = (d.in_channels, e.out_channels);
    let id_dw = ctx.fresh(&names[0], "identity");
    let id_dense = ctx.fresh(&names[1], "identity");
    let (dw, dwb) = (ctx.fresh(&names[0], "weight"), ctx.fresh(&names[0], "bias"));
    let (ew, eb) = (ctx.fresh(&names[1], "weight"), ctx.fresh(&names[1], "bias"));
    let (pw, pb) = (ctx.fresh(&names[3], "weight"), ctx.fresh(&names[3], "bias"));
    let src = |k: &str, b: &Option<String>, g: usize| PlaceSource::new(k.to_string(), b.clone(), g);
    let mapped = |mut s: PlaceSource, out_offset: usize, map: ChannelMap| {
        s.out_offset = out_offset;
        s.map = map;
        s
    };
    let m = ChannelMap::IDENTITY;
    let steps = vec![
        Step::Dirac { channels: c, groups: c, kernel: d.kernel, out_kernel: id_dw.clone() },
        Step::Dirac { channels: c, groups: 1, kernel: [1, 1], out_kernel: id_dense.clone() },
        // D': channels [D(x)_0, x_0, D(x)_1, x_1, ...], still depthwise (groups C).
        Step::Place {
            out_shape: vec![2 * c, 1, d.kernel[0], d.kernel[1]],
            groups: c,
            in_channels: c,
            sources: vec![
                mapped(src(&d.weight, &d.bias, c), 0, ChannelMap { out_stride: 2, ..m }),
                mapped(src(&id_dw, &None, c), 1, ChannelMap { out_stride: 2, ..m }),
            ],
            out_kernel: dw.clone(),
            out_bias: Some(dwb.clone()),
        },
        // E': [E on the D channels; +x; -x].
        Step::Place {
            out_shape: vec![h + 2 * c, 2 * c, 1, 1],
            groups: 1,
            in_channels: 2 * c,
            sources: vec![
                mapped(src(&e.weight, &e.bias, 1), 0, ChannelMap { in_stride: 2, ..m }),
                mapped(src(&id_dense, &None, 1), h, ChannelMap { in_offset: 1, in_stride: 2, ..m }),
                mapped(src(&id_dense, &None, 1), h + c, ChannelMap { in_offset: 1, in_stride: 2, scale: -1.0, ..m }),
            ],
            out_kernel: ew.clone(),
            out_bias: Some(eb.clone()),
        },
        // P': P plus (act(x) - act(-x)) / k = x.
        Step::Place {
            out_shape: vec![c, h + 2 * c, 1, 1],
            groups: 1,
            in_channels: h + 2 * c,
            sources: vec![
                src(&p.weight, &p.bias, 1),
                mapped(src(&id_dense, &None, 1), 0, ChannelMap { in_offset: h, scale: inv, ..m }),
                mapped(src(&id_dense, &None, 1), 0, ChannelMap { in_offset: h + c, scale: -inv, ..m }),
            ],
            out_kernel: pw.clone(),
            out_bias: Some(pb.clone()),
        },
    ];
    let conv = |w: &str, b: &str, cin: usize, cout: usize, g: usize, like: &Conv2d| {
        Op::Conv2d(Conv2d { weight: w.into(), bias: Some(b.into()), in_channels: cin, out_channels: cout, groups: g, ..like.clone() })
    };
    let (t_d, t_e) = (ctx.fresh(&names[0], "wide_out"), ctx.fresh(&names[1], "wide_out"));
    let t_a = ctx.fresh(&names[2], "wide_out");
    let add_nodes = vec![
        Node { name: names[0].clone(), op: conv(&dw, &dwb, c, 2 * c, c, &d), inputs: vec![x], outputs: vec![t_d.clone()] },
        Node { name: names[1].clone(), op: conv(&ew, &eb, 2 * c, h + 2 * c, 1, &e), inputs: vec![t_d], outputs: vec![t_e.clone()] },
        Node { name: names[2].clone(), op: Op::Activation(act), inputs: vec![t_e], outputs: vec![t_a.clone()] },
        Node { name: names[3].clone(), op: conv(&pw, &pb, h + 2 * c, c, 1, &p), inputs: vec![t_a], outputs: add.outputs.clone() },
    ];
    Patch {
        remove: nodes.to_vec(),
        params: vec![
            (id_dw, vec![c, 1, d.kernel[0], d.kernel[1]]),
            (id_dense, vec![c, c, 1, 1]),
            (dw, vec![2 * c, 1, d.kernel[0], d.kernel[1]]),
            (dwb, vec![2 * c]),
            (ew, vec![h + 2 * c, 2 * c, 1, 1]),
            (eb, vec![h + 2 * c]),
            (pw, vec![c, h + 2 * c, 1, 1]),
            (pb, vec![c]),
        ],
        steps,
        add: add_nodes,
        rule: "widen shortcut (6b)",
        into: names[3].clone(),
    }
}
