//! Reading and writing NodeProto attributes without panicking on odd files.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, NodeProto};

pub fn get<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub fn int(n: &NodeProto, name: &str, default: i64) -> i64 {
    get(n, name).map_or(default, |a| a.i)
}

pub fn float(n: &NodeProto, name: &str, default: f32) -> f32 {
    get(n, name).map_or(default, |a| a.f)
}

pub fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    get(n, name).map(|a| a.ints.clone())
}

pub fn string(n: &NodeProto, name: &str) -> Option<String> {
    get(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// `ints` as two (or four) non-negative usizes, or None when malformed.
pub fn pair(v: Option<Vec<i64>>, default: [usize; 2]) -> Option<[usize; 2]> {
    match v {
        None => Some(default),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 0) => Some([v[0] as usize, v[1] as usize]),
        _ => None,
    }
}

pub fn quad(v: Option<Vec<i64>>) -> Option<[usize; 4]> {
    match v {
        None => Some([0; 4]),
        Some(v) if v.len() == 4 && v.iter().all(|&x| x >= 0) => Some([v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize]),
        _ => None,
    }
}

fn attr(name: &str, t: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = t.into();
    a
}

pub fn make_int(name: &str, v: i64) -> AttributeProto {
    let mut a = attr(name, AttributeType::INT);
    a.i = v;
    a
}

pub fn make_ints(name: &str, v: &[usize]) -> AttributeProto {
    let mut a = attr(name, AttributeType::INTS);
    a.ints = v.iter().map(|&x| x as i64).collect();
    a
}

pub fn make_float(name: &str, v: f32) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOAT);
    a.f = v;
    a
}

/// A node of `op_type` (default domain) over the given tensors.
pub fn node_proto(name: &str, op_type: &str, inputs: Vec<String>, outputs: Vec<String>) -> NodeProto {
    let mut n = NodeProto::new();
    n.name = name.to_string();
    n.op_type = op_type.to_string();
    n.input = inputs;
    n.output = outputs;
    n
}
