//! Constants an exporter computes from other constants, folded as the file is read.
//!
//! torch's dynamo exporter without its optimizer (`optimize=False`) writes the bias of
//! a bias-free conv as `Expand(CastLike(0.0, x), Expand(Shape(weight)[0:1], [1]))`:
//! a zero vector of the conv's output channels, computed from a weight's shape and
//! literals. Left as nodes, the conv reads a bias that is no initializer, is carried
//! untouched, and nothing after it fuses (RepVGG-A0: 44 convs in, 44 out). Each node
//! here whose inputs are all constants (initializers, or outputs of nodes folded
//! before it) becomes an initializer, so the op that reads it sees a parameter.
//!
//! Only what needs no activation value and no shape beyond an initializer's own:
//! `Constant` in all its attribute forms, `Shape` of an initializer, `Cast`,
//! `CastLike` (to the type the file declares for its second input), `Expand`, and
//! `Concat` of 1-D integer constants (a reshape's target assembled from parts).
//! Graph-input shapes are left alone (they may be symbolic); shape arithmetic past
//! them is `static_shapes`'s, with the ONNX engine's proof. A folded output is at
//! most [`MAX_FOLDED`] values: a bias or a shape, never an activation-sized block
//! written into the file.

use std::collections::HashMap;

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{NodeProto, TensorProto};

use super::attrs;
use super::tensor::{encode, FloatType};
use crate::tensor::checked_numel;

/// Largest constant folded, in values.
pub(super) const MAX_FOLDED: usize = 1 << 16;

/// A constant's values: floats in the type the file stores them in, or integers in
/// an ONNX integer type (int64 or int32).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Values {
    /// Float values (already rounded to `FloatType`).
    Float(Vec<f32>, FloatType),
    /// Integer values and their ONNX data type.
    Int(Vec<i64>, i32),
}

/// A constant tensor: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Const {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Const {
    fn ints(values: Vec<i64>) -> Const {
        Const { shape: vec![values.len()], values: Values::Int(values, DataType::INT64 as i32) }
    }

    /// The initializer named `name` holding these values.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        match &self.values {
            Values::Float(v, ft) => encode(name, &self.shape, v, *ft),
            Values::Int(v, ty) => {
                let mut t = TensorProto::new();
                t.name = name.to_string();
                t.dims = self.shape.iter().map(|&d| d as i64).collect();
                t.data_type = *ty;
                t.raw_data = if *ty == DataType::INT32 as i32 {
                    v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()
                } else {
                    v.iter().flat_map(|&x| x.to_le_bytes()).collect()
                };
                t
            }
        }
    }
}

/// What the folder may ask about the tensors a node reads.
pub(super) trait Constants {
    /// The value of `name` when it is a constant (an initializer, or a folded output).
    fn constant(&self, name: &str) -> Option<Const>;
    /// The shape of `name` when it is an initializer (any type).
    fn initializer_shape(&self, name: &str) -> Option<&[usize]>;
    /// The ONNX element type of `name`, as the file declares it (inputs, value_info,
    /// outputs, initializers).
    fn elem_type(&self, name: &str) -> Option<i32>;
}

/// The integer values of an int64 or int32 initializer (raw or typed fields).
pub(super) fn int_values(t: &TensorProto) -> Option<Vec<i64>> {
    let n = checked_numel(&t.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<Vec<_>>>()?)?;
    let v: Vec<i64> = match t.data_type {
        x if x == DataType::INT64 as i32 && !t.raw_data.is_empty() => {
            t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
        }
        x if x == DataType::INT64 as i32 => t.int64_data.clone(),
        x if x == DataType::INT32 as i32 && !t.raw_data.is_empty() => {
            t.raw_data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect()
        }
        x if x == DataType::INT32 as i32 => t.int32_data.iter().map(|&x| x as i64).collect(),
        _ => return None,
    };
    (v.len() == n).then_some(v)
}

/// The initializer that replaces `n`, when `n` is a `Constant` or one of the folded
/// ops with every input constant; `None` leaves the node to the importer. A
/// `Constant`'s own tensor is taken as it is (any type, any size: it is the file's
/// data); a computed one only up to [`MAX_FOLDED`] values.
pub(super) fn fold(n: &NodeProto, c: &dyn Constants) -> Option<TensorProto> {
    if !super::is_onnx_domain(&n.domain) || n.output.len() != 1 || n.output[0].is_empty() {
        return None;
    }
    if n.op_type == "Constant" {
        if let Some(t) = attrs::get(n, "value").and_then(|a| a.t.as_ref()) {
            let mut t = t.clone();
            t.name = n.output[0].clone();
            return Some(t);
        }
    }
    fold_value(n, c).map(|v| v.to_proto(&n.output[0]))
}

/// The value `fold` computes for `n` (not a `Constant` holding a tensor).
fn fold_value(n: &NodeProto, c: &dyn Constants) -> Option<Const> {
    let input = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
    let folded = match n.op_type.as_str() {
        "Constant" => constant_attr(n)?,
        "Shape" => {
            let shape = c.initializer_shape(input(0)?)?;
            let rank = shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let (start, end) = (clamp(attrs::int(n, "start", 0)), clamp(attrs::int(n, "end", rank)));
            Const::ints(shape[start..end.max(start)].iter().map(|&d| d as i64).collect())
        }
        "Cast" => cast(c.constant(input(0)?)?, attrs::int(n, "to", 0) as i32)?,
        "CastLike" => cast(c.constant(input(0)?)?, c.elem_type(input(1)?)?)?,
        "Expand" => {
            let Values::Int(to, _) = c.constant(input(1)?)?.values else { return None };
            expand(c.constant(input(0)?)?, &to)?
        }
        "Concat" => concat_ints(n, c)?,
        _ => return None,
    };
    (checked_numel(&folded.shape)? <= MAX_FOLDED).then_some(folded)
}

/// `Constant` written with a scalar or list attribute (`value` is taken whole by `fold`).
fn constant_attr(n: &NodeProto) -> Option<Const> {
    let a = n.attribute.first().filter(|_| n.attribute.len() == 1)?;
    let float = |v: Vec<f32>, shape| Const { shape, values: Values::Float(v, FloatType::F32) };
    Some(match a.name.as_str() {
        "value_int" => Const { shape: vec![], values: Values::Int(vec![a.i], DataType::INT64 as i32) },
        "value_ints" => Const::ints(a.ints.clone()),
        "value_float" => float(vec![a.f], vec![]),
        "value_floats" => float(a.floats.clone(), vec![a.floats.len()]),
        _ => return None,
    })
}

/// `x` converted to ONNX type `to`: floats to any float type (rounded), integers to
/// float or to int64/int32 (when every value fits). Floats to integers are left to
/// the engine (ONNX leaves out-of-range conversions undefined).
fn cast(x: Const, to: i32) -> Option<Const> {
    let values = match (x.values, FloatType::from_onnx(to)) {
        (Values::Float(v, _), Some(ft)) => Values::Float(v.into_iter().map(|f| ft.round(f)).collect(), ft),
        (Values::Int(v, _), Some(ft)) => Values::Float(v.into_iter().map(|i| ft.round(i as f32)).collect(), ft),
        (Values::Int(v, _), None) if to == DataType::INT64 as i32 => Values::Int(v, to),
        (Values::Int(v, _), None) if to == DataType::INT32 as i32 && v.iter().all(|&i| i32::try_from(i).is_ok()) => Values::Int(v, to),
        _ => return None,
    };
    Some(Const { shape: x.shape, values })
}

/// `Concat` of 1-D integer constants of one type (a shape assembled from parts).
fn concat_ints(n: &NodeProto, c: &dyn Constants) -> Option<Const> {
    if !matches!(attrs::int(n, "axis", i64::MIN), 0 | -1) || n.input.is_empty() {
        return None;
    }
    let (mut all, mut ty) = (vec![], None);
    for i in &n.input {
        let Const { shape, values: Values::Int(v, t) } = c.constant(i)? else { return None };
        if shape.len() != 1 || ty.is_some_and(|ty| ty != t) {
            return None;
        }
        ty = Some(t);
        all.extend(v);
    }
    Some(Const { shape: vec![all.len()], values: Values::Int(all, ty?) })
}

/// `x` broadcast to `to` (numpy rules: axes aligned from the right, a size 1 on
/// either side stretches).
fn expand(x: Const, to: &[i64]) -> Option<Const> {
    let rank = x.shape.len().max(to.len());
    let pad = |s: &[usize]| std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect::<Vec<usize>>();
    let to: Vec<usize> = to.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let (xs, ts) = (pad(&x.shape), pad(&to));
    let out: Vec<usize> = xs
        .iter()
        .zip(&ts)
        .map(|(&a, &b)| {
            if a == b || b == 1 {
                Some(a)
            } else if a == 1 {
                Some(b)
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    let numel = checked_numel(&out).filter(|&n| n <= MAX_FOLDED)?;
    // Source index of each output element: its coordinates, with stretched axes at 0.
    let source = |mut flat: usize| {
        let (mut at, mut stride) = (0, 1);
        for axis in (0..rank).rev() {
            let i = flat % out[axis];
            flat /= out[axis];
            if xs[axis] != 1 {
                at += i * stride;
            }
            stride *= xs[axis];
        }
        at
    };
    let values = match x.values {
        Values::Float(v, ft) => Values::Float((0..numel).map(|k| v[source(k)]).collect(), ft),
        Values::Int(v, ty) => Values::Int((0..numel).map(|k| v[source(k)]).collect(), ty),
    };
    Some(Const { shape: out, values })
}

/// Element types the file declares for its tensors (graph inputs, value_info,
/// outputs), for `CastLike`.
pub(super) fn declared_types(g: &onnx_protobuf::GraphProto) -> HashMap<&str, i32> {
    g.input
        .iter()
        .chain(&g.value_info)
        .chain(&g.output)
        .filter_map(|v| match &v.type_.value {
            Some(onnx_protobuf::type_proto::Value::TensorType(t)) if t.elem_type != 0 => Some((v.name.as_str(), t.elem_type)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table(HashMap<&'static str, Const>, HashMap<&'static str, Vec<usize>>, HashMap<&'static str, i32>);

    impl Constants for Table {
        fn constant(&self, name: &str) -> Option<Const> {
            self.0.get(name).cloned()
        }
        fn initializer_shape(&self, name: &str) -> Option<&[usize]> {
            self.1.get(name).map(Vec::as_slice)
        }
        fn elem_type(&self, name: &str) -> Option<i32> {
            self.2.get(name).copied()
        }
    }

    fn node(op: &str, inputs: &[&str], attrs: Vec<onnx_protobuf::AttributeProto>) -> NodeProto {
        let mut n = attrs::node_proto("n", op, inputs.iter().map(|s| s.to_string()).collect(), vec!["out".into()]);
        n.attribute = attrs;
        n
    }

    fn floats(shape: Vec<usize>, v: Vec<f32>) -> Const {
        Const { shape, values: Values::Float(v, FloatType::F32) }
    }

    /// The dynamo exporter's zero bias for a conv of 3 output channels:
    /// `Expand(CastLike(0, x), Expand(Shape(w)[0:1], [1]))`, folded node by node.
    #[test]
    fn the_dynamo_zero_bias_folds_to_a_vector_of_output_channels() {
        let mut t = Table(HashMap::new(), HashMap::from([("w", vec![3, 2, 3, 3])]), HashMap::from([("x", DataType::FLOAT16 as i32)]));
        let shape = fold_value(&node("Shape", &["w"], vec![attrs::make_int("start", 0), attrs::make_int("end", 1)]), &t).unwrap();
        assert_eq!(shape, Const::ints(vec![3]));
        t.0.insert("s", shape);
        t.0.insert("one", fold_value(&node("Constant", &[], vec![attrs::make_ints("value_ints", &[1])]), &t).unwrap());
        let s2 = fold_value(&node("Expand", &["s", "one"], vec![]), &t).unwrap();
        assert_eq!(s2, Const::ints(vec![3]));
        t.0.insert("s2", s2);
        t.0.insert("zero", floats(vec![], vec![0.25]));
        let z = fold_value(&node("CastLike", &["zero", "x"], vec![]), &t).unwrap();
        assert_eq!(z, Const { shape: vec![], values: Values::Float(vec![0.25], FloatType::F16) });
        t.0.insert("z", z);
        let bias = fold_value(&node("Expand", &["z", "s2"], vec![]), &t).unwrap();
        assert_eq!(bias, Const { shape: vec![3], values: Values::Float(vec![0.25; 3], FloatType::F16) });
    }

    #[test]
    fn expand_broadcasts_both_ways_and_refuses_mismatches() {
        let t = Table(
            HashMap::from([("a", floats(vec![2, 1], vec![1.0, 2.0])), ("to", Const::ints(vec![3, 1, 3])), ("bad", Const::ints(vec![3, 2]))]),
            HashMap::new(),
            HashMap::new(),
        );
        let e = fold_value(&node("Expand", &["a", "to"], vec![]), &t).unwrap();
        assert_eq!(e.shape, vec![3, 2, 3]);
        assert_eq!(e.values, Values::Float([[1.0f32; 3], [2.0; 3]].concat().repeat(3), FloatType::F32));
        // [2, 1] against [3, 2]: axis 0 has 2 against 3.
        assert_eq!(fold_value(&node("Expand", &["a", "bad"], vec![]), &t), None);
    }

    #[test]
    fn shape_takes_negative_bounds_and_never_folds_an_activation() {
        let t = Table(HashMap::new(), HashMap::from([("w", vec![8, 4, 3, 3])]), HashMap::new());
        let last_two = fold_value(&node("Shape", &["w"], vec![attrs::make_int("start", -2)]), &t).unwrap();
        assert_eq!(last_two, Const::ints(vec![3, 3]));
        // `x` is no initializer: its shape may be symbolic.
        assert_eq!(fold_value(&node("Shape", &["x"], vec![]), &t), None);
    }

    #[test]
    fn casts_refuse_what_onnx_leaves_undefined_and_outputs_past_the_limit() {
        let t = Table(
            HashMap::from([
                ("f", floats(vec![1], vec![1.5])),
                ("big", Const::ints(vec![i64::MAX])),
                ("huge", Const::ints(vec![MAX_FOLDED as i64 + 1])),
                ("one", floats(vec![], vec![1.0])),
            ]),
            HashMap::new(),
            HashMap::new(),
        );
        assert_eq!(fold_value(&node("Cast", &["f"], vec![attrs::make_int("to", DataType::INT64 as i64)]), &t), None);
        assert_eq!(fold_value(&node("Cast", &["big"], vec![attrs::make_int("to", DataType::INT32 as i64)]), &t), None);
        assert_eq!(fold_value(&node("Cast", &["big"], vec![attrs::make_int("to", DataType::INT64 as i64)]), &t), Some(Const::ints(vec![i64::MAX])));
        assert_eq!(fold_value(&node("Expand", &["one", "huge"], vec![]), &t), None);
    }

    #[test]
    fn a_shape_assembled_from_integer_parts_is_one_constant() {
        let t = Table(
            HashMap::from([("a", Const::ints(vec![-1])), ("b", Const::ints(vec![4, 64])), ("f", floats(vec![1], vec![1.0]))]),
            HashMap::new(),
            HashMap::new(),
        );
        let axis = |a| vec![attrs::make_int("axis", a)];
        assert_eq!(fold_value(&node("Concat", &["a", "b"], axis(0)), &t), Some(Const::ints(vec![-1, 4, 64])));
        // Floats (data, not a shape) and a missing axis are left to the importer.
        assert_eq!(fold_value(&node("Concat", &["a", "f"], axis(0)), &t), None);
        assert_eq!(fold_value(&node("Concat", &["a", "b"], vec![]), &t), None);
    }
}
