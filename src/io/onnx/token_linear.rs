//! Token-wise linear layers written back the way PyTorch writes them. The reader turns
//! LeViT's `MatMul(x, W) -> Flatten -> BatchNormalization` on `[B, N, C]` tokens into
//! `Flatten -> Linear -> BatchNormalization` so the batch norm folds (`matmul.rs`);
//! after fusion the chain reads `Flatten -> Linear -> Reshape` back to `[B, N, O]`,
//! three nodes (Flatten, Gemm, Reshape) where PyTorch's deploy form has `MatMul + Add`.
//! When the flatten merges every axis but the last and the reshape restores exactly
//! those axes, the three compute `x W^T + b` on the tokens, and are written as that
//! MatMul (reading a transposed copy of the weight, a new initializer) and Add.

use onnx_protobuf::NodeProto;

use super::attrs::node_proto;
use crate::graph::{Graph, GraphIndex, Op, Shapes};

/// One `Flatten -> Linear -> Reshape` chain written as `MatMul (+ Add)`.
pub(super) struct TokenLinear<'g> {
    /// The flatten and reshape nodes, not written.
    pub flatten: &'g str,
    pub reshape: &'g str,
    /// The Linear node, written as the MatMul (its name) and the Add.
    pub linear: &'g str,
    x: &'g str,
    product: &'g str,
    out: &'g str,
    bias: Option<&'g str>,
    /// The Linear's `[O, I]` weight, and the name of its `[I, O]` transpose.
    pub weight: &'g str,
    pub transposed: String,
}

impl TokenLinear<'_> {
    /// The ONNX nodes written in place of the chain.
    pub fn protos(&self) -> Vec<NodeProto> {
        let Some(bias) = self.bias else {
            return vec![node_proto(self.linear, "MatMul", vec![self.x.into(), self.transposed.clone()], vec![self.out.into()])];
        };
        vec![
            node_proto(self.linear, "MatMul", vec![self.x.into(), self.transposed.clone()], vec![self.product.into()]),
            node_proto(&format!("{}.bias", self.linear), "Add", vec![self.product.into(), bias.into()], vec![self.out.into()]),
        ]
    }
}

/// Every chain of `graph` that can be written as a token-wise MatMul: the flatten and
/// the Linear each read by the next node alone, the shapes known and matching.
pub(super) fn find<'g>(graph: &'g Graph, shapes: &Shapes) -> Vec<TokenLinear<'g>> {
    let index = GraphIndex::new(graph);
    let opaque = |i: usize, types: &[&str]| matches!(&graph.nodes[i].op, Op::Opaque(o) if types.contains(&o.op_type.as_str()));
    let mut found = vec![];
    for (li, l) in graph.nodes.iter().enumerate() {
        let Op::Linear(lin) = &l.op else { continue };
        let Some(fi) = l.inputs.first().and_then(|t| index.producer(t)) else { continue };
        let f = &graph.nodes[fi];
        if !opaque(fi, &["Flatten", "Reshape"]) || index.sole_consumer(&f.outputs[0]) != Some(li) {
            continue;
        }
        let Some(ri) = index.sole_consumer(&l.outputs[0]) else { continue };
        let r = &graph.nodes[ri];
        if !opaque(ri, &["Reshape"]) || r.inputs.first() != Some(&l.outputs[0]) || r.outputs.len() != 1 {
            continue;
        }
        let (Some(xs), Some(fs), Some(rs)) = (shapes.get(&f.inputs[0]), shapes.get(&f.outputs[0]), shapes.get(&r.outputs[0])) else { continue };
        // x: [d.., I] -> [prod(d), I] -> Linear -> [prod(d), O] -> [d.., O].
        let Some((&last, lead)) = xs.split_last() else { continue };
        let rows: usize = lead.iter().product();
        let mut restored = lead.to_vec();
        restored.push(lin.out_features);
        if lead.len() < 2 || last != lin.in_features || fs.as_slice() != [rows, last] || *rs != restored {
            continue;
        }
        let transposed = format!("{}.transposed", lin.weight);
        if graph.params.contains_key(&transposed) || index.producer(&transposed).is_some() {
            continue;
        }
        found.push(TokenLinear {
            flatten: &f.name,
            reshape: &r.name,
            linear: &l.name,
            x: &f.inputs[0],
            product: &l.outputs[0],
            out: &r.outputs[0],
            bias: lin.bias.as_deref(),
            weight: &lin.weight,
            transposed,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Linear, Node, Opaque};

    fn opaque(name: &str, op_type: &str, input: &str, output: &str) -> Node {
        let op = Op::Opaque(Opaque { op_type: op_type.into(), payload: vec![], shape_hint: None, why: None });
        Node { name: name.into(), op, inputs: vec![input.into()], outputs: vec![output.into()] }
    }

    /// x [1, 6, 8] -> Flatten -> [6, 8] -> Linear 8->12 -> [6, 12] -> Reshape -> `back`.
    fn chain(back: &[usize], extra_reader: bool) -> (Graph, Shapes) {
        let linear = Linear { weight: "w".into(), bias: Some("b".into()), in_features: 8, out_features: 12 };
        let mut g = Graph {
            nodes: vec![
                opaque("flat", "Flatten", "x", "f"),
                Node { name: "lin".into(), op: Op::Linear(linear), inputs: vec!["f".into()], outputs: vec!["p".into()] },
                opaque("back", "Reshape", "p", "y"),
            ],
            outputs: vec!["y".into()],
            ..Default::default()
        };
        if extra_reader {
            g.nodes.push(opaque("peek", "Relu", "p", "z"));
            g.outputs.push("z".into());
        }
        let shapes: Shapes =
            [("x", vec![1, 6, 8]), ("f", vec![6, 8]), ("p", vec![6, 12]), ("y", back.to_vec())].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        (g, shapes)
    }

    #[test]
    fn a_reshape_restoring_the_token_axes_is_written_as_matmul_and_add() {
        let (g, shapes) = chain(&[1, 6, 12], false);
        let found = find(&g, &shapes);
        assert_eq!(found.len(), 1);
        let protos = found[0].protos();
        let ops: Vec<&str> = protos.iter().map(|p| p.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Add"]);
        assert_eq!(protos[0].input, ["x", "w.transposed"]);
        assert_eq!(protos[1].input, ["p", "b"]);
        assert_eq!(protos[1].output, ["y"]);
    }

    #[test]
    fn other_reshapes_or_shared_products_keep_the_gemm() {
        for back in [&[6, 12][..], &[1, 72], &[6, 1, 12], &[1, 6, 4, 3]] {
            let (g, shapes) = chain(back, false);
            assert!(find(&g, &shapes).is_empty(), "{:?}", back);
        }
        let (g, shapes) = chain(&[1, 6, 12], true);
        assert!(find(&g, &shapes).is_empty(), "the Linear's output has another reader");
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        let t = crate::tensor::Tensor::from_parts(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).transposed_2d().unwrap();
        assert_eq!((t.shape(), t.data()), (&[3, 2][..], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0][..]));
    }
}
