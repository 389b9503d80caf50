//! IR -> ONNX. The written model keeps the source's graph inputs and outputs (names,
//! types), opset and metadata; initializers are written once, in the source's float
//! type; nodes come out in topological order; Opaque nodes are written back verbatim.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, NodeProto};

use super::attrs::node_proto;
use super::tensor::{float_bytes, header, write_floats, FloatType};
use super::wire;
use super::OnnxModel;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op};
use crate::weights::Weights;

/// The ONNX node(s) of `n` (see `OpDef::to_onnx`).
fn to_protos(n: &Node) -> Result<Vec<NodeProto>> {
    n.op.def().to_onnx(n)
}

/// What becomes of a node that is half of a lifted `a - b` (see `surviving_subs`).
enum Sub {
    /// The `neg(b)` stand-in: not written.
    Drop,
    /// The `a + neg(b)`: written as `Sub(a, b)`.
    Write(String),
}

/// The reader lifts `a - b` into `a + neg(b)` so branch differences merge like sums;
/// where that pair survives fusion unchanged (its `neg` read only by its `Add`), it
/// is written back as the one `Sub` it came from.
fn surviving_subs(graph: &Graph) -> std::collections::HashMap<&str, Sub> {
    let mut readers: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in graph.nodes.iter().flat_map(|n| &n.inputs).chain(&graph.outputs) {
        *readers.entry(t.as_str()).or_default() += 1;
    }
    let negs: std::collections::HashMap<&str, (&str, &str)> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::BatchNorm(b) => {
                let w = b.written_as.as_ref()?;
                let p = NodeProto::parse_from_bytes(&w.payload).ok()?;
                (p.op_type == "Neg" && readers.get(n.outputs[0].as_str()) == Some(&1)).then(|| (n.outputs[0].as_str(), (n.name.as_str(), n.inputs[0].as_str())))
            }
            _ => None,
        })
        .collect();
    let mut out = std::collections::HashMap::new();
    for n in &graph.nodes {
        if n.op == Op::Add && n.inputs.len() == 2 {
            if let Some((neg, b)) = negs.get(n.inputs[1].as_str()) {
                out.insert(n.name.as_str(), Sub::Write(b.to_string()));
                out.insert(*neg, Sub::Drop);
            }
        }
    }
    out
}

/// A model proto to write `graph` into: the source's when there is one (same inputs,
/// outputs, opset, metadata), else a fresh opset-17 model.
fn base_proto(src: Option<&OnnxModel>, graph: &Graph) -> ModelProto {
    if let Some(m) = src {
        let mut p = m.proto.clone();
        if let Some(g) = p.graph.as_mut() {
            g.node.clear();
            g.initializer.clear();
            g.value_info.clear();
        }
        return p;
    }
    use onnx_protobuf::{type_proto, GraphProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto};
    let vi = |name: &str, shape: Option<&[usize]>| {
        let mut tt = type_proto::Tensor::new();
        tt.elem_type = FloatType::F32.onnx() as i32;
        if let Some(shape) = shape {
            let mut sp = TensorShapeProto::new();
            sp.dim = shape
                .iter()
                .map(|&d| {
                    let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
                    dim.value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(d as i64));
                    dim
                })
                .collect();
            tt.shape = Some(sp).into();
        }
        let mut t = TypeProto::new();
        t.value = Some(type_proto::Value::TensorType(tt));
        let mut v = ValueInfoProto::new();
        v.name = name.to_string();
        v.type_ = Some(t).into();
        v
    };
    let shapes = crate::graph::infer_shapes(graph).unwrap_or_default();
    let mut g = GraphProto::new();
    g.name = "repfuse".into();
    g.input = graph.inputs.iter().map(|i| vi(&i.name, Some(&i.shape))).collect();
    g.output = graph.outputs.iter().map(|o| vi(o, shapes.get(o).map(Vec::as_slice))).collect();
    let mut p = ModelProto::new();
    p.ir_version = 8;
    p.producer_name = "repfuse".into();
    p.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut op = OperatorSetIdProto::new();
    // The lowest opset every op's ONNX form is in.
    op.version = graph.nodes.iter().map(|n| n.op.def().min_opset()).max().unwrap_or(17).max(17);
    p.opset_import = vec![op];
    p.graph = Some(g).into();
    p
}

/// Serialises `graph` with `weights` as ONNX bytes. `src` is the model it was read
/// from (None for graphs built in code).
pub fn onnx_bytes(src: Option<&OnnxModel>, graph: &Graph, weights: &Weights) -> Result<Vec<u8>> {
    let parts = build_parts(src, graph, weights)?;
    let mut out = Vec::with_capacity(parts.inline_bytes() + (1 << 16));
    parts.write(&mut out, Path::new("<memory>"), true)?;
    Ok(out)
}

/// An initializer's data, streamed after its header straight from the computed weights.
enum Payload<'a> {
    /// f32 values, written as the given float type.
    Floats(&'a [f32], FloatType),
    /// A 2-D tensor written transposed (a token-wise Linear's weight as MatMul reads
    /// it), as the given type: transposed block by block while it is written, not
    /// copied whole beforehand (LeViT-128S's linears are most of its 31 MB, and the
    /// copies had made the write the command's peak).
    Transposed(&'a crate::tensor::Tensor, FloatType),
    /// Already in the header (a non-float tensor carried as read).
    InHeader,
}

impl Payload<'_> {
    /// Bytes of values after the header.
    fn len(&self) -> usize {
        match self {
            Payload::Floats(d, ft) => float_bytes(d.len(), *ft),
            Payload::Transposed(t, ft) => float_bytes(t.numel(), *ft),
            Payload::InHeader => 0,
        }
    }

    /// Writes the values (nothing for `InHeader`).
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        match self {
            Payload::Floats(d, ft) => write_floats(w, d, *ft),
            Payload::Transposed(t, ft) => {
                let n = t.numel();
                let mut block = Vec::with_capacity(n.min(TRANSPOSE_BLOCK));
                for start in (0..n).step_by(TRANSPOSE_BLOCK) {
                    block.clear();
                    // 2-D by construction (`build_parts` checked the shape).
                    block.extend(t.transposed_2d_values(start..(start + TRANSPOSE_BLOCK).min(n)).into_iter().flatten());
                    write_floats(w, &block, *ft)?;
                }
                Ok(())
            }
            Payload::InHeader => Ok(()),
        }
    }
}

/// Values a transposed payload is written in at a time.
const TRANSPOSE_BLOCK: usize = 1 << 14;

/// The model to write, checked and split the way it is streamed: the model without
/// its graph, the graph without its initializers, the initializers as headers (name,
/// dims, type), and their data in `payloads` (same order).
struct Parts<'a> {
    head: ModelProto,
    graph: onnx_protobuf::GraphProto,
    inits: Vec<onnx_protobuf::TensorProto>,
    payloads: Vec<Payload<'a>>,
}

impl Parts<'_> {
    fn inline_bytes(&self) -> usize {
        self.payloads.iter().map(Payload::len).sum()
    }

    /// Streams the model (see `wire`): the model's other fields, then the graph field
    /// with its nodes, then each initializer's header and, with `inline_data`, its
    /// data (without, the headers point at external data). The sizes protobuf needs up
    /// front come from the headers and the payload lengths.
    fn write(&self, w: &mut dyn std::io::Write, path: &Path, inline_data: bool) -> Result<()> {
        let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        let (graph_field, init_field, raw_field) = wire::FIELDS;
        let head = ser(&self.head)?;
        let graph_head = ser(&self.graph)?;
        let headers: Vec<Vec<u8>> = self.inits.iter().map(ser).collect::<Result<_>>()?;
        let data_len = |p: &Payload| if inline_data { p.len() } else { 0 };
        let body = |h: &Vec<u8>, p: &Payload| h.len() + if data_len(p) > 0 { wire::len_key_size(raw_field, data_len(p)) + data_len(p) } else { 0 };
        let graph_len =
            graph_head.len() + headers.iter().zip(&self.payloads).map(|(h, p)| wire::len_key_size(init_field, body(h, p)) + body(h, p)).sum::<usize>();
        let mut key = Vec::with_capacity(16);
        w.write_all(&head).map_err(io)?;
        wire::put_len_key(&mut key, graph_field, graph_len);
        w.write_all(&key).map_err(io)?;
        w.write_all(&graph_head).map_err(io)?;
        for (h, p) in headers.iter().zip(&self.payloads) {
            key.clear();
            wire::put_len_key(&mut key, init_field, body(h, p));
            w.write_all(&key).map_err(io)?;
            w.write_all(h).map_err(io)?;
            if data_len(p) > 0 {
                key.clear();
                wire::put_len_key(&mut key, raw_field, p.len());
                w.write_all(&key).map_err(io)?;
                p.write_to(w).map_err(io)?;
            }
        }
        Ok(())
    }
}

fn ser<M: Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(|e| Error::Graph(format!("serialising ONNX: {}", e)))
}

fn build_parts<'a>(src: Option<&OnnxModel>, graph: &Graph, weights: &'a Weights) -> Result<Parts<'a>> {
    let mut proto = base_proto(src, graph);
    let default_type = src.map_or(FloatType::F32, |m| m.float_type);
    let g = proto.graph.as_mut().expect("base_proto makes a graph");
    let subs = surviving_subs(graph);
    let shapes = crate::graph::infer_shapes_seeded(graph, Default::default()).unwrap_or_default();
    let tokens = super::token_linear::find(graph, &shapes);
    let token_at: std::collections::HashMap<&str, &super::token_linear::TokenLinear> = tokens.iter().map(|t| (t.linear, t)).collect();
    let folded: BTreeSet<&str> = tokens.iter().flat_map(|t| [t.flatten, t.reshape]).collect();
    for n in &graph.nodes {
        if let Some(t) = token_at.get(n.name.as_str()) {
            g.node.extend(t.protos());
            continue;
        }
        if folded.contains(n.name.as_str()) {
            continue;
        }
        match subs.get(n.name.as_str()) {
            Some(Sub::Drop) => {}
            Some(Sub::Write(b)) => g.node.push(node_proto(&n.name, "Sub", vec![n.inputs[0].clone(), b.clone()], n.outputs.clone())),
            None => g.node.extend(to_protos(n)?),
        }
    }
    drop_orphans(g, graph);
    // Only what the written nodes read (a stand-in batch norm written back as its
    // source node reads the source's constant, not the stand-in's parameters).
    let read: BTreeSet<String> = g.node.iter().flat_map(|n| n.input.iter().cloned()).chain(g.output.iter().map(|o| o.name.clone())).collect();
    let to_write: Vec<(&String, &Vec<usize>)> = graph.params.iter().filter(|(k, _)| read.contains(*k) || subgraph_reads(g, k)).collect();
    let mut written = BTreeSet::new();
    let mut payloads = Vec::with_capacity(to_write.len());
    for (name, shape) in to_write {
        match src.and_then(|m| m.passthrough.get(name)) {
            Some(t) => {
                g.initializer.push(t.clone());
                payloads.push(Payload::InHeader);
            }
            None => {
                let w = weights.get(name)?;
                if w.shape() != shape.as_slice() {
                    return Err(Error::tensor(name, format!("weights hold {:?}, graph expects {:?}", w.shape(), shape)));
                }
                let ft = src.and_then(|m| m.dtypes.get(name)).copied().unwrap_or(default_type);
                g.initializer.push(header(name, shape, ft));
                payloads.push(Payload::Floats(w.data(), ft));
            }
        }
        written.insert(name.clone());
    }
    for t in &tokens {
        if !written.insert(t.transposed.clone()) {
            continue; // a weight two token-wise layers share: one transposed copy
        }
        let w = weights.get(t.weight)?;
        let &[r, c] = w.shape() else { return Err(Error::tensor(t.weight, format!("a Linear weight of shape {:?}", w.shape()))) };
        let ft = src.and_then(|m| m.dtypes.get(t.weight)).copied().unwrap_or(default_type);
        g.initializer.push(header(&t.transposed, &[c, r], ft));
        payloads.push(Payload::Transposed(w, ft));
    }
    // Old-IR models (and `keep_initializers_as_inputs=True`) list initializers as
    // graph inputs; drop those not written. Asked of the source file's initializers,
    // not of the graph read from it: the reader drops initializers that only feed
    // what it folded (LeViT's attention-bias tables), and such an input left declared
    // would be one ONNX Runtime requires a value for.
    if let Some(m) = src {
        let was_init: BTreeSet<&str> =
            m.proto.graph.iter().flat_map(|sg| &sg.initializer).map(|t| t.name.as_str()).chain(m.graph.params.keys().map(String::as_str)).collect();
        g.input.retain(|i| !was_init.contains(i.name.as_str()) || written.contains(&i.name));
    }
    super::check::check_written_model(&proto)?;
    let mut graph = proto.graph.take().expect("base_proto makes a graph");
    let inits = std::mem::take(&mut graph.initializer);
    Ok(Parts { head: proto, graph, inits, payloads })
}

/// Drops the written nodes that only fed nodes the writer folded away: every output
/// is read in `graph` but by no written node (the shape a token-wise Reshape read,
/// once the chain is written as MatMul + Add), repeatedly. A node the source model
/// itself left unread is not ours to drop and stays.
fn drop_orphans(g: &mut onnx_protobuf::GraphProto, graph: &Graph) {
    let read_in_ir: BTreeSet<&str> = graph.nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
    loop {
        let read: BTreeSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).chain(g.output.iter().map(|o| o.name.as_str())).collect();
        let orphan =
            |n: &NodeProto| n.output.iter().all(|o| o.is_empty() || (read_in_ir.contains(o.as_str()) && !read.contains(o.as_str()) && !subgraph_reads(g, o)));
        let keep: Vec<bool> = g.node.iter().map(|n| !orphan(n)).collect();
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut k = keep.into_iter();
        g.node.retain(|_| k.next().unwrap_or(true));
    }
}

/// Whether a subgraph (If/Loop/Scan body) of any node reads `name`.
fn subgraph_reads(g: &onnx_protobuf::GraphProto, name: &str) -> bool {
    fn reads(g: &onnx_protobuf::GraphProto, name: &str) -> bool {
        g.node.iter().any(|n| n.input.iter().any(|i| i == name) || n.attribute.iter().any(|a| a.g.iter().chain(a.graphs.iter()).any(|sg| reads(sg, name))))
    }
    // The main graph's own nodes are counted by the caller; here only subgraphs.
    g.node.iter().any(|n| n.attribute.iter().any(|a| a.g.iter().chain(a.graphs.iter()).any(|sg| reads(sg, name))))
}

/// Initializer bytes above which `write_onnx` moves weights to an external data file
/// (protobuf cannot hold a message over 2 GiB).
pub const EXTERNAL_DATA_THRESHOLD: usize = 1536 << 20;

/// Writes `graph` + `weights` as an ONNX file, atomically, streaming the weights
/// from memory into the file. Models whose initializers pass
/// `EXTERNAL_DATA_THRESHOLD` keep their weights in `<file>.data` beside it.
pub fn write_onnx(src: Option<&OnnxModel>, graph: &Graph, weights: &Weights, path: &Path) -> Result<()> {
    write_onnx_with(src, graph, weights, path, EXTERNAL_DATA_THRESHOLD)
}

/// `write_onnx` with the external-data threshold given (0: always external).
pub fn write_onnx_with(src: Option<&OnnxModel>, graph: &Graph, weights: &Weights, path: &Path, external_threshold: usize) -> Result<()> {
    use onnx_protobuf::tensor_proto::DataLocation;
    use onnx_protobuf::StringStringEntryProto;
    let mut parts = build_parts(src, graph, weights)?;
    if parts.inline_bytes() <= external_threshold {
        let model = |w: &mut dyn std::io::Write| parts.write(w, path, true);
        return crate::io::atomic::write_atomic_streams(&[(path, &model)]);
    }
    let file_name = format!("{}.data", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into()));
    // 64-byte aligned offsets, as onnx's own external-data writer uses for mmap.
    let mut offsets = Vec::with_capacity(parts.payloads.len());
    let mut end = 0usize;
    for (t, p) in parts.inits.iter_mut().zip(&parts.payloads) {
        if p.len() == 0 {
            offsets.push(None);
            continue;
        }
        let offset = end.next_multiple_of(64);
        let entry = |k: &str, v: String| {
            let mut e = StringStringEntryProto::new();
            e.key = k.to_string();
            e.value = v;
            e
        };
        t.external_data = vec![entry("location", file_name.clone()), entry("offset", offset.to_string()), entry("length", p.len().to_string())];
        t.data_location = DataLocation::EXTERNAL.into();
        offsets.push(Some(offset));
        end = offset + p.len();
    }
    let data_path = path.with_file_name(&file_name);
    let data = |w: &mut dyn std::io::Write| -> Result<()> {
        let io = |e: std::io::Error| Error::Io { path: data_path.clone(), source: e };
        let mut at = 0usize;
        for (p, off) in parts.payloads.iter().zip(&offsets) {
            if let Some(off) = off {
                w.write_all(&vec![0u8; off - at]).map_err(io)?;
                p.write_to(w).map_err(io)?;
                at = off + p.len();
            }
        }
        Ok(())
    };
    // The model file itself holds every header and no float data.
    let model = |w: &mut dyn std::io::Write| parts.write(w, path, false);
    crate::io::atomic::write_atomic_streams(&[(&data_path, &data), (path, &model)])
}

/// Count of nodes per ONNX op type in an ONNX file's bytes (for reports and tests).
pub fn op_counts(bytes: &[u8]) -> Result<BTreeMap<String, usize>> {
    let p = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::Graph(format!("not ONNX: {}", e)))?;
    let mut h = BTreeMap::new();
    for n in &p.graph.as_ref().map(|g| g.node.clone()).unwrap_or_default() {
        *h.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// A transposed payload, written block by block, must give the bytes of the
    /// whole transposed tensor: across block ends (a size that is not a multiple of
    /// the block) and in every float type.
    #[test]
    fn a_transposed_payload_writes_the_transposed_tensor_across_block_ends() {
        let (r, c) = (131, 127); // 16637 values: one full block and a partial one
        assert!(r * c > TRANSPOSE_BLOCK && (r * c) % TRANSPOSE_BLOCK != 0);
        let w = Tensor::from_parts(vec![r, c], (0..r * c).map(|k| k as f32 * 0.25 - 7.0).collect());
        let whole = w.transposed_2d().unwrap();
        assert_eq!(whole.shape(), &[c, r]);
        for (i, j) in [(0, 0), (0, c - 1), (r - 1, 0), (57, 93), (r - 1, c - 1)] {
            assert_eq!(whole.data()[j * r + i], w.data()[i * c + j], "element ({i}, {j})");
        }
        for ft in [FloatType::F32, FloatType::F16, FloatType::BF16] {
            let (mut streamed, mut expected) = (vec![], vec![]);
            let p = Payload::Transposed(&w, ft);
            p.write_to(&mut streamed).unwrap();
            write_floats(&mut expected, whole.data(), ft).unwrap();
            assert_eq!(streamed.len(), p.len(), "{ft:?}: payload length");
            assert!(streamed == expected, "{ft:?}: streamed bytes differ from the whole transpose");
        }
    }
}
