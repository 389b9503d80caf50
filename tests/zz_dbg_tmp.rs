use onnx_protobuf::{Message, ModelProto};
#[test]
fn dbg() {
    let mut m = ModelProto::parse_from_bytes(&std::fs::read("../shared/fixtures/z01_conv_bn/train.onnx").unwrap()).unwrap();
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name == "0.branches.0.conv.weight").unwrap();
    t.data_type = 3;
    t.raw_data = vec![1u8; 1152];
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.onnx");
    std::fs::write(&p, m.write_to_bytes().unwrap()).unwrap();
    let model = repfuse::io::onnx::read_onnx(&p).unwrap();
    for n in &model.graph.nodes {
        eprintln!("{} {:?} {:?}", n.name, n.op.kind(), n.inputs);
    }
    let f = repfuse::fuse(&model.graph, &Default::default()).unwrap();
    eprintln!("{:#?}", f.plan);
    for n in &f.graph.nodes {
        eprintln!("{} {:?} {:?}", n.name, n.op, n.inputs);
    }
    eprintln!("{:?}", f.graph.params);
}
