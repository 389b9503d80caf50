//! Half-precision ONNX models widened to float32: for the ONNX engine, and for
//! `fuse --f32` (the carried nodes of a model written in float32). tract cannot
//! run every float16 model as written: its float16 Gemm fails to translate ("expected
//! F16 got F32"), which is the head of every timm classifier exported with `.half()`,
//! so such a model with an op the f64 reference does not run (a squeeze-excite's
//! ReduceMean and Mul, attention) had no end-to-end check at all. Both models of a
//! comparison are widened the same way: every float16 and bfloat16 weight, constant,
//! declared type and cast target becomes float32. The weights keep the values their
//! file stores (the deploy model's rounding to half precision is in them); only the
//! activations' arithmetic is done in float32, for both models alike, so the
//! comparison measures the rewrite and the stored rounding, not float16 arithmetic
//! noise that a runtime adds to both.

use std::path::Path;

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

use super::tensor::ExternalData;

const FLOAT: i32 = DataType::Float as i32;
const FLOAT16: i32 = DataType::Float16 as i32;
const BFLOAT16: i32 = DataType::Bfloat16 as i32;
const EXTERNAL: i32 = tract_onnx::pb::tensor_proto::DataLocation::External as i32;

fn is_half(t: i32) -> bool {
    t == FLOAT16 || t == BFLOAT16
}

/// Widens every half-precision value and type of `model` to float32, in place, when
/// it stores half precision (`stores_half`). Returns whether it did. Weights in
/// external data are read from `dir` first; a model where that fails is left as it
/// is (`false`).
pub fn widen_half_floats(model: &mut ModelProto, dir: Option<&Path>) -> bool {
    let Some(g) = model.graph.as_mut() else { return false };
    if !stores_half(g) || has_external_half_in_nodes(g) || !inline_external_half(g, dir) {
        return false;
    }
    widen_graph(g);
    true
}

fn is_external_half(t: &TensorProto) -> bool {
    is_half(t.data_type) && t.data_location == Some(EXTERNAL)
}

/// A half-precision tensor in external data inside a node's attributes or a
/// subgraph (no exporter writes one; such a model runs as it is).
fn has_external_half_in_nodes(g: &GraphProto) -> bool {
    let in_graph = |sg: &GraphProto| sg.initializer.iter().any(is_external_half) || has_external_half_in_nodes(sg);
    g.node.iter().flat_map(|n| &n.attribute).any(|a| {
        a.t.as_ref().is_some_and(is_external_half)
            || a.tensors.iter().any(is_external_half)
            || a.g.as_ref().is_some_and(in_graph)
            || a.graphs.iter().any(in_graph)
    })
}

/// Reads the half-precision initializers stored in external data (torch's dynamo
/// exporter writes a model's weights to `<model>.data`: GhostNetV3 in float16) into
/// the model, so they can be widened; the engine would read them by their declared
/// type. All or nothing: `false`, the model untouched, when one cannot be read
/// (no folder, a location outside it, a range outside the file).
fn inline_external_half(g: &mut GraphProto, dir: Option<&Path>) -> bool {
    let external: Vec<usize> = (0..g.initializer.len()).filter(|&i| is_external_half(&g.initializer[i])).collect();
    if external.is_empty() {
        return true;
    }
    let Some(dir) = dir else { return false };
    let mut files = ExternalData::in_dir(dir);
    let mut read = Vec::with_capacity(external.len());
    for &i in &external {
        let t = &g.initializer[i];
        match files.bytes_of(&t.name, |k| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone())) {
            Ok(bytes) => read.push(bytes.to_vec()),
            Err(_) => return false,
        }
    }
    for (i, bytes) in external.into_iter().zip(read) {
        let t = &mut g.initializer[i];
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = None;
    }
    true
}

/// A half-precision model: its weights or its inputs and outputs are. A float32
/// model is run as it is, casts to float16 included: widening those would hide a
/// file whose types do not agree (a float16 cast meeting float32 weights), which
/// ONNX Runtime refuses.
fn stores_half(g: &GraphProto) -> bool {
    g.initializer.iter().any(|t| is_half(t.data_type)) || g.input.iter().chain(&g.output).any(declared_half)
}

/// Anything in `g` is half precision: a weight, a declared type, an attribute.
fn mentions_half(g: &GraphProto) -> bool {
    g.initializer.iter().any(|t| is_half(t.data_type))
        || g.input.iter().chain(&g.output).chain(&g.value_info).any(declared_half)
        || g.node.iter().flat_map(|n| &n.attribute).any(attribute_mentions_half)
}

fn attribute_mentions_half(a: &AttributeProto) -> bool {
    (is_cast_target(a) && is_half(a.i as i32))
        || a.t.as_ref().is_some_and(|t| is_half(t.data_type))
        || a.tensors.iter().any(|t| is_half(t.data_type))
        || a.g.as_ref().is_some_and(mentions_half)
        || a.graphs.iter().any(mentions_half)
}

/// A value declared as a half-precision tensor.
fn declared_half(v: &tract_onnx::pb::ValueInfoProto) -> bool {
    matches!(v.r#type.as_ref().and_then(|t| t.value.as_ref()), Some(type_proto::Value::TensorType(tt)) if is_half(tt.elem_type))
}

/// An attribute naming an element type: Cast's `to`, and `dtype` of the generators
/// (EyeLike, RandomNormal...).
fn is_cast_target(a: &AttributeProto) -> bool {
    a.name == "to" || a.name == "dtype"
}

fn widen_graph(g: &mut GraphProto) {
    g.initializer.iter_mut().for_each(widen_tensor);
    for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        if let Some(type_proto::Value::TensorType(tt)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if is_half(tt.elem_type) {
                tt.elem_type = FLOAT;
            }
        }
    }
    g.node.iter_mut().for_each(widen_node);
}

/// A node's element-type attributes, tensor attributes and subgraphs, widened.
fn widen_node(n: &mut NodeProto) {
    for a in n.attribute.iter_mut() {
        if is_cast_target(a) && is_half(a.i as i32) {
            a.i = FLOAT as i64;
        }
        a.t.iter_mut().chain(a.tensors.iter_mut()).for_each(widen_tensor);
        a.g.iter_mut().chain(a.graphs.iter_mut()).for_each(widen_graph);
    }
}

/// A carried node (its `NodeProto` bytes) as it must be written in a float32 model:
/// `Ok(None)` when it names no half-precision type (kept byte for byte), the widened
/// encoding otherwise. Refused for ops outside the ONNX domain, whose attributes'
/// meaning repfuse cannot know.
pub(crate) fn node_as_f32(payload: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut n = NodeProto::decode(payload).map_err(|e| format!("cannot decode the node: {}", e))?;
    if !super::is_onnx_domain(&n.domain) {
        return Err(format!("an op of domain `{}`, whose attributes may name an element type", n.domain));
    }
    if !n.attribute.iter().any(attribute_mentions_half) {
        return Ok(None);
    }
    widen_node(&mut n);
    Ok(Some(n.encode_to_vec()))
}

/// A float16 or bfloat16 tensor as float32 of the same values (stored as raw
/// little-endian bytes, as exporters write them).
fn widen_tensor(t: &mut TensorProto) {
    let to_f32: fn(u16) -> f32 = match t.data_type {
        FLOAT16 => |b| half::f16::from_bits(b).to_f32(),
        BFLOAT16 => |b| half::bf16::from_bits(b).to_f32(),
        _ => return,
    };
    // ONNX stores half-precision values as raw bytes, or one per int32 (low 16 bits).
    let bits: Vec<u16> = if t.raw_data.is_empty() {
        t.int32_data.iter().map(|&v| v as u16).collect()
    } else {
        t.raw_data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
    };
    t.raw_data = bits.into_iter().flat_map(|b| to_f32(b).to_le_bytes()).collect();
    t.int32_data.clear();
    t.data_type = FLOAT;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{NodeProto, TypeProto, ValueInfoProto};

    fn f32s(t: &TensorProto) -> Vec<f32> {
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn tensor_type(elem_type: i32) -> Option<TypeProto> {
        Some(TypeProto { value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: None })), ..Default::default() })
    }

    fn elem_type(v: &ValueInfoProto) -> i32 {
        match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t.elem_type,
            None => -1,
        }
    }

    #[test]
    fn half_values_types_and_casts_become_float32_of_the_same_values() {
        let values = [1.0f32, -2.5, 65504.0, 6.1e-5, 3.0e-7, 0.1];
        let f16_bits: Vec<u16> = values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let bf16_bits: Vec<u16> = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let raw =
            TensorProto { name: "raw".into(), data_type: FLOAT16, raw_data: f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect(), ..Default::default() };
        let ints = TensorProto { name: "ints".into(), data_type: FLOAT16, int32_data: f16_bits.iter().map(|&b| b as i32).collect(), ..Default::default() };
        let bf =
            TensorProto { name: "bf".into(), data_type: BFLOAT16, raw_data: bf16_bits.iter().flat_map(|b| b.to_le_bytes()).collect(), ..Default::default() };
        let kept = TensorProto { name: "kept".into(), data_type: DataType::Int64 as i32, raw_data: vec![7, 0, 0, 0, 0, 0, 0, 0], ..Default::default() };
        let cast = |to: DataType| NodeProto {
            op_type: "Cast".into(),
            attribute: vec![AttributeProto { name: "to".into(), i: to as i64, ..Default::default() }],
            ..Default::default()
        };
        let constant = NodeProto {
            op_type: "Constant".into(),
            attribute: vec![AttributeProto { name: "value".into(), t: Some(raw.clone()), ..Default::default() }],
            ..Default::default()
        };
        let mut model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![raw, ints, bf, kept.clone()],
                node: vec![cast(DataType::Float16), cast(DataType::Int64), constant],
                input: vec![ValueInfoProto { name: "x".into(), r#type: tensor_type(FLOAT16), ..Default::default() }],
                output: vec![ValueInfoProto { name: "y".into(), r#type: tensor_type(BFLOAT16), ..Default::default() }],
                value_info: vec![ValueInfoProto { name: "i".into(), r#type: tensor_type(DataType::Int64 as i32), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(widen_half_floats(&mut model, None));
        let g = model.graph.as_ref().unwrap();
        let want_f16: Vec<f32> = f16_bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
        let want_bf16: Vec<f32> = bf16_bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
        assert!(g.initializer[..3].iter().all(|t| t.data_type == FLOAT && t.int32_data.is_empty()));
        assert_eq!(f32s(&g.initializer[0]), want_f16);
        assert_eq!(f32s(&g.initializer[1]), want_f16);
        assert_eq!(f32s(&g.initializer[2]), want_bf16);
        assert_eq!(g.initializer[3], kept, "an int64 weight is not touched");
        assert_eq!((g.node[0].attribute[0].i, g.node[1].attribute[0].i), (FLOAT as i64, DataType::Int64 as i64));
        assert_eq!(f32s(g.node[2].attribute[0].t.as_ref().unwrap()), want_f16);
        assert_eq!((elem_type(&g.input[0]), elem_type(&g.output[0]), elem_type(&g.value_info[0])), (FLOAT, FLOAT, DataType::Int64 as i32));
    }

    #[test]
    fn a_carried_node_names_float32_where_it_named_half_precision() {
        let node = |op: &str, domain: &str, to: DataType| NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            attribute: vec![AttributeProto { name: "to".into(), i: to as i64, ..Default::default() }],
            ..Default::default()
        };
        let widened = node_as_f32(&node("Cast", "", DataType::Float16).encode_to_vec()).unwrap().expect("a cast to float16 is rewritten");
        assert_eq!(NodeProto::decode(&widened[..]).unwrap().attribute[0].i, FLOAT as i64);
        assert_eq!(node_as_f32(&node("Cast", "", DataType::Int64).encode_to_vec()).unwrap(), None, "a cast to int64 stays byte for byte");
        assert!(node_as_f32(&node("FusedGemm", "com.microsoft", DataType::Int64).encode_to_vec()).is_err(), "another domain's attributes are not guessed at");
    }

    #[test]
    fn float32_models_are_left_as_they_are() {
        let w = TensorProto { name: "w".into(), data_type: FLOAT, raw_data: 1f32.to_le_bytes().to_vec(), ..Default::default() };
        let cast = NodeProto {
            op_type: "Cast".into(),
            attribute: vec![AttributeProto { name: "to".into(), i: FLOAT16 as i64, ..Default::default() }],
            ..Default::default()
        };
        let mut model = ModelProto { graph: Some(GraphProto { initializer: vec![w], node: vec![cast], ..Default::default() }), ..Default::default() };
        let before = model.clone();
        assert!(!widen_half_floats(&mut model, None), "a float32 model runs as it is, its casts to float16 too");
        assert_eq!(model, before);
    }

    #[test]
    fn external_half_weights_are_read_from_the_models_folder_or_the_model_is_left_as_it_is() {
        use tract_onnx::pb::StringStringEntryProto;
        let dir = tempfile::tempdir().unwrap();
        let values = [0.5f32, -1.25, 3.0];
        let mut data = vec![0xAAu8; 6]; // another tensor's bytes before this one
        data.extend(values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()));
        std::fs::write(dir.path().join("model.data"), &data).unwrap();
        let entry = |k: &str, v: &str| StringStringEntryProto { key: k.into(), value: v.into() };
        let external = |location: &str| TensorProto {
            name: "e".into(),
            data_type: FLOAT16,
            data_location: Some(EXTERNAL),
            external_data: vec![entry("location", location), entry("offset", "6"), entry("length", "6")],
            ..Default::default()
        };
        let model_with = |t: TensorProto| ModelProto { graph: Some(GraphProto { initializer: vec![t], ..Default::default() }), ..Default::default() };
        let mut model = model_with(external("model.data"));
        assert!(widen_half_floats(&mut model, Some(dir.path())));
        let t = &model.graph.as_ref().unwrap().initializer[0];
        assert_eq!((t.data_type, t.data_location, t.external_data.len()), (FLOAT, None, 0));
        assert_eq!(f32s(t), values);
        for (location, folder) in [("model.data", None), ("../model.data", Some(dir.path())), ("missing.data", Some(dir.path()))] {
            let mut model = model_with(external(location));
            let before = model.clone();
            assert!(!widen_half_floats(&mut model, folder), "{} from {:?}", location, folder);
            assert_eq!(model, before, "left as it is");
        }
    }
}
