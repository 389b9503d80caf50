//! Prints the numbers of the closing notes: per fixture, op counts before/after and
//! the max error against PyTorch's own outputs; per zoo model, op counts, parameters,
//! FLOPs before/after and the measured error. `cargo run --release --example report`

use std::path::Path;

use repfuse::verify::{check_equivalence, compare, Tolerance};
use repfuse::{fuse, FuseOptions, Tensor};

fn io(dir: &Path) -> std::collections::BTreeMap<String, Tensor> {
    let path = dir.join("io.safetensors");
    let w = repfuse::io::native::read_safetensors(&path, &std::fs::read(&path).unwrap()).unwrap();
    w.iter().map(|(k, t)| (k.clone(), t.clone())).collect()
}

fn short(h: &std::collections::BTreeMap<String, usize>) -> String {
    h.iter()
        .filter(|(k, _)| ["Conv", "BatchNorm", "Add", "AvgPool", "Concat", "Linear"].contains(&k.as_str()))
        .map(|(k, v)| format!("{}{}", k, v))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures");
    let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("train.onnx").exists()).collect();
    dirs.sort();
    println!("| fixture | before | after | max abs vs PyTorch output_train | PyTorch's own fusion error |");
    println!("|---|---|---|---|---|");
    for d in dirs {
        let m = repfuse::io::onnx::read_onnx(&d.join("train.onnx")).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let w = f.weights_cpu(&m.weights).unwrap();
        let t = io(&d);
        let out = repfuse::cpu::forward(&f.graph, &w, &[("input".to_string(), t["input"].clone())].into_iter().collect()).unwrap();
        let s = compare(&out[&f.graph.outputs[0]], &t["output_train"], Tolerance::for_graph(&m.graph)).unwrap();
        let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
        println!(
            "| {} | {} | {} | {:.2e} | {:.2e} |",
            d.file_name().unwrap().to_string_lossy(),
            short(&f.report.ops_before),
            short(&f.report.ops_after),
            s.max_abs,
            exp["max_abs_diff_torch"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("\n| zoo model (1x3x224x224) | before | after | params | GFLOPs | max abs / rel error (end to end, CPU ref) |");
    println!("|---|---|---|---|---|---|");
    for z in repfuse::zoo::MODELS {
        let (g, w, _) = repfuse::zoo::build(z.name, 1, 224, 1).unwrap();
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        let e = check_equivalence(&g, &w, &f.graph, &fw, 7).unwrap();
        let r = &f.report;
        println!(
            "| {} | {} | {} | {:.2}M -> {:.2}M | {:.2} -> {:.2} | {:.1e} / {:.1e} {} |",
            z.name,
            short(&r.ops_before),
            short(&r.ops_after),
            r.params_before as f64 / 1e6,
            r.params_after as f64 / 1e6,
            r.flops_before as f64 / 1e9,
            r.flops_after as f64 / 1e9,
            e.max_abs(),
            e.max_rel(),
            if e.passed() { "pass" } else { "FAIL" }
        );
    }
}
