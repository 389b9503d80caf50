//! The last gate before a model is written: the graph must be one that ONNX Runtime
//! loads. Every node input is defined before it is read (a graph input, an
//! initializer, or an earlier node's output; subgraphs may read their enclosing
//! scopes), every tensor is defined once, every initializer is used, every graph
//! output is produced, node names are unique, no node reads two float types where
//! ONNX takes one (`elem_types.rs`). A violation is a repfuse bug, reported as an
//! error naming the node and tensor, and nothing is written.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{GraphProto, ModelProto};

use crate::error::{Error, Result};

/// Checks the main graph of `m` (and every subgraph inside its nodes' attributes).
pub fn check_written_model(m: &ModelProto) -> Result<()> {
    let g = m.graph.as_ref().ok_or_else(|| Error::Graph("internal error: the model to write has no graph".into()))?;
    check_graph(g, &HashSet::new(), "graph")?;
    let used: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).chain(g.output.iter().map(|o| o.name.as_str())).collect();
    let mut sub_reads = HashSet::new();
    for n in &g.node {
        for a in &n.attribute {
            for sg in a.g.iter().chain(a.graphs.iter()) {
                outer_reads(sg, &mut sub_reads);
            }
        }
    }
    if let Some(t) = g.initializer.iter().find(|t| !used.contains(t.name.as_str()) && !sub_reads.contains(&t.name)) {
        return Err(internal(format!("initializer `{}` is written but no node reads it", t.name)));
    }
    if let Some((node, op, a, ta, b, tb)) = super::elem_types::first_type_clash(g) {
        return Err(Error::Graph(format!(
            "refusing to write an invalid model: node `{}` ({}) reads `{}` as {} and `{}` as {}, where ONNX takes one element type (ONNX Runtime would refuse the file)",
            node,
            op,
            a,
            type_name(ta),
            b,
            type_name(tb)
        )));
    }
    check_bfloat16_ops(m, g)
}

/// An ONNX element type, named.
fn type_name(t: i32) -> String {
    match t {
        1 => "float32".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        16 => "bfloat16".into(),
        7 => "int64".into(),
        _ => format!("element type {}", t),
    }
}

/// Ops whose type constraints take bfloat16 only from opset 22 on.
const BFLOAT16_FROM_OPSET_22: [&str; 6] = ["Conv", "ConvTranspose", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool"];

/// A bfloat16 conv in a model below opset 22 is not valid ONNX: ONNX Runtime refuses
/// to load it. PyTorch's exporter writes such files (a `.bfloat16()` model exports
/// at opset 20), so the source is invalid the same way; this is the source's defect,
/// not repfuse's, and the message says how to get a file that loads. Found by the
/// weights a node reads (a conv's kernel), which is how every bfloat16 ConvNet has it.
fn check_bfloat16_ops(m: &ModelProto, g: &GraphProto) -> Result<()> {
    let opset = super::onnx_opset(m);
    if opset >= 22 {
        return Ok(());
    }
    let bf16 = onnx_protobuf::tensor_proto::DataType::BFLOAT16 as i32;
    let half: HashSet<&str> = g.initializer.iter().filter(|t| t.data_type == bf16).map(|t| t.name.as_str()).collect();
    let bad = g.node.iter().find(|n| {
        super::is_onnx_domain(&n.domain) && BFLOAT16_FROM_OPSET_22.contains(&n.op_type.as_str()) && n.input.iter().any(|i| half.contains(i.as_str()))
    });
    match bad {
        None => Ok(()),
        Some(n) => Err(Error::unsupported(
            &n.name,
            format!(
                "`{}` computes in bfloat16, which ONNX allows from opset 22 on; the model declares opset {}, so ONNX Runtime would refuse the file (the source file has the same defect). Write float32 (`--f32`), or export the model in float32 or float16",
                n.op_type, opset
            ),
        )),
    }
}

fn internal(why: String) -> Error {
    Error::Graph(format!("internal error, refusing to write an invalid model: {}", why))
}

/// Names a subgraph reads from its enclosing scopes (read but not defined inside).
fn outer_reads(g: &GraphProto, out: &mut HashSet<String>) {
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).chain(g.initializer.iter().map(|t| t.name.as_str())).collect();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty() && !defined.contains(i.as_str())) {
            out.insert(i.clone());
        }
        for a in &n.attribute {
            let mut inner = HashSet::new();
            for sg in a.g.iter().chain(a.graphs.iter()) {
                outer_reads(sg, &mut inner);
            }
            out.extend(inner.into_iter().filter(|i| !defined.contains(i.as_str())));
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    for o in g.output.iter().filter(|o| !defined.contains(o.name.as_str())) {
        out.insert(o.name.clone());
    }
}

fn check_graph(g: &GraphProto, outer: &HashSet<String>, scope: &str) -> Result<()> {
    let mut defined: HashMap<String, String> = HashMap::new();
    let define = |name: &str, by: String, defined: &mut HashMap<String, String>| -> Result<()> {
        if name.is_empty() {
            return Ok(());
        }
        if let Some(prev) = defined.insert(name.to_string(), by.clone()) {
            return Err(internal(format!("{}: tensor `{}` is defined twice ({} and {})", scope, name, prev, by)));
        }
        Ok(())
    };
    for i in &g.input {
        define(&i.name, "graph input".into(), &mut defined)?;
    }
    for t in &g.initializer {
        // Old IR versions list initializers among the graph inputs too.
        if defined.get(&t.name).map(String::as_str) == Some("graph input") {
            defined.insert(t.name.clone(), "initializer".into());
            continue;
        }
        define(&t.name, "initializer".into(), &mut defined)?;
    }
    let mut node_names = HashSet::new();
    for n in &g.node {
        if !n.name.is_empty() && !node_names.insert(n.name.as_str()) {
            return Err(internal(format!("{}: two nodes are named `{}`", scope, n.name)));
        }
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains_key(i) && !outer.contains(i) {
                return Err(internal(format!(
                    "{}: node `{}` ({}) reads `{}`, which is not a graph input, an initializer or an earlier node's output",
                    scope, n.name, n.op_type, i
                )));
            }
        }
        for a in &n.attribute {
            for sg in a.g.iter().chain(a.graphs.iter()) {
                let visible: HashSet<String> = outer.iter().cloned().chain(defined.keys().cloned()).collect();
                check_graph(sg, &visible, &format!("{} > node `{}` attribute `{}`", scope, n.name, a.name))?;
            }
        }
        for o in &n.output {
            define(o, format!("node `{}`", n.name), &mut defined)?;
        }
    }
    for o in &g.output {
        if !defined.contains_key(&o.name) && !outer.contains(&o.name) {
            return Err(internal(format!("{}: output `{}` is not produced by any node", scope, o.name)));
        }
    }
    Ok(())
}
