//! One function per subcommand. Each returns the process exit code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::table;
use repfuse::io::onnx::FloatType;
use repfuse::verify::{check_equivalence, check_equivalence_with, unrunnable_ops, Equivalence, Tolerance};
use repfuse::{Backend, FuseOptions, Fuser};

/// Exit codes, documented in `--help`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_OVER_TOLERANCE: i32 = 2;

fn print_equivalence(e: &Equivalence) {
    for (name, s) in &e.outputs {
        crate::say!(
            "  output {:<20} max_abs {:.3e}  max_rel {:.3e}  worst element at {:.3} of its bound ({:.0} x u={:.1e} x scale)  {}",
            name,
            s.max_abs,
            s.max_rel,
            s.worst_ratio,
            s.tolerance.sigmas,
            s.tolerance.unit,
            if s.passed() { "PASS" } else { "FAIL" }
        );
    }
}

pub fn demo(model: &str, size: usize, backend: Backend, json_out: bool) -> Result<i32> {
    let (g, w, m) = repfuse::zoo::build(model, 1, size, 2024)
        .with_context(|| format!("no zoo model `{}`; try one of: {}", model, repfuse::zoo::MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")))?;
    let fuser = Fuser::new(backend);
    let t = Instant::now();
    let fused = fuser.fuse(&g, &w, &FuseOptions::default())?;
    let fuse_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let eq = check_equivalence(&g, &w, &fused.graph, &fused.weights, 7)?;
    let verify_ms = t.elapsed().as_secs_f64() * 1e3;
    let code = if eq.passed() { EXIT_OK } else { EXIT_OVER_TOLERANCE };
    if json_out {
        crate::say!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"model": m.name, "input": [1, 3, size, size], "backend": fused.backend, "backend_reason": fused.backend_reason, "fuse_ms": fuse_ms, "verify_ms": verify_ms, "report": fused.report, "verification": eq, "passed": eq.passed()})
            )?
        );
        return Ok(code);
    }
    crate::say!("repfuse demo: {} (training form, random weights and BN statistics), input 1x3x{}x{}", m.name, size, size);
    crate::say!("backend: {:?} ({})\n", fused.backend, fused.backend_reason);
    table::print_report(&fused.report);
    crate::say!(
        "\n  fused in {:.1} ms ({} plan steps); published deploy form has {} convs, repfuse made {}",
        fuse_ms,
        fused.report.plan_steps,
        m.deploy_convs,
        fused.graph.count("Conv")
    );
    crate::say!("\nverification on the CPU reference (f64 sums), seeded random input, {:.0} ms:", verify_ms);
    print_equivalence(&eq);
    Ok(code)
}

pub struct FuseArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub backend: Backend,
    pub verify: bool,
    pub json: bool,
    pub compose_cost_limit: f64,
    pub widen_shortcuts: bool,
    /// Write a half-precision ONNX model as float32.
    pub f32: bool,
    /// Perturb the first fused weight (tests that verification catches it).
    pub inject_fault: bool,
}

/// The fused weights with the first weight of the first fused node scaled by 1 + 1e-3:
/// a defect far above f32 rounding, for testing the verifier end to end.
fn inject_fault(fused: &repfuse::Fused) -> repfuse::Weights {
    let mut w = fused.weights.clone();
    let first = fused.origins.keys().next().and_then(|n| fused.graph.node(n)).and_then(|n| match &n.op {
        repfuse::graph::Op::Conv2d(c) => Some(c.weight.clone()),
        repfuse::graph::Op::Linear(l) => Some(l.weight.clone()),
        _ => None,
    });
    if let Some(name) = first {
        let t = w.get(&name).expect("deploy weights hold every deploy parameter").clone();
        let data = t.data().iter().map(|v| v * (1.0 + 1e-3)).collect();
        w.insert(name.clone(), repfuse::Tensor::new(&name, t.shape().to_vec(), data).expect("same shape"));
    }
    w
}

pub fn fuse(a: &FuseArgs) -> Result<i32> {
    let t = Instant::now();
    let pb = super::spinner(a.json, &format!("reading {}", a.input.display()));
    let mut model = repfuse::io::load_model(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    // The file's own float type: the engine runs the file as read, in that precision.
    let file_unit = model.onnx.as_ref().map_or(Tolerance::F32.unit, |m| Tolerance::for_float(m.float_type).unit);
    if a.f32 {
        model.onnx = model.onnx.map(|m| m.as_f32()).transpose().context("--f32")?;
    }
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    pb.set_message("fusing");
    let fuser = Fuser::new(a.backend);
    let t = Instant::now();
    let mut fused = fuser.fuse(&model.graph, &model.weights, &FuseOptions { compose_cost_limit: a.compose_cost_limit, widen_shortcuts: a.widen_shortcuts })?;
    if a.inject_fault {
        fused.weights = inject_fault(&fused);
    }
    let fuse_ms = t.elapsed().as_secs_f64() * 1e3;
    // Verify the model as it will be written: weights rounded to the file's float type.
    let half = model.onnx.as_ref().is_some_and(|m| m.float_type != FloatType::F32) && is_onnx(&a.output);
    let written_w = match model.onnx.as_ref().map(|m| m.float_type) {
        Some(ft) if half => round_weights(&fused.weights, ft),
        _ => fused.weights.clone(),
    };
    pb.set_message("verifying");
    let tol = match model.onnx.as_ref() {
        Some(m) if half => Tolerance::for_float(m.float_type),
        _ => Tolerance::F32,
    };
    let (checks, skipped) = if a.verify { end_to_end(&model, &a.input, &fused.graph, &written_w, tol, file_unit)? } else { (vec![], None) };
    // The first check reported is the tightest one that ran (the reference's).
    let e2e = checks.first();
    let eq = e2e.map(|e| e.equivalence.clone());
    let all_passed = checks.iter().all(|c| c.equivalence.passed());
    let regions = if a.verify { region_checks(&model, &fused, &written_w, tol)? } else { vec![] };
    let region_fail = regions.iter().any(|r| r.error.as_ref().is_some_and(|e| !e.passed()));
    let code = if !all_passed || region_fail { EXIT_OVER_TOLERANCE } else { EXIT_OK };
    pb.set_message(format!("writing {}", a.output.display()));
    // A fusion that fails verification is not written: no deploy model that lies.
    if code == EXIT_OK {
        repfuse::io::save_model(&a.output, model.onnx.as_ref(), &fused.graph, &fused.weights).with_context(|| format!("writing {}", a.output.display()))?;
    }
    pb.finish_and_clear();
    if a.json {
        crate::say!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"input": a.input, "output": a.output, "written": code == EXIT_OK, "backend": fused.backend, "backend_reason": fused.backend_reason, "read_ms": read_ms, "fuse_ms": fuse_ms, "report": fused.report, "verification": eq, "verification_engine": e2e.map(|e| &e.engine), "verifications": checks.iter().map(|c| json!({"engine": c.engine, "verification": c.equivalence, "passed": c.equivalence.passed()})).collect::<Vec<_>>(), "verification_skipped": skipped, "regions": regions})
            )?
        );
        return Ok(code);
    }
    crate::say!("{} -> {}  (backend {:?}: {})\n", a.input.display(), a.output.display(), fused.backend, fused.backend_reason);
    table::print_report(&fused.report);
    crate::say!("\n  read {:.1} ms, fused {:.1} ms, {} regions fused", read_ms, fuse_ms, fused.report.fused.len());
    for e in &checks {
        crate::say!("\nend-to-end verification ({}, seeded random input):", e.engine);
        print_equivalence(&e.equivalence);
    }
    if let Some(s) = skipped {
        crate::say!("\nend-to-end verification NOT done: {}", s);
    }
    if a.verify {
        let checked: Vec<_> = regions.iter().filter_map(|r| r.error.as_ref()).collect();
        let worst = checked.iter().map(|e| e.max_abs).fold(0.0, f64::max);
        crate::say!(
            "regions checked alone (CPU reference): {} of {} (max abs error {:.3e}, {} over tolerance, {} skipped)",
            checked.len(),
            regions.len(),
            worst,
            checked.iter().filter(|e| !e.passed()).count(),
            regions.len() - checked.len()
        );
        let mut reasons: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for r in &regions {
            if let Some(why) = &r.skipped {
                *reasons.entry(why.split(" (").next().unwrap_or(why)).or_default() += 1;
            }
        }
        for (why, n) in reasons {
            crate::say!("  skipped {}: {}", n, why);
        }
    }
    if code != EXIT_OK {
        crate::say!("\nnot written: the fused model is over tolerance");
    }
    Ok(code)
}

/// An end-to-end check and the engine that ran it.
struct EndToEnd {
    equivalence: Equivalence,
    engine: String,
}

/// Runs the original model and the fused one on seeded inputs: on the f64 CPU
/// reference when it can run every op, and (ONNX input) on the ONNX engine, the file
/// as read against the fused model as it will be written, which also checks what the
/// reader lifted. `Ok((vec![], Some(why)))` when neither can.
fn end_to_end(
    model: &repfuse::io::LoadedModel,
    input: &Path,
    fg: &repfuse::Graph,
    fw: &repfuse::Weights,
    tol: Tolerance,
    file_unit: f64,
) -> Result<(Vec<EndToEnd>, Option<String>)> {
    let mut checks = vec![];
    let ops = unrunnable_ops(&model.graph);
    if ops.is_empty() {
        let eq = check_equivalence_with(&model.graph, &model.weights, fg, fw, 7, tol)?;
        checks.push(EndToEnd { equivalence: eq, engine: "CPU reference, f64 sums, per-element error scale".into() });
    }
    let Some(onnx) = &model.onnx else {
        let why = format!("the graph has ops the reference cannot run ({}) and is not ONNX", ops.join(", "));
        return Ok((checks, (!ops.is_empty()).then_some(why)));
    };
    let original = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let fused = repfuse::io::onnx::onnx_bytes(Some(onnx), fg, fw)?;
    let dir = input.parent();
    let src = |bytes| repfuse::verify::OnnxSource { bytes, dir };
    let tol = Tolerance::for_engine(repfuse::verify::depth_all(&model.graph), tol.unit.max(file_unit));
    match repfuse::verify::check_equivalence_onnx(&src(&original), &src(&fused), &model.graph.inputs, 7, tol) {
        Ok(c) => checks.push(EndToEnd { equivalence: c.equivalence, engine: c.engine }),
        Err(e) if checks.is_empty() => return Ok((checks, Some(format!("the reference cannot run {} and the ONNX engine failed: {}", ops.join(", "), e)))),
        Err(e) => tracing::warn!("the ONNX engine could not run the model ({}); the reference checked it", e),
    }
    Ok((checks, None))
}

/// Every fused region run alone on the CPU reference (shapes past carried ops come
/// from the reader's engine analysis, kept in the graph).
fn region_checks(model: &repfuse::io::LoadedModel, fused: &repfuse::Fused, fw: &repfuse::Weights, tol: Tolerance) -> Result<Vec<repfuse::verify::RegionCheck>> {
    Ok(repfuse::verify::check_regions_with(&model.graph, &model.weights, &fused.graph, &fused.origins, fw, 7, tol)?)
}

fn is_onnx(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The weights as a file of float type `ft` stores them.
fn round_weights(w: &repfuse::Weights, ft: FloatType) -> repfuse::Weights {
    let mut out = repfuse::Weights::new();
    for (k, t) in w.iter() {
        let d: Vec<f32> = t.data().iter().map(|v| ft.round(*v)).collect();
        out.insert(k.clone(), repfuse::Tensor::new(k, t.shape().to_vec(), d).expect("same shape"));
    }
    out
}

pub fn verify(original: &Path, fused: &Path, seed: u64, json_out: bool) -> Result<i32> {
    let a = repfuse::io::load_model(original).with_context(|| format!("reading {}", original.display()))?;
    let b = repfuse::io::load_model(fused).with_context(|| format!("reading {}", fused.display()))?;
    anyhow::ensure!(a.graph.inputs == b.graph.inputs, "the models take different inputs: {:?} vs {:?}", a.graph.inputs, b.graph.inputs);
    // The coarser of the two files' float types bounds the rounding of the weights.
    let tol =
        [&a, &b]
            .iter()
            .filter_map(|m| m.onnx.as_ref().map(|o| Tolerance::for_float(o.float_type)))
            .fold(Tolerance::F32, |t, u| if u.unit > t.unit { u } else { t });
    let unrunnable: Vec<String> = [&a, &b].iter().flat_map(|m| unrunnable_ops(&m.graph)).collect();
    let mut checks: Vec<EndToEnd> = vec![];
    if unrunnable.is_empty() {
        let eq = check_equivalence_with(&a.graph, &a.weights, &b.graph, &b.weights, seed, tol)?;
        checks.push(EndToEnd { equivalence: eq, engine: "CPU reference, f64 sums, per-element error scale".into() });
    }
    if a.onnx.is_some() && b.onnx.is_some() {
        // The files as they are, through an independent engine (it also checks what
        // repfuse's reader made of them).
        let (ba, bb) = (std::fs::read(original)?, std::fs::read(fused)?);
        let (sa, sb) = (repfuse::verify::OnnxSource { bytes: &ba, dir: original.parent() }, repfuse::verify::OnnxSource { bytes: &bb, dir: fused.parent() });
        let t = Tolerance::for_engine(repfuse::verify::depth_all(&a.graph), tol.unit);
        match repfuse::verify::check_equivalence_onnx(&sa, &sb, &a.graph.inputs, seed, t) {
            Ok(c) => checks.push(EndToEnd { equivalence: c.equivalence, engine: c.engine }),
            Err(e) if checks.is_empty() => {
                return Err(anyhow::anyhow!("the reference cannot run ops {} and the ONNX engine failed: {}", unrunnable.join(", "), e))
            }
            Err(e) => tracing::warn!("the ONNX engine could not run the models ({}); the reference checked them", e),
        }
    }
    anyhow::ensure!(!checks.is_empty(), "the reference cannot run ops {} and the ONNX engine needs two ONNX files", unrunnable.join(", "));
    let passed = checks.iter().all(|c| c.equivalence.passed());
    let (eq, engine) = (&checks[0].equivalence, &checks[0].engine);
    if json_out {
        let all: Vec<serde_json::Value> =
            checks.iter().map(|c| json!({"engine": c.engine, "verification": c.equivalence, "passed": c.equivalence.passed()})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"original": original, "fused": fused, "seed": seed, "engine": engine, "verification": eq, "verifications": all, "passed": passed})
            )?
        );
    } else {
        for c in &checks {
            crate::say!("{} vs {} (seed {}, {}):", original.display(), fused.display(), seed, c.engine);
            print_equivalence(&c.equivalence);
        }
    }
    Ok(if passed { EXIT_OK } else { EXIT_OVER_TOLERANCE })
}

pub fn inspect(input: &Path, json_out: bool) -> Result<i32> {
    let model = repfuse::io::load_model(input).with_context(|| format!("reading {}", input.display()))?;
    let f = repfuse::fuse(&model.graph, &FuseOptions::default())?;
    if json_out {
        crate::say!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"input": input, "inputs": model.graph.inputs, "outputs": model.graph.outputs, "report": f.report, "unrunnable_ops": unrunnable_ops(&model.graph)})
            )?
        );
        return Ok(EXIT_OK);
    }
    crate::say!(
        "{}: {} nodes, inputs {:?}\n",
        input.display(),
        model.graph.nodes.len(),
        model.graph.inputs.iter().map(|i| (&i.name, &i.shape)).collect::<Vec<_>>()
    );
    table::print_report(&f.report);
    crate::say!("\n  fusable regions ({}):", f.report.fused.len());
    for r in &f.report.fused {
        crate::say!("    {:<16} {} <- [{}]", r.rule, r.into, r.from.join(", "));
    }
    Ok(EXIT_OK)
}

pub fn adapters(json_out: bool) -> Result<i32> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let rows: Vec<serde_json::Value> = adapters
        .iter()
        .map(|a| {
            let (i, l) = (a.get_info(), a.limits());
            json!({"name": i.name, "backend": format!("{:?}", i.backend), "device_type": format!("{:?}", i.device_type), "driver": i.driver, "driver_info": i.driver_info,
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size, "max_buffer_size": l.max_buffer_size,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension, "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "timestamp_query": a.features().contains(wgpu::Features::TIMESTAMP_QUERY)})
        })
        .collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        crate::say!("no GPU adapters (install a Vulkan driver; mesa-vulkan-drivers gives lavapipe)");
    } else {
        let t: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                ["name", "backend", "device_type", "driver", "max_storage_buffer_binding_size", "max_compute_workgroups_per_dimension", "timestamp_query"]
                    .iter()
                    .map(|k| r[k].to_string().trim_matches('"').to_string())
                    .collect()
            })
            .collect();
        table::print(&["name", "backend", "type", "driver", "max binding", "max groups/dim", "timestamps"], &t);
    }
    Ok(EXIT_OK)
}

pub fn bench(models: &[String], backend: Backend, reps: usize, forward_size: Option<usize>, save: bool, json_out: bool) -> Result<i32> {
    let models: Vec<String> =
        if models.is_empty() { ["repvgg_a0", "repvgg_b0", "mobileone_s0"].iter().map(|s| s.to_string()).collect() } else { models.to_vec() };
    let gpu = match backend {
        Backend::Cpu => None,
        _ => match repfuse::gpu::GpuContext::new() {
            Ok(c) => Some(c),
            Err(e) if backend == Backend::Gpu => return Err(e.into()),
            Err(e) => {
                eprintln!("no GPU adapter ({}): CPU only", e);
                None
            }
        },
    };
    let opts = repfuse::bench::BenchOptions { reps, forward_size };
    let mut results = vec![];
    let pb = if super::quiet() || json_out { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(models.len() as u64) };
    for m in &models {
        pb.set_message(m.clone());
        results.push(repfuse::bench::bench_model(m, gpu.as_ref(), &opts)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let conv = gpu.as_ref().map(|c| repfuse::bench::bench_conv(c, 64, 56, reps.min(3))).transpose()?;
    let adapter = gpu.as_ref().map(|c| json!({"name": c.info.name, "backend": format!("{:?}", c.info.backend), "device_type": format!("{:?}", c.info.device_type), "driver": c.info.driver, "driver_info": c.info.driver_info}));
    let doc = json!({"adapter": adapter, "cpu_threads": rayon::current_num_threads(), "models": results, "conv3x3": conv});
    if save {
        let name = gpu
            .as_ref()
            .map_or("cpu-only".to_string(), |c| c.info.name.to_lowercase().chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' }).collect());
        let path = Path::new("benches/results").join(format!("{}.json", name));
        std::fs::create_dir_all("benches/results")?;
        repfuse::io::write_atomic(&path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        eprintln!("saved {}", path.display());
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(EXIT_OK);
    }
    if let Some(c) = &gpu {
        crate::say!("adapter: {} ({:?}, {:?})", c.info.name, c.info.backend, c.info.device_type);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                format!("{:.1}", (r.bytes_read + r.bytes_written) as f64 / 1e6),
                format!("{:.1}", r.rewrite_ms),
                format!("{:.1}", r.cpu_plan_ms),
                format!("{:.2}", r.memcpy_ms),
                format!("{:.1}x", r.cpu_ratio_to_memcpy),
                r.gpu.as_ref().map_or("-".into(), |g| format!("{:.1} ({})", g.plan_ms, g.compute_ms.map_or("-".into(), |c| format!("{:.1}", c)))),
                r.gpu.as_ref().map_or("-".into(), |g| format!("{:.0}%", g.bandwidth_fraction * 100.0)),
                r.forward.as_ref().map_or("-".into(), |f| format!("{:.2}x", f.speedup)),
            ]
        })
        .collect();
    table::print(&["model", "MB r+w", "rewrite ms", "cpu plan ms", "memcpy ms", "cpu/memcpy", "gpu plan ms (compute)", "gpu vs copy", "fwd speedup"], &rows);
    if let Some(c) = conv {
        crate::say!("\n  {}: WGSL {:.2} GFLOP/s ({:.0} ms), CPU reference {:.2} GFLOP/s ({:.0} ms)", c.shape, c.gpu_gflops, c.gpu_ms, c.cpu_gflops, c.cpu_ms);
    }
    Ok(EXIT_OK)
}
