//! Bad-input robustness: every case hands repfuse a broken, hostile or unusual model
//! (or an unwritable output path) and expects either a correct result or a clear
//! error whose text names the file and/or the node/tensor and the field. Nothing may
//! panic, and a failed run leaves no output file (or temp file) behind.
//!
//! The ONNX cases edit the PyTorch-exported fixtures in `tests/data/fixtures` with
//! onnx-protobuf and write the result into a fresh temp dir.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{AttributeProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto};
use repfuse::graph::Op;
use repfuse::io::onnx::{onnx_bytes, read_onnx, read_onnx_bytes, OnnxModel};
use repfuse::io::{load_model, save_model};
use repfuse::{fuse, Backend, FuseOptions, Fuser, Fusion, Weights};

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

mod common;
use common::{fixture, fixtures_dir as fixtures};

fn proto(case: &str) -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(fixture(case)).unwrap()).unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_proto(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.write_to_bytes().unwrap()).unwrap();
    p
}

fn graph_mut(m: &mut ModelProto) -> &mut onnx_protobuf::GraphProto {
    m.graph.as_mut().unwrap()
}

fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    graph_mut(m).initializer.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer `{}`", name))
}

/// The first node of `op_type`.
fn node<'a>(m: &'a mut ModelProto, op_type: &str) -> &'a mut NodeProto {
    graph_mut(m).node.iter_mut().find(|n| n.op_type == op_type).unwrap_or_else(|| panic!("no `{}` node", op_type))
}

fn attr<'a>(n: &'a mut NodeProto, name: &str) -> &'a mut AttributeProto {
    n.attribute.iter_mut().find(|a| a.name == name).unwrap_or_else(|| panic!("no attribute `{}`", name))
}

/// Sets element `i` of an f32 raw_data initializer.
fn set_f32(t: &mut TensorProto, i: usize, v: f32) {
    t.raw_data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

fn float_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = dims.to_vec();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn make_node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op_type.to_string();
    n.name = name.to_string();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

/// Runs `f`, turning a panic inside repfuse into a test failure that says so.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => panic!("{}: repfuse PANICKED: {}", what, panic_text(&p)),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "<non-string payload>".into())
}

/// The Display text of an expected error.
fn err<T>(what: &str, r: repfuse::Result<T>) -> String {
    match r {
        Ok(_) => panic!("{}: expected an error, got Ok", what),
        Err(e) => e.to_string(),
    }
}

fn assert_names(what: &str, msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{}: error text does not name `{}`:\n  {}", what, p, msg);
    }
}

/// read -> fuse -> CPU weights -> ONNX bytes, each stage's error as Display text.
struct Run {
    model: OnnxModel,
    fusion: Fusion,
    weights: Weights,
}

fn run_pipeline(path: &Path) -> Result<Run, String> {
    let model = read_onnx(path).map_err(|e| format!("read: {}", e))?;
    let fusion = fuse(&model.graph, &FuseOptions::default()).map_err(|e| format!("fuse: {}", e))?;
    let weights = fusion.weights_cpu(&model.weights).map_err(|e| format!("weights_cpu: {}", e))?;
    onnx_bytes(Some(&model), &fusion.graph, &weights).map_err(|e| format!("write: {}", e))?;
    Ok(Run { model, fusion, weights })
}

fn pipeline_err(what: &str, path: &Path) -> String {
    match no_panic(what, || run_pipeline(path)) {
        Ok(_) => panic!("{}: expected an error, but read/fuse/weights/write all succeeded", what),
        Err(e) => e,
    }
}

fn repfuse_bin(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repfuse")).args(args).env("REPFUSE_TEST", "1").output().expect("run repfuse")
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn assert_no_panic_output(what: &str, o: &Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{}: the binary panicked:\n{}", what, stderr);
    assert!(!stderr.contains("RUST_BACKTRACE"), "{}: the binary panicked:\n{}", what, stderr);
}

/// Files in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn assert_no_temp_files(what: &str, dir: &Path) {
    let left: Vec<String> = listing(dir).into_iter().filter(|n| n.starts_with(".repfuse-") || n.ends_with(".tmp")).collect();
    assert!(left.is_empty(), "{}: temp files left behind in {}: {:?}", what, dir.display(), left);
}

const Z01_CONV: &str = "/0/branches.0/conv/Conv";
const Z01_BN: &str = "/0/branches.0/bn/BatchNormalization";
const Z01_W: &str = "0.branches.0.conv.weight";
const Z01_GAMMA: &str = "0.branches.0.bn.weight";
const Z01_VAR: &str = "0.branches.0.bn.running_var";

// ---------------------------------------------------------------------------------
// whole-file damage: truncation, byte corruption, empty and non-ONNX files
// ---------------------------------------------------------------------------------

/// Top-level protobuf fields of `bytes`: (field number, start, payload start, end).
fn top_level_fields(bytes: &[u8]) -> Vec<(u64, usize, usize, usize)> {
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = vec![];
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let tag = varint(bytes, &mut i);
        let payload = match tag & 7 {
            0 => {
                varint(bytes, &mut i);
                i
            }
            1 => {
                i += 8;
                i
            }
            2 => {
                let len = varint(bytes, &mut i) as usize;
                let p = i;
                i += len;
                p
            }
            5 => {
                i += 4;
                i
            }
            w => panic!("wire type {} in a fixture", w),
        };
        out.push((tag >> 3, start, payload, i));
    }
    out
}

#[test]
fn truncated_onnx_is_a_clear_error_naming_the_file() {
    let bytes = std::fs::read(fixture("z13_repvgg_bn_branch")).unwrap();
    let fields = top_level_fields(&bytes);
    let graph = fields.iter().find(|f| f.0 == 7).unwrap();
    let opset = fields.iter().find(|f| f.0 == 8).unwrap();
    let dir = tmp();
    let n = bytes.len();
    // Besides arbitrary offsets: just after the graph's length prefix (the graph
    // message runs past the end of the file), inside the graph, and at the start of
    // and inside `opset_import` (the last field PyTorch writes).
    let cuts = [1, 2, 10, 100, graph.2, graph.2 + 1, n / 3, n / 2, graph.3 - 40, graph.3 - 1, opset.1, opset.2, n - 100, n - 2, n - 1];
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    cuts.dedup();
    let mut accepted = vec![];
    for cut in cuts {
        let path = dir.path().join(format!("cut_{}.onnx", cut));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let what = format!("truncated at {} of {} bytes", cut, n);
        match no_panic(&what, || read_onnx(&path)) {
            Ok(m) => accepted.push(format!(
                "{}: read as {} nodes, inputs {:?}, outputs {:?}, opset {}",
                what,
                m.graph.nodes.len(),
                m.graph.inputs.iter().map(|i| (&i.name, &i.shape)).collect::<Vec<_>>(),
                m.graph.outputs,
                m.opset()
            )),
            Err(e) => assert_names(&what, &e.to_string(), &[&path.display().to_string()]),
        }
    }
    assert!(accepted.is_empty(), "truncated files read without an error:\n{}", accepted.join("\n"));
}

#[test]
fn every_truncation_of_an_onnx_file_is_rejected() {
    let mut accepted = vec![];
    for case in ["z01_conv_bn", "z15_linear_bn1d"] {
        let bytes = std::fs::read(fixture(case)).unwrap();
        let path = PathBuf::from(format!("/nonexistent-dir/{}.onnx", case));
        for cut in 0..bytes.len() {
            let r = no_panic(&format!("{} cut at {}", case, cut), || read_onnx_bytes(&path, &bytes[..cut]));
            if let Ok(m) = r {
                accepted.push(format!(
                    "{} cut at {} of {}: {} nodes, {} outputs, opset {}",
                    case,
                    cut,
                    bytes.len(),
                    m.graph.nodes.len(),
                    m.graph.outputs.len(),
                    m.opset()
                ));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} truncated files read without an error, e.g.:\n{}",
        accepted.len(),
        accepted.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn truncated_external_data_file_is_a_clear_error() {
    let src = fixtures().join("v03_external_data_dbb");
    let dir = tmp();
    std::fs::copy(src.join("train.onnx"), dir.path().join("train.onnx")).unwrap();
    let data = std::fs::read(src.join("train.onnx.data")).unwrap();
    std::fs::write(dir.path().join("train.onnx.data"), &data[..data.len() - 10]).unwrap();
    let path = dir.path().join("train.onnx");
    let msg = err("truncated external data", no_panic("truncated external data", || read_onnx(&path)));
    // The last tensor in the data file is the one cut short.
    assert_names("truncated external data", &msg, &["0.branches.3.1.bn.running_var", "train.onnx.data"]);
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Corrupts `bytes` at many positions (one position per run, a seeded nonzero XOR
/// mask, sometimes a second byte nearby) and runs read -> fuse -> weights -> write on
/// each. Every run must return Ok or Err; an Err from reading must name the file.
fn corruption_sweep(case: &str, seeds: &[u64], step: usize) {
    corruption_sweep_file(case, &fixture(case), seeds, step)
}

fn corruption_sweep_file(case: &str, file: &Path, seeds: &[u64], step: usize) {
    let bytes = std::fs::read(file).unwrap();
    let path = PathBuf::from(format!("/nonexistent-dir/{}-corrupt.onnx", case));
    let mut panics = vec![];
    let mut unnamed = vec![];
    let (mut ok, mut errs) = (0usize, 0usize);
    for &seed in seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for pos in (seed as usize % step..bytes.len()).step_by(step) {
            let mut b = bytes.clone();
            let mask = (rng.next() % 255 + 1) as u8;
            b[pos] ^= mask;
            let second = rng.next();
            if second.is_multiple_of(3) {
                let p2 = (pos + 1 + (second as usize >> 8) % 16).min(b.len() - 1);
                b[p2] = (second >> 32) as u8;
            }
            let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
                let m = read_onnx_bytes(&path, &b).map_err(|e| format!("read: {}", e))?;
                let f = fuse(&m.graph, &FuseOptions::default()).map_err(|e| e.to_string())?;
                let w = f.weights_cpu(&m.weights).map_err(|e| e.to_string())?;
                onnx_bytes(Some(&m), &f.graph, &w).map_err(|e| e.to_string())?;
                Ok(())
            }));
            match r {
                Err(p) => panics.push(format!("seed {} pos {} mask {:#04x}: {}", seed, pos, mask, panic_text(&p))),
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    errs += 1;
                    if e.starts_with("read: ") && !e.contains(&path.display().to_string()) {
                        unnamed.push(format!("seed {} pos {}: {}", seed, pos, e));
                    }
                }
            }
        }
    }
    eprintln!("{}: {} corrupted copies fused fine, {} gave errors", case, ok, errs);
    assert!(panics.is_empty(), "{}: repfuse panicked on {} corrupted files:\n{}", case, panics.len(), panics.join("\n"));
    assert!(unnamed.is_empty(), "{}: read errors that do not name the file:\n{}", case, unnamed.join("\n"));
}

/// The exporter forms go through the reader's lifts and the ONNX engine's analysis
/// (Shape folding, token Linear, Sub, broadcast Add): corrupt copies must not panic
/// there either.
#[test]
fn random_byte_corruption_never_panics_in_the_reader_lifts() {
    let forms = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/forms");
    for name in ["token_linear_bn", "repmixer", "unfusable_scale_and_broadcast", "averaged_heads"] {
        corruption_sweep_file(name, &forms.join(format!("{}.onnx", name)), &[7], 3);
    }
}

#[test]
fn random_byte_corruption_never_panics_conv_bn() {
    corruption_sweep("z01_conv_bn", &[1, 2, 3], 1);
}

#[test]
fn random_byte_corruption_never_panics_dbb() {
    corruption_sweep("z14_dbb_block", &[4, 5], 2);
}

#[test]
fn random_byte_corruption_never_panics_linear_and_fp16() {
    corruption_sweep("z15_linear_bn1d", &[6], 1);
    corruption_sweep("v06_fp16_repvgg_block", &[7], 2);
}

#[test]
fn empty_file_is_a_clear_error() {
    let dir = tmp();
    let path = dir.path().join("empty.onnx");
    std::fs::write(&path, b"").unwrap();
    let msg = err("empty file", no_panic("empty file", || load_model(&path)));
    assert_names("empty file", &msg, &[&path.display().to_string()]);
}

#[test]
fn non_onnx_files_are_clear_errors() {
    let dir = tmp();
    let fixtures_json = std::fs::read(fixtures().join("z01_conv_bn/expected.json")).unwrap();
    let safetensors = std::fs::read(fixtures().join("z01_conv_bn/io.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text.onnx", b"this is not an ONNX model\n".to_vec()),
        ("json.onnx", fixtures_json),
        ("safetensors.onnx", safetensors),
        ("zeros.onnx", vec![0u8; 4096]),
        ("ff.onnx", vec![0xffu8; 4096]),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = err(name, no_panic(name, || load_model(&path)));
        assert_names(name, &msg, &[&path.display().to_string()]);
    }
    // Unknown extension and a missing file.
    let path = dir.path().join("model.pt");
    std::fs::write(&path, b"x").unwrap();
    let msg = err("unknown extension", load_model(&path));
    assert_names("unknown extension", &msg, &[&path.display().to_string(), "format"]);
    let path = dir.path().join("missing.onnx");
    let msg = err("missing file", load_model(&path));
    assert_names("missing file", &msg, &[&path.display().to_string()]);
}

#[test]
fn model_without_a_graph_is_a_clear_error() {
    let mut m = proto("z01_conv_bn");
    m.graph = Default::default();
    let dir = tmp();
    let path = write_proto(dir.path(), "nograph.onnx", &m);
    let msg = err("no graph", read_onnx(&path));
    assert_names("no graph", &msg, &[&path.display().to_string(), "graph"]);
}

// ---------------------------------------------------------------------------------
// initializers: sizes, shapes, dims, dtypes, values
// ---------------------------------------------------------------------------------

#[test]
fn initializer_shape_inconsistent_with_raw_data_length() {
    let dir = tmp();
    for (i, dims) in [vec![16, 8, 3, 4], vec![16, 8, 3], vec![16, 8, 3, 3, 2], vec![]].into_iter().enumerate() {
        let mut m = proto("z01_conv_bn");
        init(&mut m, Z01_W).dims = dims.clone();
        let path = write_proto(dir.path(), &format!("dims{}.onnx", i), &m);
        let what = format!("weight dims {:?} vs 4608 raw bytes", dims);
        let msg = err(&what, no_panic(&what, || read_onnx(&path)));
        assert_names(&what, &msg, &[&path.display().to_string(), Z01_W, "4608"]);
    }
    // Typed float_data with the wrong count.
    let mut m = proto("z01_conv_bn");
    let t = init(&mut m, Z01_GAMMA);
    t.raw_data.clear();
    t.float_data = vec![1.0; 15];
    let path = write_proto(dir.path(), "float_data.onnx", &m);
    let msg = err("float_data of 15 for [16]", read_onnx(&path));
    assert_names("float_data of 15 for [16]", &msg, &[&path.display().to_string(), Z01_GAMMA, "15"]);
}

#[test]
fn conv_weight_shape_disagrees_with_group_attribute() {
    let dir = tmp();
    // group 2: the weight [16, 8, 3, 3] then wants 16 input channels; the input has 8.
    // group 3: 3 divides neither 24 input nor 16 output channels.
    for group in [2i64, 3, 16] {
        let mut m = proto("z01_conv_bn");
        attr(node(&mut m, "Conv"), "group").i = group;
        let path = write_proto(dir.path(), &format!("group{}.onnx", group), &m);
        let what = format!("group {}", group);
        let msg = pipeline_err(&what, &path);
        assert!(msg.starts_with("fuse: "), "{}: expected a fuse (validation) error, got {}", what, msg);
        assert_names(&what, &msg, &[Z01_CONV]);
        assert!(msg.contains("channels") || msg.contains("groups"), "{}: error does not name the field: {}", what, msg);
    }
}

#[test]
fn conv_group_zero_negative_or_huge_is_not_a_panic() {
    let dir = tmp();
    for group in [0i64, -1, 1 << 62, i64::MAX] {
        let mut m = proto("z01_conv_bn");
        attr(node(&mut m, "Conv"), "group").i = group;
        let path = write_proto(dir.path(), &format!("group{}.onnx", group), &m);
        let what = format!("group {}", group);
        match no_panic(&what, || run_pipeline(&path)) {
            // Carried through as an opaque node: then it must not have been fused.
            Ok(run) => {
                assert!(
                    run.model.graph.nodes.iter().any(|n| n.name == Z01_CONV && matches!(n.op, Op::Opaque(_))),
                    "{}: accepted as a fusable conv: {:?}",
                    what,
                    run.fusion.report.ops_after
                );
            }
            // An error must blame the `group` attribute, not a wrapped-around channel count.
            Err(msg) => assert_names(&what, &msg, &[Z01_CONV, "group"]),
        }
    }
}

#[test]
fn negative_dims_are_a_clear_error() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    init(&mut m, Z01_W).dims = vec![-16, 8, 3, 3];
    let path = write_proto(dir.path(), "neg.onnx", &m);
    let msg = err("negative dims", no_panic("negative dims", || read_onnx(&path)));
    assert_names("negative dims", &msg, &[&path.display().to_string(), Z01_W, "-16"]);
    // A negative dim on a non-float (carried) initializer is also caught.
    let mut m = proto("z01_conv_bn");
    let mut t = TensorProto::new();
    t.name = "shape_const".into();
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![-2];
    graph_mut(&mut m).initializer.push(t);
    let path = write_proto(dir.path(), "neg_int64.onnx", &m);
    let msg = err("negative int64 dims", no_panic("negative int64 dims", || read_onnx(&path)));
    assert_names("negative int64 dims", &msg, &[&path.display().to_string(), "shape_const", "-2"]);
}

#[test]
fn huge_dims_are_rejected_before_allocating() {
    let dir = tmp();
    // [2^40, 2^40] overflows the element count; [2^30, 2^30] the byte count;
    // [2^20, 2^20, 2^10] fits in usize but not the 4608 bytes present. With empty
    // raw_data, the typed-field path must not allocate either.
    let shapes: [Vec<i64>; 4] = [vec![1 << 40, 1 << 40], vec![1 << 30, 1 << 30], vec![1 << 20, 1 << 20, 1 << 10], vec![i64::MAX, i64::MAX]];
    for (i, dims) in shapes.iter().enumerate() {
        for empty in [false, true] {
            let mut m = proto("z01_conv_bn");
            let t = init(&mut m, Z01_W);
            t.dims = dims.clone();
            if empty {
                t.raw_data.clear();
            }
            let path = write_proto(dir.path(), &format!("huge{}_{}.onnx", i, empty), &m);
            let what = format!("dims {:?} (raw_data empty: {})", dims, empty);
            let msg = err(&what, no_panic(&what, || read_onnx(&path)));
            assert_names(&what, &msg, &[&path.display().to_string(), Z01_W]);
        }
    }
}

#[test]
fn huge_graph_input_dims_do_not_panic_in_fuse() {
    // Only shape arithmetic (FLOPs, parameter counts) happens here: no allocation.
    let mut m = proto("z01_conv_bn");
    {
        use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
        let vi = &mut graph_mut(&mut m).input[0];
        let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = vi.type_.as_mut().unwrap().value.as_mut() else { panic!("input is a tensor") };
        let dims = &mut tt.shape.as_mut().unwrap().dim;
        dims[0].value = Some(D::DimValue(1 << 40));
        dims[2].value = Some(D::DimValue(1 << 40));
        dims[3].value = Some(D::DimValue(1 << 40));
    }
    let dir = tmp();
    let path = write_proto(dir.path(), "huge_input.onnx", &m);
    let model = read_onnx(&path).unwrap();
    match no_panic("huge input dims: fuse", || fuse(&model.graph, &FuseOptions::default())) {
        Ok(f) => {
            // The exact count (2 * 16 * 2^80 * 8 * 9 for the conv alone) does not fit a
            // u64: it must saturate, not wrap around to a small or zero number.
            assert_eq!(f.report.flops_before, u64::MAX, "FLOPs of a [2^40, 8, 2^40, 2^40] input wrapped around");
        }
        Err(e) => assert_names("huge input dims", &e.to_string(), &["input"]),
    }
}

/// A ~1 KB model whose *graph* dims (input 65536x65536, AveragePool kernel 65536x65536
/// after a 1x1 conv) make the avg-pool -> conv rewrite plan an [8, 1, 65536, 65536]
/// kernel: 128 GiB from a file with 256 bytes of weights.
fn huge_pool_kernel_model(dir: &Path) -> PathBuf {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    let mut m = proto("z01_conv_bn");
    let g = graph_mut(&mut m);
    g.initializer.clear();
    g.initializer.push(float_tensor("w1x1", &[8, 8, 1, 1], &[0.125; 64]));
    let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = g.input[0].type_.as_mut().unwrap().value.as_mut() else { panic!("input is a tensor") };
    let dims = &mut tt.shape.as_mut().unwrap().dim;
    for (d, v) in dims.iter_mut().zip([1i64, 8, 65536, 65536]) {
        d.value = Some(D::DimValue(v));
    }
    let x = g.input[0].name.clone();
    let mut conv = make_node("Conv", "conv1x1", &[&x, "w1x1"], &["c"]);
    let mut ks = AttributeProto::new();
    ks.name = "kernel_shape".into();
    ks.type_ = onnx_protobuf::attribute_proto::AttributeType::INTS.into();
    ks.ints = vec![1, 1];
    conv.attribute.push(ks.clone());
    let mut pool = make_node("AveragePool", "huge_pool", &["c"], &["output"]);
    ks.ints = vec![65536, 65536];
    pool.attribute.push(ks);
    let mut cip = AttributeProto::new();
    cip.name = "count_include_pad".into();
    cip.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
    cip.i = 1;
    pool.attribute.push(cip);
    g.node.clear();
    g.node.push(conv);
    g.node.push(pool);
    g.output[0].name = "output".into();
    write_proto(dir, "huge_pool.onnx", &m)
}

#[cfg(unix)]
#[test]
fn huge_graph_dims_are_rejected_before_allocating_a_fused_kernel() {
    // Run the binary with its address space capped at 4 GiB, so the case cannot hurt
    // the machine: a clear error (exit 1) is expected, not an allocation abort.
    let dir = tmp();
    let input = huge_pool_kernel_model(dir.path());
    let out = dir.path().join("out.onnx");
    let script = "ulimit -v 4194304; exec \"$0\" fuse \"$1\" -o \"$2\" --backend cpu";
    let o = Command::new("sh").arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_repfuse")).arg(&input).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit {:?} (a signal: killed/aborted), stderr:\n{}", o.status, stderr);
    assert_no_panic_output("huge pool kernel", &o);
    assert!(stderr.contains("huge_pool") || stderr.contains("65536"), "the error names neither the node nor the size:\n{}", stderr);
    assert!(!out.exists());
}

#[test]
fn nan_and_inf_weights_read_ok_but_fusion_names_the_tensor() {
    let dir = tmp();
    for (tensor, index, value, word) in [(Z01_W, 7usize, f32::NAN, "NaN"), (Z01_GAMMA, 3, f32::INFINITY, "inf"), (Z01_VAR, 0, f32::NEG_INFINITY, "-inf")] {
        let mut m = proto("z01_conv_bn");
        set_f32(init(&mut m, tensor), index, value);
        let path = write_proto(dir.path(), &format!("{}.onnx", word), &m);
        let what = format!("{} in `{}`", word, tensor);
        let model = no_panic(&what, || read_onnx(&path)).unwrap_or_else(|e| panic!("{}: reading must succeed: {}", what, e));
        let f = no_panic(&what, || fuse(&model.graph, &FuseOptions::default())).unwrap_or_else(|e| panic!("{}: planning must succeed: {}", what, e));
        let msg = err(&what, no_panic(&what, || f.weights_cpu(&model.weights)));
        assert_names(&what, &msg, &[tensor, word]);
        // The embedding API reports the same.
        let msg = err(&what, no_panic(&what, || Fuser::new(Backend::Cpu).fuse(&model.graph, &model.weights, &FuseOptions::default())));
        assert_names(&what, &msg, &[tensor]);
        // So does the path that releases each source once read (`repfuse fuse`
        // without --verify): the tensor may be gone by the time the output check fails.
        let mut w = model.weights.clone();
        let msg = err(&what, no_panic(&what, || Fuser::new(Backend::Cpu).fuse_releasing(&model.graph, &mut w, &FuseOptions::default())));
        assert_names(&what, &msg, &[tensor]);
    }
}

#[test]
fn negative_running_var_names_the_var_tensor() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    set_f32(init(&mut m, Z01_VAR), 5, -0.25);
    let path = write_proto(dir.path(), "negvar.onnx", &m);
    let msg = pipeline_err("negative running_var", &path);
    assert!(msg.starts_with("weights_cpu: "), "negative running_var: wrong stage: {}", msg);
    assert_names("negative running_var", &msg, &[Z01_VAR, "[5]", "-0.25"]);
}

#[test]
fn var_plus_eps_not_positive_names_the_var_tensor() {
    let dir = tmp();
    // var 0 with eps 0; var -eps with eps.
    for (var, eps) in [(0.0f32, 0.0f32), (-1e-5, 1e-5)] {
        let mut m = proto("z01_conv_bn");
        set_f32(init(&mut m, Z01_VAR), 2, var);
        attr(node(&mut m, "BatchNormalization"), "epsilon").f = eps;
        let path = write_proto(dir.path(), &format!("var{}_eps{}.onnx", var, eps), &m);
        let what = format!("var {} eps {}", var, eps);
        let msg = pipeline_err(&what, &path);
        assert_names(&what, &msg, &[Z01_VAR, "[2]"]);
    }
}

#[test]
fn negative_or_nan_epsilon_names_node_and_field() {
    let dir = tmp();
    for eps in [-1e-3f32, f32::NAN, f32::INFINITY] {
        let mut m = proto("z01_conv_bn");
        attr(node(&mut m, "BatchNormalization"), "epsilon").f = eps;
        let path = write_proto(dir.path(), &format!("eps{}.onnx", eps), &m);
        let what = format!("epsilon {}", eps);
        let msg = pipeline_err(&what, &path);
        assert_names(&what, &msg, &[Z01_BN, "epsilon"]);
    }
}

#[test]
fn zero_eps_with_positive_var_works_and_is_exact() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    attr(node(&mut m, "BatchNormalization"), "epsilon").f = 0.0;
    let path = write_proto(dir.path(), "eps0.onnx", &m);
    let run = no_panic("eps 0", || run_pipeline(&path)).unwrap_or_else(|e| panic!("eps 0 with positive var must work: {}", e));
    assert_eq!(run.fusion.graph.count("BatchNorm"), 0, "BN not folded: {:?}", run.fusion.report.ops_after);
    let eq = repfuse::verify::check_equivalence(&run.model.graph, &run.model.weights, &run.fusion.graph, &run.weights, 3).unwrap();
    assert!(eq.passed(), "eps 0: fused model differs: {:?}", eq.outputs);
}

#[test]
fn fused_weights_that_overflow_f32_are_an_error_not_a_silent_inf() {
    // gamma 1e30 over sqrt(var 1e-40 + eps 0) = 1e50: every folded weight is +-inf in
    // f32, though every source value is finite. Writing such a deploy model would be
    // a model that outputs inf/NaN; it should be refused naming the tensor.
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    attr(node(&mut m, "BatchNormalization"), "epsilon").f = 0.0;
    set_f32(init(&mut m, Z01_GAMMA), 0, 1e30);
    set_f32(init(&mut m, Z01_VAR), 0, 1e-40);
    let path = write_proto(dir.path(), "overflow.onnx", &m);
    match no_panic("overflowing fold", || run_pipeline(&path)) {
        Err(msg) => assert!(
            [Z01_VAR, Z01_GAMMA, Z01_W, Z01_CONV].iter().any(|t| msg.contains(t)),
            "overflowing fold: error names neither the BN tensors nor the conv: {}",
            msg
        ),
        Ok(run) => {
            let bad: Vec<String> = run.weights.iter().filter_map(|(n, t)| t.first_non_finite().map(|(i, v)| format!("`{}`[{}] = {}", n, i, v))).collect();
            assert!(bad.is_empty(), "fusion of finite weights silently produced non-finite deploy weights: {:?}", bad);
        }
    }
}

#[test]
fn a_branch_sum_that_overflows_f32_is_an_error_naming_the_fused_kernel() {
    // The same overflow inside a multi-branch merge: the 1x1 branch's BN (gamma 1e30
    // over sqrt(1e-40)) is folded on the fly by the place kernel, whose f64 sum only
    // overflows when rounded to f32. The place kernel checks as it rounds (the output
    // scan skips it), so this is the test that the check is there.
    let dir = tmp();
    let mut m = proto("z13_repvgg_bn_branch");
    for n in graph_mut(&mut m).node.iter_mut().filter(|n| n.op_type == "BatchNormalization") {
        attr(n, "epsilon").f = 0.0;
    }
    set_f32(init(&mut m, "0.branches.1.bn.weight"), 0, 1e30);
    set_f32(init(&mut m, "0.branches.1.bn.running_var"), 0, 1e-40);
    // Mean 0: the folded bias (beta - mean * scale) stays finite, so only the kernel
    // overflows and only the place kernel's own check can catch it.
    set_f32(init(&mut m, "0.branches.1.bn.running_mean"), 0, 0.0);
    let path = write_proto(dir.path(), "overflow_merge.onnx", &m);
    let msg = pipeline_err("overflowing merge", &path);
    // The fused kernel is named after a node of the merged region.
    let region = ["/0/Add_1", "/0/Add", "/0/branches.0/conv/Conv", "/0/branches.1/conv/Conv"];
    assert!(
        msg.contains("overflows f32") && region.iter().any(|n| msg.contains(n)),
        "overflowing merge: error does not name the overflowing fused kernel: {}",
        msg
    );
}

#[test]
fn unsupported_initializer_dtype_is_carried_as_opaque_and_its_invalid_conv_not_written() {
    let dir = tmp();
    for (dt, size) in [(DataType::INT8, 1usize), (DataType::DOUBLE, 8)] {
        let mut m = proto("z01_conv_bn");
        let t = init(&mut m, Z01_W);
        t.data_type = dt as i32;
        t.raw_data = (0..16 * 8 * 9 * size).map(|i| (i % 7) as u8).collect();
        let original = t.clone();
        let path = write_proto(dir.path(), &format!("{:?}.onnx", dt), &m);
        let what = format!("{:?} conv weight", dt);
        let model = no_panic(&what, || read_onnx(&path).map_err(|e| e.to_string())).unwrap_or_else(|e| panic!("{}: must be carried through, got: {}", what, e));
        let conv = model.graph.node(Z01_CONV).unwrap();
        assert!(matches!(conv.op, Op::Opaque(_)), "{}: a non-float weight was imported as a fusable conv", what);
        // The carried conv keeps the initializer byte for byte, so the model it would
        // write is the source's: a Conv of a float32 input and a weight of another
        // type, which ONNX does not allow and ONNX Runtime refuses. Nothing is written;
        // the error names the node and both types.
        let f = fuse(&model.graph, &FuseOptions::default()).unwrap();
        assert!(model.weights.get(Z01_W).is_err() && original.raw_data.len() == 16 * 8 * 9 * size, "{}: the weight was decoded as a float", what);
        let e = onnx_bytes(Some(&model), &f.graph, &f.weights_cpu(&model.weights).unwrap()).expect_err("an invalid model was written").to_string();
        assert!(e.contains(Z01_CONV) && e.contains("float32") && e.contains("element type"), "{}: {}", what, e);
    }
}

/// z01 with `Reshape(bn_out, shape)` appended, `shape` an INT64 [2] tensor given as an
/// initializer or (as PyTorch's exporter writes `x.view(...)`) a Constant node.
fn z01_with_reshape(as_constant: bool) -> ModelProto {
    let mut m = proto("z01_conv_bn");
    let g = graph_mut(&mut m);
    g.node.last_mut().unwrap().output[0] = "bn_out".into();
    let mut t = TensorProto::new();
    t.name = "shape".into();
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![2];
    t.int64_data = vec![2, -1];
    if as_constant {
        let mut n = make_node("Constant", "shape_const", &[], &["shape"]);
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.type_ = onnx_protobuf::attribute_proto::AttributeType::TENSOR.into();
        t.name.clear();
        a.t = Some(t).into();
        n.attribute.push(a);
        g.node.push(n);
    } else {
        g.initializer.push(t);
    }
    g.node.push(make_node("Reshape", "reshape", &["bn_out", "shape"], &["output"]));
    m
}

#[test]
fn int64_initializer_read_by_an_opaque_node_is_carried_through() {
    let dir = tmp();
    for as_constant in [false, true] {
        let what = if as_constant { "Reshape with a Constant INT64 shape" } else { "Reshape with an INT64 shape initializer" };
        let path = write_proto(dir.path(), &format!("reshape_{}.onnx", as_constant), &z01_with_reshape(as_constant));
        let run = no_panic(what, || run_pipeline(&path)).unwrap_or_else(|e| panic!("{}: must fuse the conv+BN and carry the Reshape, got: {}", what, e));
        assert_eq!(run.fusion.graph.count("BatchNorm"), 0, "{}: {:?}", what, run.fusion.report.ops_after);
        let bytes = onnx_bytes(Some(&run.model), &run.fusion.graph, &run.weights).unwrap();
        let out = ModelProto::parse_from_bytes(&bytes).unwrap();
        let shape = out.graph.initializer.iter().find(|t| t.name == "shape").unwrap_or_else(|| panic!("{}: the shape tensor was dropped", what));
        assert_eq!(shape.int64_data, vec![2, -1], "{}", what);
    }
}

#[test]
fn duplicate_and_unnamed_initializers_are_clear_errors() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    let dup = init(&mut m, Z01_GAMMA).clone();
    graph_mut(&mut m).initializer.push(dup);
    let path = write_proto(dir.path(), "dup.onnx", &m);
    let msg = err("duplicate initializer", no_panic("duplicate initializer", || read_onnx(&path)));
    assert_names("duplicate initializer", &msg, &[&path.display().to_string(), Z01_GAMMA, "twice"]);

    let mut m = proto("z01_conv_bn");
    graph_mut(&mut m).initializer.push(float_tensor("", &[2], &[1.0, 2.0]));
    let path = write_proto(dir.path(), "unnamed.onnx", &m);
    let msg = err("unnamed initializer", no_panic("unnamed initializer", || read_onnx(&path)));
    assert_names("unnamed initializer", &msg, &[&path.display().to_string(), "name"]);
}

// ---------------------------------------------------------------------------------
// graph structure
// ---------------------------------------------------------------------------------

#[test]
fn graph_with_a_cycle_is_a_clear_error() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    // conv reads the BN's output, the BN reads the conv's: a two-node cycle.
    node(&mut m, "Conv").input[0] = "output".into();
    let path = write_proto(dir.path(), "cycle.onnx", &m);
    let msg = pipeline_err("cycle", &path);
    assert_names("cycle", &msg, &[Z01_CONV, "`output`", "cycle"]);
}

#[test]
fn dangling_node_input_is_a_clear_error() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    node(&mut m, "BatchNormalization").input[0] = "nobody_makes_this".into();
    let path = write_proto(dir.path(), "dangling.onnx", &m);
    let msg = pipeline_err("dangling input", &path);
    assert_names("dangling input", &msg, &[Z01_BN, "nobody_makes_this", "dangling"]);
}

#[test]
fn two_nodes_producing_one_tensor_is_a_clear_error() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    let conv_out = node(&mut m, "Conv").output[0].clone();
    graph_mut(&mut m).node.push(make_node("Relu", "second_producer", &["input"], &[&conv_out]));
    let path = write_proto(dir.path(), "twice.onnx", &m);
    let msg = pipeline_err("two producers", &path);
    assert_names("two producers", &msg, &[&conv_out, "second_producer", "twice"]);
    // A node output that shadows an initializer.
    let mut m = proto("z01_conv_bn");
    graph_mut(&mut m).node.push(make_node("Relu", "shadows_param", &["input"], &[Z01_GAMMA]));
    let path = write_proto(dir.path(), "shadow.onnx", &m);
    let msg = pipeline_err("output shadows an initializer", &path);
    assert_names("output shadows an initializer", &msg, &[Z01_GAMMA, "shadows_param"]);
}

#[test]
fn graph_output_not_produced_and_bad_inputs_are_clear_errors() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    graph_mut(&mut m).output[0].name = "not_made".into();
    let path = write_proto(dir.path(), "noout.onnx", &m);
    let msg = pipeline_err("output not produced", &path);
    assert_names("output not produced", &msg, &["not_made"]);

    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    for (k, v) in [(1usize, 0i64), (2, -3)] {
        let mut m = proto("z01_conv_bn");
        let vi = &mut graph_mut(&mut m).input[0];
        let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = vi.type_.as_mut().unwrap().value.as_mut() else { panic!() };
        tt.shape.as_mut().unwrap().dim[k].value = Some(D::DimValue(v));
        let path = write_proto(dir.path(), &format!("dim{}_{}.onnx", k, v), &m);
        let what = format!("graph input dim {} = {}", k, v);
        let msg = err(&what, no_panic(&what, || read_onnx(&path)));
        assert_names(&what, &msg, &[&path.display().to_string(), "input", &v.to_string()]);
    }
    let mut m = proto("z01_conv_bn");
    graph_mut(&mut m).input[0].type_ = Default::default();
    let path = write_proto(dir.path(), "notype.onnx", &m);
    let msg = err("input without type", no_panic("input without type", || read_onnx(&path)));
    assert_names("input without type", &msg, &[&path.display().to_string(), "input"]);
}

#[test]
fn identity_without_output_or_input_is_not_a_panic() {
    let dir = tmp();
    for (name, inputs, outputs) in [("id_no_output", vec!["input"], vec![]), ("id_no_input", vec![], vec!["id_out"]), ("id_empty_names", vec![""], vec![""])] {
        let mut m = proto("z01_conv_bn");
        graph_mut(&mut m).node.push(make_node("Identity", name, &inputs, &outputs));
        let path = write_proto(dir.path(), &format!("{}.onnx", name), &m);
        if let Err(msg) = no_panic(name, || run_pipeline(&path)) {
            assert!(msg.contains(name) || msg.contains("Identity"), "{}: error does not name the node: {}", name, msg);
        }
    }
}

#[test]
fn matmul_bias_add_without_output_is_not_a_panic() {
    // x[2,4] -> MatMul(W[4,3]) -> p -> Add(p, b[3]) with no output: the importer folds
    // the Add into a Linear and reads the Add's output.
    let mut m = proto("z15_linear_bn1d");
    let g = graph_mut(&mut m);
    g.node.clear();
    g.initializer.clear();
    g.initializer.push(float_tensor("W", &[4, 3], &[0.5; 12]));
    g.initializer.push(float_tensor("b", &[3], &[0.1; 3]));
    {
        use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
        let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = g.input[0].type_.as_mut().unwrap().value.as_mut() else { panic!() };
        let dims = &mut tt.shape.as_mut().unwrap().dim;
        dims.truncate(2);
        dims[0].value = Some(D::DimValue(2));
        dims[1].value = Some(D::DimValue(4));
    }
    let x = g.input[0].name.clone();
    g.node.push(make_node("MatMul", "mm", &[&x, "W"], &["p"]));
    g.node.push(make_node("Add", "add_no_out", &["p", "b"], &[]));
    g.output[0].name = "p".into();
    let dir = tmp();
    let path = write_proto(dir.path(), "mm_add.onnx", &m);
    if let Err(msg) = no_panic("MatMul + output-less Add", || run_pipeline(&path)) {
        assert!(msg.contains("add_no_out") || msg.contains("mm"), "error does not name the node: {}", msg);
    }
}

// ---------------------------------------------------------------------------------
// external data
// ---------------------------------------------------------------------------------

/// v03 (every initializer external) copied into a fresh dir; `edit` changes the proto.
fn external_case(edit: impl FnOnce(&mut ModelProto), with_data: bool) -> (tempfile::TempDir, PathBuf) {
    let src = fixtures().join("v03_external_data_dbb");
    let dir = tmp();
    let sub = dir.path().join("model");
    std::fs::create_dir(&sub).unwrap();
    if with_data {
        std::fs::copy(src.join("train.onnx.data"), sub.join("train.onnx.data")).unwrap();
    }
    let mut m = ModelProto::parse_from_bytes(&std::fs::read(src.join("train.onnx")).unwrap()).unwrap();
    edit(&mut m);
    let path = write_proto(&sub, "train.onnx", &m);
    (dir, path)
}

fn set_ext(t: &mut TensorProto, key: &str, value: &str) {
    match t.external_data.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value.to_string(),
        None => {
            let mut e = StringStringEntryProto::new();
            e.key = key.to_string();
            e.value = value.to_string();
            t.external_data.push(e);
        }
    }
}

const V03_W: &str = "0.branches.0.conv.weight";

#[test]
fn external_data_intact_copy_reads() {
    let (_d, path) = external_case(|_| {}, true);
    no_panic("v03 copy", || run_pipeline(&path)).unwrap();
}

#[test]
fn external_data_missing_file_names_the_file_and_tensor() {
    let (_d, path) = external_case(|_| {}, false);
    let msg = err("missing external data", no_panic("missing external data", || read_onnx(&path)));
    assert_names("missing external data", &msg, &["train.onnx.data", V03_W]);
    let (_d, path) = external_case(|m| set_ext(init(m, V03_W), "location", "elsewhere.bin"), true);
    let msg = err("external data at a missing location", no_panic("missing location", || read_onnx(&path)));
    assert_names("external data at a missing location", &msg, &["elsewhere.bin", V03_W]);
}

#[test]
fn external_data_location_leaving_the_folder_is_rejected() {
    for loc in ["../train.onnx.data", "sub/../../train.onnx.data", "/etc/hostname"] {
        let (d, path) = external_case(|m| set_ext(init(m, V03_W), "location", loc), true);
        // Make the escaping location actually exist, so only the check can stop it.
        std::fs::copy(fixtures().join("v03_external_data_dbb/train.onnx.data"), d.path().join("train.onnx.data")).unwrap();
        let what = format!("location {}", loc);
        let msg = err(&what, no_panic(&what, || read_onnx(&path)));
        assert_names(&what, &msg, &[&path.display().to_string(), V03_W, loc]);
    }
}

#[test]
fn external_data_range_past_the_end_is_a_clear_error() {
    let len = std::fs::metadata(fixtures().join("v03_external_data_dbb/train.onnx.data")).unwrap().len();
    let cases: Vec<(String, Option<String>)> = vec![
        (len.to_string(), Some("4608".into())),
        ((len - 100).to_string(), Some("4608".into())),
        ((len + 1).to_string(), None),
        (u64::MAX.to_string(), Some("4608".into())),
        ("0".into(), Some(u64::MAX.to_string())),
        ("-1".into(), Some("4608".into())),
        ("abc".into(), None),
    ];
    for (offset, length) in cases {
        let (_d, path) = external_case(
            |m| {
                let t = init(m, V03_W);
                set_ext(t, "offset", &offset);
                match &length {
                    Some(l) => set_ext(t, "length", l),
                    None => t.external_data.retain(|e| e.key != "length"),
                }
            },
            true,
        );
        let what = format!("offset {} length {:?}", offset, length);
        let msg = err(&what, no_panic(&what, || read_onnx(&path)));
        assert_names(&what, &msg, &[&path.display().to_string(), V03_W]);
    }
    // Without `location`.
    let (_d, path) = external_case(|m| init(m, V03_W).external_data.retain(|e| e.key != "location"), true);
    let msg = err("no location", no_panic("no location", || read_onnx(&path)));
    assert_names("no location", &msg, &[V03_W, "location"]);
}

#[test]
fn external_data_pointing_at_a_directory_is_a_clear_error() {
    let (d, path) = external_case(|m| set_ext(init(m, V03_W), "location", "adir"), true);
    std::fs::create_dir(path.parent().unwrap().join("adir")).unwrap();
    let msg = err("location is a directory", no_panic("location is a directory", || read_onnx(&path)));
    assert_names("location is a directory", &msg, &["adir", V03_W]);
    drop(d);
}

#[test]
fn external_flag_on_an_inline_model_is_a_clear_error() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    init(&mut m, Z01_W).data_location = DataLocation::EXTERNAL.into();
    let path = write_proto(dir.path(), "flag.onnx", &m);
    let msg = err("EXTERNAL without entries", no_panic("EXTERNAL without entries", || read_onnx(&path)));
    assert_names("EXTERNAL without entries", &msg, &[&path.display().to_string(), Z01_W, "location"]);
}

// ---------------------------------------------------------------------------------
// native format
// ---------------------------------------------------------------------------------

/// z13 written in the native format into a fresh dir: (dir, graph json path).
fn native_case() -> (tempfile::TempDir, PathBuf) {
    let m = read_onnx(&fixture("z13_repvgg_bn_branch")).unwrap();
    let dir = tmp();
    let path = dir.path().join("model.json");
    save_model(&path, None, &m.graph, &m.weights).unwrap();
    assert!(dir.path().join("model.safetensors").exists());
    (dir, path)
}

#[test]
fn native_intact_model_round_trips() {
    let (_d, path) = native_case();
    let m = load_model(&path).unwrap();
    let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
    f.weights_cpu(&m.weights).unwrap();
}

#[test]
fn native_truncated_or_corrupted_graph_json() {
    let (d, path) = native_case();
    let json = std::fs::read(&path).unwrap();
    for cut in [0, 1, json.len() / 2, json.len() - 2] {
        std::fs::write(&path, &json[..cut]).unwrap();
        let what = format!("graph json cut at {}", cut);
        let msg = err(&what, no_panic(&what, || load_model(&path)));
        assert_names(&what, &msg, &[&path.display().to_string()]);
    }
    let mut rng = Rng(42);
    for _ in 0..300 {
        let mut b = json.clone();
        let pos = rng.next() as usize % b.len();
        b[pos] = b"{}[]\",:0-9e. xZ\x00\xff"[rng.next() as usize % 17];
        std::fs::write(&path, &b).unwrap();
        let what = format!("graph json byte {} replaced", pos);
        let r = no_panic(&what, || {
            load_model(&path).map_err(|e| e.to_string()).and_then(|m| {
                let f = fuse(&m.graph, &FuseOptions::default()).map_err(|e| e.to_string())?;
                f.weights_cpu(&m.weights).map_err(|e| e.to_string())
            })
        });
        if let Err(msg) = r {
            assert!(!msg.is_empty(), "{}", what);
        }
    }
    drop(d);
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn first_conv(v: &mut serde_json::Value) -> (&mut serde_json::Value, String) {
    let node = v["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["op"].get("Conv2d").is_some()).unwrap();
    let name = node["name"].as_str().unwrap().to_string();
    (&mut node["op"]["Conv2d"], name)
}

#[test]
fn native_json_with_bad_op_fields_names_node_and_field() {
    for (field, value, expect) in [
        ("groups", serde_json::json!(0), "channels"),
        ("groups", serde_json::json!(3), "groups"),
        ("stride", serde_json::json!([0, 1]), "stride"),
        ("kernel", serde_json::json!([0, 3]), "kernel"),
        ("dilation", serde_json::json!([0, 0]), "dilation"),
        ("kernel", serde_json::json!([1 << 20, 1 << 20]), "weight"),
        ("in_channels", serde_json::json!(usize::MAX), "weight"),
        ("groups", serde_json::json!(-1), "model.json"),
    ] {
        let (d, path) = native_case();
        let mut conv = String::new();
        edit_json(&path, |v| {
            let (c, name) = first_conv(v);
            c[field] = value.clone();
            conv = name;
        });
        let what = format!("native conv {} = {}", field, value);
        let r =
            no_panic(&what, || load_model(&path).map_err(|e| e.to_string()).and_then(|m| fuse(&m.graph, &FuseOptions::default()).map_err(|e| e.to_string())));
        let msg = r.err().unwrap_or_else(|| panic!("{}: expected an error", what));
        if expect != "model.json" {
            assert_names(&what, &msg, &[&conv, expect]);
        } else {
            assert_names(&what, &msg, &[expect]);
        }
        drop(d);
    }
}

#[test]
fn native_truncated_safetensors() {
    let (d, path) = native_case();
    let wpath = d.path().join("model.safetensors");
    let bytes = std::fs::read(&wpath).unwrap();
    for cut in [0, 4, 8, 9, 64, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&wpath, &bytes[..cut]).unwrap();
        let what = format!("safetensors cut at {}", cut);
        let msg = err(&what, no_panic(&what, || load_model(&path)));
        assert_names(&what, &msg, &[&wpath.display().to_string()]);
    }
    // A header length claiming more bytes than there are.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&wpath, &b).unwrap();
    let msg = err("huge header length", no_panic("huge header length", || load_model(&path)));
    assert_names("huge header length", &msg, &[&wpath.display().to_string()]);
    // Missing entirely.
    std::fs::remove_file(&wpath).unwrap();
    let msg = err("missing safetensors", no_panic("missing safetensors", || load_model(&path)));
    assert_names("missing safetensors", &msg, &[&wpath.display().to_string()]);
}

/// Rewrites `model.safetensors` with `f` applied to its (name, shape, f32 data) list.
fn rewrite_safetensors(wpath: &Path, f: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(wpath).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    f(&mut list);
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        list.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    std::fs::write(wpath, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn native_tensor_missing_from_safetensors() {
    let (d, path) = native_case();
    let wpath = d.path().join("model.safetensors");
    let mut removed = String::new();
    rewrite_safetensors(&wpath, |l| removed = l.remove(0).0);
    let msg = err("missing tensor", no_panic("missing tensor", || load_model(&path)));
    assert_names("missing tensor", &msg, &[&wpath.display().to_string(), &removed, "missing"]);
}

#[test]
fn native_shape_mismatch_between_json_and_safetensors() {
    // The JSON says one shape, the safetensors holds another.
    let (d, path) = native_case();
    let wpath = d.path().join("model.safetensors");
    let mut name = String::new();
    edit_json(&path, |v| {
        let (c, _) = first_conv(v);
        name = c["weight"].as_str().unwrap().to_string();
        let shape = v["params"][&name].as_array().unwrap().clone();
        let mut s: Vec<u64> = shape.iter().map(|x| x.as_u64().unwrap()).collect();
        s[0] += 1;
        v["params"][&name] = serde_json::json!(s);
    });
    let msg = err("json/safetensors shape mismatch", no_panic("shape mismatch", || load_model(&path)));
    assert_names("json/safetensors shape mismatch", &msg, &[&wpath.display().to_string(), &name, "shape"]);
    drop(d);

    // The safetensors tensor reshaped (same element count) behind the JSON's back.
    let (d, path) = native_case();
    let wpath = d.path().join("model.safetensors");
    let mut name = String::new();
    rewrite_safetensors(&wpath, |l| {
        let t = l.iter_mut().find(|(_, s, _)| s.len() == 4).unwrap();
        t.1 = vec![t.1.iter().product()];
        name = t.0.clone();
    });
    let msg = err("reshaped tensor", no_panic("reshaped tensor", || load_model(&path)));
    assert_names("reshaped tensor", &msg, &[&wpath.display().to_string(), &name]);
    drop(d);
}

#[test]
fn native_non_float_tensor_is_a_clear_error() {
    let (d, path) = native_case();
    let wpath = d.path().join("model.safetensors");
    let bytes = std::fs::read(&wpath).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let list: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = list
        .iter()
        .enumerate()
        .map(|(i, (n, s, b))| {
            let dt = if i == 0 { safetensors::Dtype::I32 } else { safetensors::Dtype::F32 };
            (n.clone(), safetensors::tensor::TensorView::new(dt, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&wpath, safetensors::serialize(views, None).unwrap()).unwrap();
    let msg = err("I32 tensor", no_panic("I32 tensor", || load_model(&path)));
    assert_names("I32 tensor", &msg, &[&wpath.display().to_string(), &list[0].0, "dtype"]);
    drop(d);
}

// ---------------------------------------------------------------------------------
// output paths (library)
// ---------------------------------------------------------------------------------

fn z01() -> (OnnxModel, repfuse::Fused) {
    let m = read_onnx(&fixture("z01_conv_bn")).unwrap();
    let f = Fuser::new(Backend::Cpu).fuse(&m.graph, &m.weights, &FuseOptions::default()).unwrap();
    (m, f)
}

#[test]
fn writing_into_a_missing_directory_names_the_path_and_creates_nothing() {
    let (m, f) = z01();
    let dir = tmp();
    for name in ["out.onnx", "out.json"] {
        let path = dir.path().join("does/not/exist").join(name);
        let msg = err(name, no_panic(name, || save_model(&path, Some(&m), &f.graph, &f.weights)));
        assert_names(name, &msg, &["does/not/exist"]);
        assert!(!dir.path().join("does").exists(), "{}: the missing directory was created", name);
        assert!(listing(dir.path()).is_empty(), "{}: left {:?}", name, listing(dir.path()));
    }
}

#[test]
fn writing_below_a_regular_file_names_the_path() {
    let (m, f) = z01();
    let dir = tmp();
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    let path = dir.path().join("afile/out.onnx");
    let msg = err("parent is a file", no_panic("parent is a file", || save_model(&path, Some(&m), &f.graph, &f.weights)));
    assert_names("parent is a file", &msg, &[&path.display().to_string()]);
    assert_eq!(listing(dir.path()), vec!["afile".to_string()]);
}

#[test]
fn writing_over_a_directory_leaves_no_temp_file() {
    let (m, f) = z01();
    let dir = tmp();
    let path = dir.path().join("out.onnx");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    let msg = err("target is a directory", no_panic("target is a directory", || save_model(&path, Some(&m), &f.graph, &f.weights)));
    assert_names("target is a directory", &msg, &[&path.display().to_string()]);
    assert_no_temp_files("target is a directory", dir.path());
    assert!(path.join("keep").exists());
}

#[test]
fn writing_with_an_unknown_extension_writes_nothing() {
    let (m, f) = z01();
    let dir = tmp();
    let path = dir.path().join("out.pb");
    let msg = err("unknown output extension", save_model(&path, Some(&m), &f.graph, &f.weights));
    assert_names("unknown output extension", &msg, &[&path.display().to_string()]);
    assert!(listing(dir.path()).is_empty());
}

#[cfg(unix)]
#[test]
fn writing_into_a_read_only_directory_names_the_path_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (m, f) = z01();
    let dir = tmp();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let root_can_write = std::fs::write(ro.join("probe"), b"x").is_ok();
    if root_can_write {
        // Root ignores the mode bits, so the write is made by the binary running as
        // `nobody` (setpriv drops the privileges): the same code path, a real EACCES.
        std::fs::remove_file(ro.join("probe")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let model = dir.path().join("in.onnx");
        std::fs::copy(fixture("z01_conv_bn"), &model).unwrap();
        std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o644)).unwrap();
        for name in ["out.onnx", "out.json"] {
            let path = ro.join(name);
            let o = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_repfuse"), "fuse"])
                .arg(&model)
                .arg("-o")
                .arg(&path)
                .args(["--backend", "cpu"])
                .output()
                .expect("setpriv (util-linux) runs the binary as nobody");
            assert_no_panic_output(name, &o);
            assert_eq!(o.status.code(), Some(1), "{}: as nobody into a 0o555 dir: {}", name, String::from_utf8_lossy(&o.stderr));
            let msg = String::from_utf8_lossy(&o.stderr).to_string();
            assert_names(name, &msg, &[&path.display().to_string()]);
            assert!(listing(&ro).is_empty(), "{}: left {:?}", name, listing(&ro));
        }
    } else {
        for name in ["out.onnx", "out.json"] {
            let path = ro.join(name);
            let msg = err(name, no_panic(name, || save_model(&path, Some(&m), &f.graph, &f.weights)));
            assert_names(name, &msg, &[&path.display().to_string()]);
            assert!(listing(&ro).is_empty(), "{}: left {:?}", name, listing(&ro));
        }
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(unix)]
#[test]
fn written_files_get_ordinary_permissions() {
    // An atomic write must not change what a plain write would give: the temp file's
    // private 0o600 mode must not leak into the deploy model (a model server running
    // as another user could not read it).
    use std::os::unix::fs::PermissionsExt;
    let (m, f) = z01();
    let dir = tmp();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let want = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    for name in ["out.onnx", "out.json", "out.safetensors"] {
        let path = dir.path().join(name);
        if name != "out.safetensors" {
            save_model(&path, Some(&m), &f.graph, &f.weights).unwrap();
        }
        let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, want, "{}: mode {:o}, a plain write gives {:o}", name, got, want);
    }
}

#[test]
fn native_write_failure_leaves_no_half_pair() {
    // The graph JSON cannot be written (its path is a directory): the weights file
    // must not be written (or replaced) either, else a new .safetensors sits beside
    // an old (or no) .json.
    let (m, f) = z01();
    let dir = tmp();
    let json = dir.path().join("out.json");
    std::fs::create_dir(&json).unwrap();
    let msg = err("native json unwritable", no_panic("native json unwritable", || save_model(&json, Some(&m), &f.graph, &f.weights)));
    assert_names("native json unwritable", &msg, &[&json.display().to_string()]);
    assert_no_temp_files("native json unwritable", dir.path());
    assert!(!dir.path().join("out.safetensors").exists(), "a failed native write left out.safetensors behind: {:?}", listing(dir.path()));

    // An existing pair: a failed write must keep the old weights.
    let dir = tmp();
    let json = dir.path().join("pair.json");
    let wpath = dir.path().join("pair.safetensors");
    std::fs::write(&wpath, b"OLD WEIGHTS").unwrap();
    std::fs::create_dir(&json).unwrap();
    let _ = no_panic("native json unwritable (existing pair)", || save_model(&json, Some(&m), &f.graph, &f.weights));
    assert_eq!(std::fs::read(&wpath).unwrap(), b"OLD WEIGHTS", "a failed native write replaced the existing .safetensors");
}

// ---------------------------------------------------------------------------------
// the binary: exit codes, messages, nothing written on failure
// ---------------------------------------------------------------------------------

fn corrupt_copy(dir: &Path) -> PathBuf {
    let mut b = std::fs::read(fixture("z13_repvgg_bn_branch")).unwrap();
    b.truncate(b.len() / 2);
    let p = dir.join("corrupt.onnx");
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn binary_on_a_corrupt_file_exits_1_naming_the_file() {
    let dir = tmp();
    let bad = corrupt_copy(dir.path());
    let out = dir.path().join("out.onnx");
    let good = fixture("z13_repvgg_bn_branch");
    let runs: Vec<(&str, Vec<&std::ffi::OsStr>)> = vec![
        ("fuse", vec![os("fuse"), bad.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]),
        ("fuse --verify --json", vec![os("fuse"), bad.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--json")]),
        ("inspect", vec![os("inspect"), bad.as_os_str()]),
        ("verify (first)", vec![os("verify"), bad.as_os_str(), good.as_os_str()]),
        ("verify (second)", vec![os("verify"), good.as_os_str(), bad.as_os_str()]),
    ];
    for (what, args) in runs {
        let o = repfuse_bin(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: exit code {:?}, stderr:\n{}", what, o.status.code(), stderr);
        assert_no_panic_output(what, &o);
        assert!(stderr.contains(&bad.display().to_string()), "{}: stderr does not name {}:\n{}", what, bad.display(), stderr);
        assert!(!out.exists(), "{}: an output was written", what);
    }
}

#[test]
fn binary_on_missing_and_empty_inputs_exits_1() {
    let dir = tmp();
    let missing = dir.path().join("missing.onnx");
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let out = dir.path().join("out.onnx");
    for input in [&missing, &empty] {
        let o = repfuse_bin(&[os("fuse"), input.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: stderr:\n{}", input.display(), stderr);
        assert_no_panic_output("missing/empty input", &o);
        assert!(stderr.contains(&input.display().to_string()), "stderr does not name {}:\n{}", input.display(), stderr);
        assert!(!out.exists());
    }
}

#[test]
fn binary_output_into_missing_directory_exits_1_naming_it() {
    let dir = tmp();
    let out = dir.path().join("nope/out.onnx");
    let o = repfuse_bin(&[os("fuse"), fixture("z01_conv_bn").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr:\n{}", stderr);
    assert_no_panic_output("missing output dir", &o);
    assert!(stderr.contains(&out.display().to_string()), "stderr does not name {}:\n{}", out.display(), stderr);
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn binary_failed_fusion_writes_nothing_and_keeps_existing_output() {
    let dir = tmp();
    let mut m = proto("z01_conv_bn");
    set_f32(init(&mut m, Z01_VAR), 1, -2.0);
    let input = write_proto(dir.path(), "negvar.onnx", &m);
    for name in ["new.onnx", "new.json"] {
        let out = dir.path().join(name);
        let o = repfuse_bin(&[os("fuse"), input.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: stderr:\n{}", name, stderr);
        assert_no_panic_output(name, &o);
        assert!(stderr.contains(Z01_VAR), "{}: stderr does not name the var tensor:\n{}", name, stderr);
        assert!(!out.exists(), "{}: written despite the error", name);
    }
    let out = dir.path().join("existing.onnx");
    std::fs::write(&out, b"OLD").unwrap();
    let o = repfuse_bin(&[os("fuse"), input.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify")]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"OLD", "an existing output was replaced by a failed fusion");
    assert_eq!(listing(dir.path()), vec!["existing.onnx".to_string(), "negvar.onnx".to_string()]);
}

#[test]
fn binary_on_a_truncated_file_that_protobuf_accepts_exits_1() {
    // Cut just after the graph field's length prefix: the protobuf runtime reads an
    // empty graph. Fusing that "model" and writing it would hide the damage.
    let bytes = std::fs::read(fixture("z01_conv_bn")).unwrap();
    let graph = *top_level_fields(&bytes).iter().find(|f| f.0 == 7).unwrap();
    let dir = tmp();
    let bad = dir.path().join("cut.onnx");
    std::fs::write(&bad, &bytes[..graph.2]).unwrap();
    let out = dir.path().join("out.onnx");
    let o = repfuse_bin(&[os("fuse"), bad.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_no_panic_output("truncated at the graph header", &o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a file truncated to {} bytes was fused (exit {:?}); stdout:\n{}",
        graph.2,
        o.status.code(),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr.contains(&bad.display().to_string()), "stderr does not name the file:\n{}", stderr);
    assert!(!out.exists(), "an output was written from a truncated file");
}

/// z02 fused with `--inject-fault` (its fused conv weight scaled by 1 + 1e-3, far
/// above rounding): verification must fail.
fn over_tolerance_model() -> PathBuf {
    fixture("z02_conv_bias_bn")
}

#[test]
fn binary_failed_verification_exits_2_writes_nothing_and_keeps_existing_output() {
    let dir = tmp();
    let input = over_tolerance_model();
    let out = dir.path().join("fresh.onnx");
    let o = repfuse_bin(&[os("fuse"), input.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--inject-fault")]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", stdout, String::from_utf8_lossy(&o.stderr));
    assert_no_panic_output("over tolerance", &o);
    assert!(!out.exists(), "an over-tolerance fusion was written");

    let existing = dir.path().join("existing.onnx");
    std::fs::write(&existing, b"OLD").unwrap();
    let o = repfuse_bin(&[
        os("fuse"),
        input.as_os_str(),
        os("-o"),
        existing.as_os_str(),
        os("--backend"),
        os("cpu"),
        os("--verify"),
        os("--json"),
        os("--inject-fault"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output is JSON");
    assert_eq!(v["written"], serde_json::json!(false));
    assert_eq!(std::fs::read(&existing).unwrap(), b"OLD", "an existing output was replaced by an over-tolerance fusion");
    assert_no_temp_files("over tolerance", dir.path());
}
