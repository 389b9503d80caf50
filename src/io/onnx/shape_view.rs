//! The model as the ONNX engine's shape analysis needs it: large float weights
//! declared as graph inputs of their shape instead of carried as data.
//!
//! repfuse asks tract to prove shapes and integer constants past the ops it carries
//! (attention, reshapes). tract copies every initializer it parses into a tensor of
//! its own, so on attention models (LeViT, EfficientViT) the analysis held a second
//! copy of the weights and took most of the command's time (`benches/results/
//! end-to-end.md`, session 14). Shapes and shape arithmetic never need a weight's
//! values, only its shape. A float weight is declared an input when its value
//! cannot reach a constant repfuse would fold: when it is larger than the float
//! constants the analysis folds (`tract_engine::MAX_FOLDED_FLOATS`), or when every
//! node reading it is a conv, batch norm, Gemm or MatMul reading it as a parameter
//! (not input 0), whose output follows the data. Small weights read any other way
//! (a gate `sigmoid(alpha)`, an attention-bias table gathered by constant indices)
//! keep their values, and so does every name an If/Loop/Scan body reads. Misjudging
//! only costs a fold or a shape past a carried op: a node whose value the analysis
//! no longer proves constant is carried as it is, which is exact.

use super::wire::{put_len_key, put_varint, rewrite_graph, Reader, WireError, GRAPH_INITIALIZER, LEN};
use crate::graph::ValueInfo;

/// `GraphProto.input`.
const GRAPH_INPUT: u32 = 11;
/// `TensorProto.dims`, `.data_type`, `.name`.
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_NAME: u32 = 8;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;
/// `GraphProto.node`; `NodeProto.input`, `.op_type`.
const GRAPH_NODE: u32 = 1;
const NODE_INPUT: u32 = 1;
const NODE_OP_TYPE: u32 = 4;
/// `NodeProto.attribute`; `AttributeProto.g`, `.graphs` (If/Loop/Scan bodies).
const NODE_ATTRIBUTE: u32 = 5;
const ATTRIBUTE_GRAPH: u32 = 6;
const ATTRIBUTE_GRAPHS: u32 = 11;
/// Ops whose inputs after the first are parameters: their output follows input 0.
const PARAMETER_READERS: &[&[u8]] = &[b"Conv", b"ConvTranspose", b"BatchNormalization", b"Gemm", b"MatMul"];

/// `bytes` with every float32 initializer of more than `min_elements` elements, or
/// read only as a parameter (see the module doc), turned into a graph input of its
/// shape, and those inputs (so the caller can give the engine their shapes). An
/// initializer the graph already lists as an input (old exporters do) keeps that
/// declaration.
pub fn shape_analysis_view(bytes: &[u8], min_elements: usize) -> Result<(Vec<u8>, Vec<ValueInfo>), WireError> {
    let mut promoted = vec![];
    let view = rewrite_graph(bytes, |graph| graph_view(bytes, graph, min_elements, &mut promoted))?;
    Ok((view, promoted))
}

fn graph_view(bytes: &[u8], range: std::ops::Range<usize>, min_elements: usize, promoted: &mut Vec<ValueInfo>) -> Result<Vec<u8>, WireError> {
    // Names the graph already declares as inputs (with whether the declaration has
    // a type: the engine rejects an untyped input, so such a weight stays data), and
    // names some node reads other than as a parameter.
    let mut declared: std::collections::HashMap<&[u8], bool> = Default::default();
    let mut read_as_data: std::collections::HashSet<&[u8]> = Default::default();
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, _, payload) = r.field()?;
        if number == GRAPH_INPUT && wire == LEN {
            let (mut name, mut typed) = (None, false);
            let mut v = Reader { b: bytes, pos: payload.start, end: payload.end };
            while !v.done() {
                let (n, w, _, p) = v.field()?;
                match (n, w) {
                    (1, LEN) => name = Some(&bytes[p]),
                    (2, LEN) => typed = true,
                    _ => {}
                }
            }
            if let Some(name) = name {
                declared.insert(name, typed);
            }
        }
    }
    collect_data_reads(bytes, range.clone(), false, &mut read_as_data)?;
    let mut out = Vec::with_capacity(range.len().min(1 << 16));
    let mut inputs = vec![];
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, start, payload) = r.field()?;
        if number == GRAPH_INITIALIZER && wire == LEN {
            let promotable = promotable_float(bytes, payload, min_elements, &read_as_data)?;
            if let Some((name, dims)) = promotable.filter(|(name, _)| declared.get(name) != Some(&false)) {
                if !declared.contains_key(name) {
                    inputs.push(value_info(name, &dims));
                }
                let name = std::str::from_utf8(name).map_err(|_| format!("initializer name at byte {} is not UTF-8", start))?;
                promoted.push(ValueInfo { name: name.to_string(), shape: dims });
                continue;
            }
        }
        out.extend_from_slice(&bytes[start..r.pos]);
    }
    for v in inputs {
        put_len_key(&mut out, GRAPH_INPUT, v.len());
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Adds to `reads` every name a node of the graph at `range` reads as data: input 0
/// of a parameter reader, every input of any other op, and, inside the subgraphs of
/// If/Loop/Scan bodies (`nested`), every input at all (a body reads outer names
/// implicitly, and this walk does not follow what it does with them).
fn collect_data_reads<'a>(
    bytes: &'a [u8],
    range: std::ops::Range<usize>,
    nested: bool,
    reads: &mut std::collections::HashSet<&'a [u8]>,
) -> Result<(), WireError> {
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, _, payload) = r.field()?;
        if number != GRAPH_NODE || wire != LEN {
            continue;
        }
        let (mut op, mut inputs) = (&[][..], vec![]);
        let mut v = Reader { b: bytes, pos: payload.start, end: payload.end };
        while !v.done() {
            let (n, w, _, p) = v.field()?;
            match (n, w) {
                (NODE_INPUT, LEN) => inputs.push(&bytes[p]),
                (NODE_OP_TYPE, LEN) => op = &bytes[p],
                (NODE_ATTRIBUTE, LEN) => {
                    let mut a = Reader { b: bytes, pos: p.start, end: p.end };
                    while !a.done() {
                        let (an, aw, _, ap) = a.field()?;
                        if (an == ATTRIBUTE_GRAPH || an == ATTRIBUTE_GRAPHS) && aw == LEN {
                            collect_data_reads(bytes, ap, true, reads)?;
                        }
                    }
                }
                _ => {}
            }
        }
        // A parameter reader reads its input 0 as data; any other op, all inputs.
        let data = if !nested && PARAMETER_READERS.contains(&op) { 1 } else { inputs.len() };
        reads.extend(inputs.into_iter().take(data));
    }
    Ok(())
}

/// An initializer's name (bytes of the file) and dims.
type NameAndDims<'a> = (&'a [u8], Vec<usize>);

/// The name and dims of the initializer at `range` when it is float32 with more than
/// `min_elements` elements or not in `read_as_data`.
fn promotable_float<'a>(
    bytes: &'a [u8],
    range: std::ops::Range<usize>,
    min_elements: usize,
    read_as_data: &std::collections::HashSet<&[u8]>,
) -> Result<Option<NameAndDims<'a>>, WireError> {
    let (mut name, mut dims, mut data_type) = (None, vec![], 0u64);
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, _, payload) = r.field()?;
        match (number, wire) {
            (TENSOR_NAME, LEN) => name = Some(&bytes[payload]),
            (TENSOR_DATA_TYPE, 0) => data_type = Reader { b: bytes, pos: payload.start, end: payload.end }.varint()?,
            (TENSOR_DIMS, 0) => dims.push(Reader { b: bytes, pos: payload.start, end: payload.end }.varint()?),
            (TENSOR_DIMS, LEN) => {
                let mut p = Reader { b: bytes, pos: payload.start, end: payload.end };
                while !p.done() {
                    dims.push(p.varint()?);
                }
            }
            _ => {}
        }
    }
    // Negative or huge dims (as u64) fail the conversion or the size test: such a
    // tensor is left to the engine, which reports it.
    let dims: Option<Vec<usize>> = dims.iter().map(|&d| usize::try_from(d).ok().filter(|&d| d <= i64::MAX as usize)).collect();
    let numel = dims.as_ref().and_then(|d| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b)));
    Ok(match (name, dims, numel) {
        (Some(name), Some(dims), Some(n)) if data_type == FLOAT && (n > min_elements || !read_as_data.contains(name)) => Some((name, dims)),
        _ => None,
    })
}

/// A `ValueInfoProto` declaring `name` as a float32 tensor of `dims`.
fn value_info(name: &[u8], dims: &[usize]) -> Vec<u8> {
    let mut shape = vec![];
    for &d in dims {
        let mut dim = vec![];
        put_varint(&mut dim, 1 << 3); // Dimension.dim_value, varint
        put_varint(&mut dim, d as u64);
        put_len_key(&mut shape, 1, dim.len()); // TensorShapeProto.dim
        shape.extend_from_slice(&dim);
    }
    let mut tensor = vec![];
    put_varint(&mut tensor, 1 << 3); // TypeProto.Tensor.elem_type, varint
    put_varint(&mut tensor, FLOAT);
    put_len_key(&mut tensor, 2, shape.len()); // TypeProto.Tensor.shape
    tensor.extend_from_slice(&shape);
    let mut ty = vec![];
    put_len_key(&mut ty, 1, tensor.len()); // TypeProto.tensor_type
    ty.extend_from_slice(&tensor);
    let mut v = vec![];
    put_len_key(&mut v, 1, name.len()); // ValueInfoProto.name
    v.extend_from_slice(name);
    put_len_key(&mut v, 2, ty.len()); // ValueInfoProto.type
    v.extend_from_slice(&ty);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

    fn tensor(name: &str, dims: &[i64], data_type: i32) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        t.data_type = data_type;
        t.raw_data = vec![0u8; 4 * dims.iter().product::<i64>() as usize];
        t
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n
    }

    #[test]
    fn float_weights_that_cannot_reach_a_folded_constant_become_inputs_of_their_shape() {
        let mut g = GraphProto::new();
        g.name = "g".into();
        for (name, typed) in [("x", true), ("old", false), ("typed", true)] {
            let mut v = ValueInfoProto::new();
            v.name = name.into();
            if typed {
                v.type_.mut_or_insert_default().mut_tensor_type().elem_type = 1;
            }
            g.input.push(v);
        }
        g.node.push(node("Conv", &["x", "big", "convw"]));
        g.node.push(node("Mul", &["x", "small"]));
        g.node.push(node("Sigmoid", &["gate"]));
        g.node.push(node("Gemm", &["x", "old", "convw"]));
        g.node.push(node("Conv", &["x0", "big"]));
        g.node.push(node("MatMul", &["x", "typed"]));
        g.node.push(node("Conv", &["x", "inner"]));
        // An If whose body reads `inner` (implicitly, from the outer scope).
        let mut body = GraphProto::new();
        body.node.push(node("Add", &["x", "inner"]));
        let mut attr = onnx_protobuf::AttributeProto::new();
        attr.name = "then_branch".into();
        attr.g = Some(body).into();
        let mut branch = node("If", &["x"]);
        branch.attribute.push(attr);
        g.node.push(branch);
        g.initializer.push(tensor("big", &[8, 4, 3, 3], 1)); // large: promoted
        g.initializer.push(tensor("small", &[4], 1)); // small, read as data: kept
        g.initializer.push(tensor("ints", &[300], 7)); // not float: kept
        g.initializer.push(tensor("old", &[10, 10], 1)); // declared without a type: kept
        g.initializer.push(tensor("gate", &[50], 1)); // small, read as data: kept
        g.initializer.push(tensor("convw", &[2, 2], 1)); // small, only a parameter: promoted
        g.initializer.push(tensor("x0", &[5], 1)); // small, a conv's data input: kept
        g.initializer.push(tensor("typed", &[200], 1)); // declared with a type: promoted
        g.initializer.push(tensor("inner", &[3], 1)); // read inside a subgraph: kept
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.graph = Some(g).into();
        let bytes = m.write_to_bytes().unwrap();
        let (view, promoted) = shape_analysis_view(&bytes, 99).unwrap();
        let v = ModelProto::parse_from_bytes(&view).unwrap();
        let g = v.graph.as_ref().unwrap();
        assert_eq!(v.ir_version, 8);
        assert_eq!(g.node.len(), 8);
        let kept: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(kept, ["small", "ints", "old", "gate", "x0", "inner"]);
        assert_eq!(g.initializer[0].raw_data.len(), 16, "kept initializers keep their data");
        assert_eq!(
            promoted.iter().map(|p| (p.name.as_str(), p.shape.clone())).collect::<Vec<_>>(),
            [("big", vec![8, 4, 3, 3]), ("convw", vec![2, 2]), ("typed", vec![200])]
        );
        // "typed" was declared already: not declared twice.
        let inputs: Vec<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["x", "old", "typed", "big", "convw"]);
        let t = g.input[3].type_.tensor_type();
        assert_eq!(t.elem_type, 1);
        assert_eq!(t.shape.dim.iter().map(|d| d.dim_value()).collect::<Vec<_>>(), [8, 4, 3, 3]);
    }

    #[test]
    fn a_truncated_model_is_an_error_not_a_panic() {
        let mut g = GraphProto::new();
        g.initializer.push(tensor("big", &[64, 64], 1));
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        let bytes = m.write_to_bytes().unwrap();
        for cut in 1..bytes.len() {
            let _ = shape_analysis_view(&bytes[..cut], 10);
        }
        assert!(shape_analysis_view(&bytes[..bytes.len() - 1], 10).is_err());
    }
}
