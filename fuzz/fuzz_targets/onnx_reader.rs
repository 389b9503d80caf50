//! Any bytes as an ONNX file: read, and when that works, fuse, compute the weights
//! and write ONNX back. Errors are fine; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.onnx");
    let Ok(m) = repfuse::io::onnx::read_onnx_bytes(path, data) else { return };
    // Bound the work a tiny file can ask for (huge dims are rejected by validation,
    // but a valid 1e8-element model would only make the fuzzer slow).
    if m.weights.bytes() > 64 << 20 {
        return;
    }
    let Ok(f) = repfuse::fuse(&m.graph, &Default::default()) else { return };
    let Ok(w) = f.weights_cpu(&m.weights) else { return };
    let _ = repfuse::io::onnx::onnx_bytes(Some(&m), &f.graph, &w);
});
