//! Shape inference. Known ops get exact shapes; outputs of Opaque nodes (and anything
//! downstream of them) stay unknown, which the rewrite rules treat as "cannot prove".

use std::collections::HashMap;

use super::{Graph, Node, Op};
use crate::error::{Error, Result};

/// Tensor name -> shape, for every tensor whose shape is known.
pub type Shapes = HashMap<String, Vec<usize>>;

/// Output length of one spatial axis of a sliding window, or None when the window does
/// not fit (kernel larger than the padded input).
pub fn window_out(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize, ceil: bool) -> Option<usize> {
    let extent = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad)?;
    let span = padded.checked_sub(extent)?;
    let mut out = span / stride + 1;
    if ceil && span % stride != 0 {
        out += 1;
        // PyTorch/ONNX: the last window must start inside the input or left padding.
        if (out - 1) * stride >= input + pad.min(input) {
            out -= 1;
        }
    }
    Some(out)
}

/// ONNX ops whose output has the broadcast shape of their inputs. Knowing them keeps
/// shapes known past GELU written as Erf, layer scales and the like, so the rules can
/// still prove what they need downstream.
const ELEMENTWISE: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Erf",
    "Sqrt",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Reciprocal",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Softsign",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Mish",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "PRelu",
    "Identity",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
];

/// Numpy broadcast of `shapes`, or None when they do not broadcast.
fn broadcast(shapes: &[&Vec<usize>]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            match (*o, d) {
                (a, b) if a == b => {}
                (1, b) => *o = b,
                (_, 1) => {}
                _ => return None,
            }
        }
    }
    Some(out)
}

/// The output shape of a carried node with shape hint `h` on input shape `s`, or
/// None for an axis out of range.
fn hinted(s: &[usize], h: &crate::graph::ShapeHint) -> Option<Vec<usize>> {
    let rank = s.len() as i64;
    let axis = |a: i64| {
        let a = if a < 0 { a + rank } else { a };
        (0..=rank).contains(&a).then_some(a as usize)
    };
    match h {
        crate::graph::ShapeHint::Reduce { axes, keepdims } => {
            let axes: Vec<usize> = axes.iter().map(|&a| axis(a).filter(|&a| a < s.len())).collect::<Option<_>>()?;
            Some(s.iter().enumerate().filter_map(|(i, &d)| if axes.contains(&i) { keepdims.then_some(1) } else { Some(d) }).collect())
        }
        crate::graph::ShapeHint::Flatten { axis: a } => {
            let k = axis(*a)?;
            Some(vec![s[..k].iter().product(), s[k..].iter().product()])
        }
    }
}

/// Infers every known tensor shape. Errors name the node and field at fault.
pub fn infer_shapes(g: &Graph) -> Result<Shapes> {
    infer(g, HashMap::new(), true)
}

/// `infer_shapes` starting from shapes known elsewhere (an ONNX engine's analysis of
/// tensors past ops repfuse does not model), so they propagate through known ops.
///
/// Lenient: a node whose shapes do not check leaves its output unknown instead of
/// failing (the seed may disagree with what the reference models, e.g. a broadcast).
pub fn infer_shapes_seeded(g: &Graph, seed: Shapes) -> Result<Shapes> {
    infer(g, seed, false)
}

/// The output shape of `n` (added to `g` or about to be), from the shapes of its
/// inputs known so far: one node's step of `infer_shapes`, for graphs built node by node.
pub(crate) fn infer_node(g: &Graph, n: &Node, shapes: &Shapes) -> Result<Option<Vec<usize>>> {
    let ins: Option<Vec<&Vec<usize>>> = n.inputs.iter().map(|t| shapes.get(t).or_else(|| g.params.get(t))).collect();
    match ins {
        Some(ins) => node_output_shape(n, &ins),
        None => Ok(None),
    }
}

fn infer(g: &Graph, seed: Shapes, strict: bool) -> Result<Shapes> {
    let mut shapes: Shapes = seed;
    for v in &g.inputs {
        shapes.insert(v.name.clone(), v.shape.clone());
    }
    for n in &g.nodes {
        // Carried nodes name their constant inputs among their inputs.
        let ins: Option<Vec<&Vec<usize>>> = n.inputs.iter().map(|t| shapes.get(t).or_else(|| g.params.get(t))).collect();
        let out = match ins {
            Some(ins) if strict => node_output_shape(n, &ins)?,
            Some(ins) => node_output_shape(n, &ins).ok().flatten(),
            None => None,
        };
        // A carried node: what the source's own shape analysis proved, if anything.
        let out = match (&n.op, out) {
            (Op::Opaque(_), None) => n.outputs.first().and_then(|o| g.known_shapes.get(o)).cloned(),
            (_, out) => out,
        };
        if let (Some(s), Some(o)) = (out, n.outputs.first()) {
            shapes.entry(o.clone()).or_insert(s);
        }
        // A carried node's other outputs (Split): only the source's analysis knows them.
        if matches!(n.op, Op::Opaque(_)) {
            for o in n.outputs.iter().skip(1) {
                if let Some(s) = g.known_shapes.get(o) {
                    shapes.entry(o.clone()).or_insert_with(|| s.clone());
                }
            }
        }
    }
    Ok(shapes)
}

fn want_rank(n: &Node, s: &[usize], ranks: &[usize]) -> Result<()> {
    if ranks.contains(&s.len()) {
        Ok(())
    } else {
        Err(Error::shape(&n.name, "input", format!("expected rank {:?}, got shape {:?}", ranks, s)))
    }
}

fn want_channels(n: &Node, s: &[usize], c: usize) -> Result<()> {
    if s[1] == c {
        Ok(())
    } else {
        Err(Error::shape(&n.name, "channels", format!("op expects {} input channels, input has shape {:?}", c, s)))
    }
}

fn node_output_shape(n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
    let first = match ins.first() {
        Some(s) => *s,
        None if matches!(n.op, Op::Opaque(_)) => return Ok(None),
        None => return Err(Error::shape(&n.name, "inputs", "node has no inputs")),
    };
    let shape = match &n.op {
        Op::Conv2d(c) => {
            want_rank(n, first, &[4])?;
            want_channels(n, first, c.in_channels)?;
            let mut hw = [0; 2];
            for a in 0..2 {
                hw[a] = window_out(first[2 + a], c.kernel[a], c.stride[a], c.pads[a] + c.pads[a + 2], c.dilation[a], false).ok_or_else(|| {
                    Error::shape(
                        &n.name,
                        "kernel",
                        format!("dilated kernel {:?} (dilation {:?}) does not fit the padded input {:?}", c.kernel, c.dilation, first),
                    )
                })?;
            }
            vec![first[0], c.out_channels, hw[0], hw[1]]
        }
        Op::AvgPool2d(p) => {
            want_rank(n, first, &[4])?;
            let mut hw = [0; 2];
            for a in 0..2 {
                hw[a] = window_out(first[2 + a], p.kernel[a], p.stride[a], p.pads[a] + p.pads[a + 2], 1, p.ceil_mode)
                    .ok_or_else(|| Error::shape(&n.name, "kernel", format!("pool kernel {:?} does not fit input {:?}", p.kernel, first)))?;
            }
            vec![first[0], first[1], hw[0], hw[1]]
        }
        Op::BatchNorm(b) => {
            want_rank(n, first, &[2, 3, 4])?;
            want_channels(n, first, b.channels)?;
            first.clone()
        }
        Op::Linear(l) => {
            want_rank(n, first, &[2])?;
            if first[1] != l.in_features {
                return Err(Error::shape(&n.name, "in_features", format!("expects {} features, input has shape {:?}", l.in_features, first)));
            }
            vec![first[0], l.out_features]
        }
        Op::GlobalAvgPool => {
            want_rank(n, first, &[4])?;
            vec![first[0], first[1], 1, 1]
        }
        Op::Add => {
            for s in ins {
                if *s != first {
                    return Err(Error::shape(&n.name, "inputs", format!("Add inputs differ in shape: {:?} vs {:?}", first, s)));
                }
            }
            first.clone()
        }
        Op::Concat => {
            let mut out = first.clone();
            if out.len() < 2 {
                return Err(Error::shape(&n.name, "inputs", "Concat needs rank >= 2"));
            }
            out[1] = 0;
            for s in ins {
                if s.len() != first.len() || s[0] != first[0] || s[2..] != first[2..] {
                    return Err(Error::shape(&n.name, "inputs", format!("Concat inputs differ off the channel axis: {:?} vs {:?}", first, s)));
                }
                out[1] += s[1];
            }
            out
        }
        Op::Activation(_) => first.clone(),
        Op::Flatten => {
            want_rank(n, first, &[2, 3, 4])?;
            vec![first[0], first[1..].iter().product()]
        }
        Op::Opaque(o) if n.outputs.len() == 1 && ELEMENTWISE.contains(&o.op_type.as_str()) => return Ok(broadcast(ins)),
        Op::Opaque(crate::graph::Opaque { shape_hint: Some(h), .. }) if n.outputs.len() == 1 && ins.len() == 1 => return Ok(hinted(first, h)),
        Op::Opaque(_) => return Ok(None),
    };
    Ok(Some(shape))
}

/// 2 x multiply-accumulates per sample (batch 1) of one node.
pub fn node_flops(n: &Node, shapes: &Shapes) -> u64 {
    let out = n.outputs.first().and_then(|o| shapes.get(o));
    let Some(out) = out else { return 0 };
    // Saturating: a hostile shape must not overflow (or panic in debug builds).
    let prod = |xs: &[u64]| xs.iter().fold(1u64, |a, &b| a.saturating_mul(b));
    let per_sample = prod(&out.iter().skip(1).map(|&d| d as u64).collect::<Vec<_>>());
    match &n.op {
        Op::Conv2d(c) => prod(&[2, per_sample, (c.in_channels / c.groups.max(1)) as u64, c.kernel[0] as u64, c.kernel[1] as u64]),
        Op::Linear(l) => prod(&[2, per_sample, l.in_features as u64]),
        Op::AvgPool2d(p) => prod(&[per_sample, p.kernel[0] as u64, p.kernel[1] as u64]),
        Op::BatchNorm(_) => prod(&[2, per_sample]),
        Op::Add => prod(&[per_sample, n.inputs.len().saturating_sub(1) as u64]),
        _ => 0,
    }
}
