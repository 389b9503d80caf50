//! Any bytes as a native model (JSON graph + safetensors, split at the first byte's
//! position): read and fuse. Errors are fine; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = (data[0] as usize * data.len() / 256).min(data.len());
    let (json, st) = data[1..].split_at(cut.saturating_sub(1).min(data.len() - 1));
    let path = std::path::Path::new("fuzz.json");
    let Ok((g, w)) = repfuse::io::native::read_native_bytes(path, json, st) else { return };
    if w.bytes() > 64 << 20 {
        return;
    }
    if let Ok(f) = repfuse::fuse(&g, &Default::default()) {
        let _ = f.weights_cpu(&w);
    }
});
