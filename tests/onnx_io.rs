//! What the ONNX writer keeps and how the reader decodes: dtypes, external data,
//! graph interface, initializers written once, topological order.

use std::collections::BTreeSet;
use std::path::Path;

use onnx_protobuf::{Message, ModelProto};
use repfuse::io::onnx::tensor::{decode, encode, ExternalData, FloatType};
use repfuse::io::onnx::{onnx_bytes, read_onnx};
use repfuse::{fuse, FuseOptions};

mod common;
use common::fixture;

#[test]
fn float16_and_bfloat16_round_trip_at_their_precision() {
    let data: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.173).collect();
    let mut ext = ExternalData::new(Path::new("x.onnx"));
    for (ft, rel) in [(FloatType::F32, 0.0), (FloatType::F16, 1.0 / 1024.0), (FloatType::BF16, 1.0 / 128.0)] {
        let t = encode("w", &[4, 16], &data, ft);
        let (ft2, shape, back) = decode(&t, &mut ext).unwrap();
        assert_eq!((ft2, shape), (ft, vec![4, 16]));
        for (a, b) in data.iter().zip(&back) {
            // Round to nearest: half an ulp of the format's mantissa.
            assert!((a - b).abs() <= a.abs() * rel, "{:?}: {} -> {}", ft, a, b);
        }
    }
}

#[test]
fn external_data_reads_the_same_weights_as_inline() {
    let inline = read_onnx(&fixture("v02_opset13_dbb")).unwrap();
    let external = read_onnx(&fixture("v03_external_data_dbb")).unwrap();
    assert_eq!(inline.weights.len(), external.weights.len());
    for (name, t) in inline.weights.iter() {
        let e = external.weights.get(name).unwrap();
        assert_eq!(t.shape(), e.shape(), "{}", name);
        // The same export's bytes, inline or external: equal bit for bit.
        let bits = |x: &repfuse::Tensor| x.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(t), bits(e), "{}: values differ between inline and external data", name);
    }
    let f = fuse(&external.graph, &FuseOptions::default()).unwrap();
    assert_eq!(f.graph.count("Conv"), 1);
}

#[test]
fn written_model_keeps_the_interface_and_writes_initializers_once_in_order() {
    for case in ["z14_dbb_block", "z16_conv1x1_fc_parallel", "v06_fp16_repvgg_block", "v01_opset11_repvgg_block"] {
        let m = read_onnx(&fixture(case)).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let w = f.weights_cpu(&m.weights).unwrap();
        let src = ModelProto::parse_from_bytes(&std::fs::read(fixture(case)).unwrap()).unwrap();
        let out = ModelProto::parse_from_bytes(&onnx_bytes(Some(&m), &f.graph, &w).unwrap()).unwrap();
        let (sg, og) = (src.graph.as_ref().unwrap(), out.graph.as_ref().unwrap());
        assert_eq!(src.opset_import, out.opset_import, "{}: opset", case);
        assert_eq!(src.producer_name, out.producer_name, "{}", case);
        assert_eq!(sg.input, og.input, "{}: graph inputs", case);
        assert_eq!(sg.output, og.output, "{}: graph outputs", case);
        let names: Vec<&String> = og.initializer.iter().map(|t| &t.name).collect();
        let unique: BTreeSet<&String> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "{}: an initializer written twice", case);
        // Every float initializer keeps the model's float type (fp16 stays fp16).
        let want = sg.initializer.iter().find(|t| t.data_type == 1 || t.data_type == 10).map(|t| t.data_type).unwrap();
        assert!(og.initializer.iter().filter(|t| t.data_type == 1 || t.data_type == 10).all(|t| t.data_type == want), "{}: dtype changed", case);
        // Topological: every node input is a graph input, an initializer or an earlier output.
        let mut known: BTreeSet<String> = og.input.iter().map(|i| i.name.clone()).chain(og.initializer.iter().map(|t| t.name.clone())).collect();
        for n in &og.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                assert!(known.contains(i), "{}: node {} reads {} before it exists", case, n.name, i);
            }
            known.extend(n.output.iter().cloned());
        }
    }
}

#[test]
fn large_models_are_written_with_external_data_and_read_back_identically() {
    let m = read_onnx(&fixture("z14_dbb_block")).unwrap();
    let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
    let w = f.weights_cpu(&m.weights).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy.onnx");
    // Threshold 0: every initializer goes to deploy.onnx.data.
    repfuse::io::onnx::write_onnx_with(Some(&m), &f.graph, &w, &out, 0).unwrap();
    assert!(dir.path().join("deploy.onnx.data").exists());
    let back = read_onnx(&out).unwrap();
    for (name, t) in w.iter() {
        assert_eq!(back.weights.get(name).unwrap().data(), t.data(), "{}", name);
    }
}

/// The writer streams the weights after the graph's other fields and the reader
/// decodes them from the mapped file; both must agree with protobuf itself: the
/// streamed bytes parse to a model protobuf re-encodes in its own order, and reading
/// either gives the same graph and the same weights, bit for bit.
#[test]
fn streamed_model_parses_like_protobufs_own_encoding() {
    let bits = |w: &repfuse::Weights| {
        w.iter().map(|(k, t)| (k.clone(), t.shape().to_vec(), t.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>())).collect::<Vec<_>>()
    };
    for case in common::fixture_cases().iter().map(|c| c.join("train.onnx")) {
        let m = read_onnx(&case).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let w = f.weights_cpu(&m.weights).unwrap();
        let streamed = onnx_bytes(Some(&m), &f.graph, &w).unwrap();
        let canonical = ModelProto::parse_from_bytes(&streamed).unwrap().write_to_bytes().unwrap();
        assert_eq!(streamed.len(), canonical.len(), "{}: streamed sizes disagree with protobuf's", case.display());
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
        std::fs::write(&a, &streamed).unwrap();
        std::fs::write(&b, &canonical).unwrap();
        let (ra, rb) = (read_onnx(&a).unwrap(), read_onnx(&b).unwrap());
        assert_eq!(ra.graph, rb.graph, "{}", case.display());
        assert_eq!(bits(&ra.weights), bits(&rb.weights), "{}", case.display());
        assert_eq!(bits(&ra.weights), bits(&repfuse::io::onnx::read_onnx_bytes(&a, &streamed).unwrap().weights));
        // What was computed is what was written (rounded to the file's float type).
        for (k, t) in w.iter().filter(|(k, _)| ra.weights.contains(k)) {
            let back = ra.weights.get(k).unwrap();
            let ft = m.dtypes_of(k);
            assert!(t.data().iter().zip(back.data()).all(|(x, y)| ft.round(*x).to_bits() == y.to_bits()), "{}: `{}` changed in writing", case.display(), k);
        }
    }
}
