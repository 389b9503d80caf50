//! Element types of a model about to be written, followed from its inputs and
//! initializers through the ops whose output type is known, so that a node reading
//! two different float types where ONNX requires one is refused before writing
//! (ONNX Runtime refuses such a file: "Type parameter (T) of Optype (Mul) bound to
//! different types"). tract, the verifying engine, computes such a Mul without
//! complaint, so this check is what stands between a type slip of the writer (a
//! carried Cast to float16 left in a model written as float32) and an invalid file.
//! Conservative: a type is followed only through the ops listed here, and a node is
//! checked only where both of its inputs' types are known.

use std::collections::HashMap;

use onnx_protobuf::GraphProto;

/// Ops whose outputs have the element type of their first input.
const SAME_AS_FIRST_INPUT: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Ceil",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Round",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

/// Ops whose inputs (all of them) share one element type `T` in every opset.
const ONE_TYPE_FOR_ALL_INPUTS: &[&str] = &["Add", "Concat", "Conv", "Div", "Gemm", "MatMul", "Max", "Mean", "Min", "Mul", "PRelu", "Sub", "Sum"];

const INT64: i32 = onnx_protobuf::tensor_proto::DataType::INT64 as i32;

/// The first node of `g` that reads two different element types where its op takes
/// one, as `(node name, op, tensor a, type a, tensor b, type b)`.
pub fn first_type_clash(g: &GraphProto) -> Option<(String, String, String, i32, String, i32)> {
    let mut types: HashMap<&str, i32> = HashMap::new();
    for v in &g.input {
        if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) {
            types.insert(&v.name, t.elem_type);
        }
    }
    for t in &g.initializer {
        types.insert(&t.name, t.data_type);
    }
    for n in g.node.iter().filter(|n| super::is_onnx_domain(&n.domain)) {
        let op = n.op_type.as_str();
        if ONE_TYPE_FOR_ALL_INPUTS.contains(&op) {
            let known: Vec<(&str, i32)> = n.input.iter().filter(|i| !i.is_empty()).filter_map(|i| types.get(i.as_str()).map(|&t| (i.as_str(), t))).collect();
            if let Some(&(b, tb)) = known.iter().find(|(_, t)| *t != known[0].1) {
                return Some((n.name.clone(), n.op_type.clone(), known[0].0.to_string(), known[0].1, b.to_string(), tb));
            }
        }
        let out = match op {
            "Cast" => super::attrs::get(n, "to").map(|a| a.i as i32),
            "CastLike" => n.input.get(1).and_then(|i| types.get(i.as_str()).copied()),
            "Constant" => super::attrs::get(n, "value").and_then(|a| a.t.as_ref()).map(|t| t.data_type),
            "Shape" | "Size" => Some(INT64),
            "Where" => n.input.get(1).and_then(|i| types.get(i.as_str()).copied()),
            _ if SAME_AS_FIRST_INPUT.contains(&op) => n.input.first().and_then(|i| types.get(i.as_str()).copied()),
            _ => None,
        };
        let Some(t) = out else { continue };
        // Split's outputs all have its input's type; the others' first output does.
        let outputs = if op == "Split" { &n.output[..] } else { &n.output[..n.output.len().min(1)] };
        for o in outputs.iter().filter(|o| !o.is_empty()) {
            types.insert(o, t);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::tensor_proto::DataType;
    use onnx_protobuf::{NodeProto, TensorProto};

    fn node(op: &str, inputs: &[&str], output: &str, to: Option<DataType>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = output.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        if let Some(to) = to {
            n.attribute.push(super::super::attrs::make_int("to", to as i64));
        }
        n
    }

    fn init(name: &str, t: DataType) -> TensorProto {
        let mut x = TensorProto::new();
        x.name = name.into();
        x.data_type = t as i32;
        x
    }

    /// x (float32 weight path) -> Cast(to) -> Sigmoid -> Mul with a float32 weight.
    fn gate(to: DataType) -> GraphProto {
        let mut g = GraphProto::new();
        g.initializer = vec![init("x", DataType::FLOAT), init("w", DataType::FLOAT), init("scales", DataType::FLOAT), init("h", DataType::FLOAT16)];
        g.node = vec![
            node("Cast", &["x"], "c", Some(to)),
            node("Sigmoid", &["c"], "s", None),
            node("Mul", &["s", "w"], "y", None),
            // Resize takes float32 scales whatever its input's type: never a clash.
            node("Resize", &["h", "", "scales"], "r", None),
        ];
        g
    }

    #[test]
    fn a_float16_cast_meeting_a_float32_weight_is_a_clash_and_other_types_are_not() {
        let clash = first_type_clash(&gate(DataType::FLOAT16)).expect("float16 meets float32 in the Mul");
        assert_eq!((clash.0.as_str(), clash.1.as_str(), clash.3, clash.5), ("y", "Mul", DataType::FLOAT16 as i32, DataType::FLOAT as i32));
        assert_eq!(first_type_clash(&gate(DataType::FLOAT)), None);
        // An op outside the lists leaves its output's type unknown: nothing is guessed.
        let mut g = gate(DataType::FLOAT16);
        g.node[1].op_type = "SomeCustomOp".into();
        assert_eq!(first_type_clash(&g), None);
    }
}
