//! `Opaque`: any node repfuse does not model, carried through untouched. It has no
//! reference forward; its output shape is known only where the op is elementwise, a
//! hint read from its attributes says, or the source's own shape analysis proved it.

use onnx_protobuf::{Message, NodeProto};
use serde::{Deserialize, Serialize};

use super::{FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Any op repfuse does not model. It is carried through untouched; `payload` keeps
/// the source format's encoding of the node (e.g. ONNX NodeProto bytes) for writers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opaque {
    /// Source-format op name (e.g. ONNX `op_type`), shown in reports.
    pub op_type: String,
    /// Source-format encoding of the node; empty when built in memory.
    #[serde(default)]
    pub payload: Vec<u8>,
    /// What the reader knows of its output shape beyond the op name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape_hint: Option<ShapeHint>,
    /// Why the reader carried it instead of modelling it, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How a carried node's output shape follows from its input's, read from its
/// attributes (elementwise ops need none: they broadcast).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShapeHint {
    /// A reduction over `axes` (negative counts from the end), kept as size 1 or
    /// dropped: ONNX ReduceMean/ReduceSum/ReduceMax/... with an `axes` attribute.
    Reduce {
        /// Reduced axes.
        axes: Vec<i64>,
        /// Reduced axes stay, with size 1.
        keepdims: bool,
    },
    /// ONNX Flatten at `axis`: `[prod(dims[..axis]), prod(dims[axis..])]`.
    Flatten {
        /// Where the second output axis starts (negative counts from the end).
        axis: i64,
    },
    /// ONNX Reshape to a constant shape: a `-1` takes what the other sizes leave, a
    /// `0` copies the input's size at that axis (unless `allowzero`).
    Reshape {
        /// The shape input's values.
        shape: Vec<i64>,
        /// ONNX `allowzero`: a 0 is a size of 0, not a copy.
        allowzero: bool,
    },
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

impl ShapeHint {
    /// The output shape on input shape `s`, or None for an axis out of range.
    fn apply(&self, s: &[usize]) -> Option<Vec<usize>> {
        let rank = s.len() as i64;
        let axis = |a: i64| {
            let a = if a < 0 { a + rank } else { a };
            (0..=rank).contains(&a).then_some(a as usize)
        };
        match self {
            ShapeHint::Reduce { axes, keepdims } => {
                let axes: Vec<usize> = axes.iter().map(|&a| axis(a).filter(|&a| a < s.len())).collect::<Option<_>>()?;
                Some(s.iter().enumerate().filter_map(|(i, &d)| if axes.contains(&i) { keepdims.then_some(1) } else { Some(d) }).collect())
            }
            ShapeHint::Flatten { axis: a } => {
                let k = axis(*a)?;
                Some(vec![s[..k].iter().product(), s[k..].iter().product()])
            }
            ShapeHint::Reshape { shape, allowzero } => {
                let mut out = Vec::with_capacity(shape.len());
                let mut inferred = None;
                for (i, &d) in shape.iter().enumerate() {
                    match d {
                        -1 if inferred.is_none() => {
                            inferred = Some(i);
                            out.push(1);
                        }
                        0 if !allowzero => out.push(*s.get(i)?),
                        d if d >= 0 => out.push(usize::try_from(d).ok()?),
                        _ => return None,
                    }
                }
                let numel = crate::tensor::checked_numel(s)?;
                let known = crate::tensor::checked_numel(&out)?;
                match inferred {
                    Some(i) if known > 0 && numel % known == 0 => out[i] = numel / known,
                    None if known == numel => {}
                    _ => return None,
                }
                Some(out)
            }
        }
    }
}

impl OpDef for Opaque {
    fn kind(&self) -> &str {
        &self.op_type
    }

    fn check(&self, _n: &Node, _params: &ParamShapes) -> Result<()> {
        Ok(())
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        if n.outputs.len() != 1 || ins.is_empty() {
            return Ok(None);
        }
        if ELEMENTWISE.contains(&self.op_type.as_str()) {
            return Ok(broadcast(ins));
        }
        // A hint is about input 0; any other input is what the reader read the hint
        // from (a reduction's constant axes).
        Ok(self.shape_hint.as_ref().and_then(|h| h.apply(ins[0])))
    }

    fn forward_cpu(&self, n: &Node, _ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        Err(Error::unsupported(&n.name, format!("the CPU reference cannot run op `{}`", self.op_type)))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        e.run(e.x, e.w)
    }

    fn forward_gpu(&self, n: &Node, _step: &mut GpuStep) -> Result<GpuValue> {
        Err(Error::unsupported(&n.name, format!("the GPU forward cannot run op `{}`", self.op_type)))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut q = NodeProto::parse_from_bytes(&self.payload)
            .map_err(|e| Error::unsupported(&n.name, format!("carried node `{}` cannot be decoded: {}", self.op_type, e)))?;
        // The node's inputs are the payload's non-empty ones, in order (the reader
        // made them so), under the names they have now: a reader rewrite (`x + 0`
        // dropped, its readers reading `x`) or a rule may have renamed them since.
        // An empty input is an absent optional one and stays empty.
        let present = q.input.iter().filter(|i| !i.is_empty()).count();
        if present != n.inputs.len() {
            return Err(Error::Graph(format!(
                "internal error: carried node `{}` ({}) has {} inputs in the graph but {} in its source encoding",
                n.name,
                self.op_type,
                n.inputs.len(),
                present
            )));
        }
        let mut now = n.inputs.iter();
        for i in q.input.iter_mut().filter(|i| !i.is_empty()) {
            i.clone_from(now.next().expect("counted above"));
        }
        // The same for outputs (no pass renames them today; a rename must not be lost).
        if q.output.iter().filter(|o| !o.is_empty()).count() != n.outputs.len() {
            return Err(Error::Graph(format!("internal error: carried node `{}` ({}) has {} outputs in the graph, not those of its source encoding", n.name, self.op_type, n.outputs.len())));
        }
        let mut now = n.outputs.iter();
        for o in q.output.iter_mut().filter(|o| !o.is_empty()) {
            o.clone_from(now.next().expect("counted above"));
        }
        Ok(vec![q])
    }
}

impl FromOnnx for Opaque {
    /// Opaque claims no op type: the reader makes one of any node no op claims (or
    /// whose form its op does not model).
    const ONNX_OPS: &'static [&'static str] = &[];

    fn from_onnx(_n: &NodeProto, _cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use onnx_protobuf::Message;

    use super::{Opaque, ShapeHint};
    use crate::graph::{Node, Op};
    use crate::ops::OpDef;

    /// A carried node is written under its tensors' current names, by position, with
    /// absent optional inputs kept empty (Resize's roi and scales); a graph whose
    /// count disagrees with the encoding is refused, not written half-renamed.
    #[test]
    fn a_carried_node_is_written_with_its_current_names() {
        let src = crate::io::onnx::attrs::node_proto("r", "Resize", vec!["x".into(), "".into(), "".into(), "sizes".into()], vec!["y".into()]);
        let o = Opaque { op_type: "Resize".into(), payload: src.write_to_bytes().unwrap(), shape_hint: None, why: None };
        let node = |inputs: &[&str], outputs: &[&str]| Node {
            name: "r".into(),
            op: Op::Opaque(o.clone()),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        };
        let q = &o.to_onnx(&node(&["x2", "sizes2"], &["y2"])).unwrap()[0];
        assert_eq!(q.input, ["x2", "", "", "sizes2"]);
        assert_eq!(q.output, ["y2"]);
        assert!(o.to_onnx(&node(&["x2"], &["y2"])).is_err());
        assert!(o.to_onnx(&node(&["x2", "sizes2"], &["y2", "z"])).is_err());
    }

    #[test]
    fn a_constant_reshape_infers_minus_one_and_copies_zeros() {
        let reshape = |shape: &[i64], allowzero| ShapeHint::Reshape { shape: shape.to_vec(), allowzero };
        assert_eq!(reshape(&[-1, 12], false).apply(&[2, 6, 12]), Some(vec![12, 12]));
        assert_eq!(reshape(&[0, -1, 4, 3], false).apply(&[2, 6, 12]), Some(vec![2, 6, 4, 3]));
        assert_eq!(reshape(&[12, 12], false).apply(&[2, 6, 12]), Some(vec![12, 12]));
        // Sizes that do not hold the input's values, two -1s, and a 0 that is a size.
        assert_eq!(reshape(&[-1, 7], false).apply(&[2, 6, 12]), None);
        assert_eq!(reshape(&[5, 12], false).apply(&[2, 6, 12]), None);
        assert_eq!(reshape(&[-1, -1], false).apply(&[2, 6, 12]), None);
        assert_eq!(reshape(&[0, -1], true).apply(&[2, 6, 12]), None);
    }
}
