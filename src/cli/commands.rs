//! One function per subcommand. Each returns the process exit code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::table;
use crate::pipeline::{checks_json, DeployOptions};
use crate::verify::{check_equivalence, Equivalence, OnnxSource};
use crate::{Backend, FuseOptions, Fuser};

/// Exit codes, documented in `--help`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_OVER_TOLERANCE: i32 = 2;

fn print_equivalence(e: &Equivalence) {
    for (name, s) in &e.outputs {
        // The conditioning term, where the engine measured it (see `Tolerance::sensitivity`).
        let conditioned = if s.tolerance.sensitivity > 0.0 {
            format!(", or {:.1e} = {:.0} x the output's move under one-ulp input changes", s.tolerance.sensitivity, crate::verify::SENSITIVITY_SIGMAS)
        } else {
            String::new()
        };
        crate::say!(
            "  output {:<20} max_abs {:.3e}  max_rel {:.3e}  worst element at {:.3} of its bound ({:.0} x u={:.1e} x scale{})  {}",
            name,
            s.max_abs,
            s.max_rel,
            s.worst_ratio,
            s.tolerance.sigmas,
            s.tolerance.unit,
            conditioned,
            if s.passed() { "PASS" } else { "FAIL" }
        );
        if s.inconclusive() {
            crate::say!(
                "    INCONCLUSIVE: one-ulp input changes (u={:.1e}) move this output by {:.1e}, {:.1}% of its largest value {:.1e}: rounding at this precision, as this network amplifies it, is too large for this comparison to tell a defect of that size from rounding; the regions checked alone are the proof",
                s.tolerance.unit,
                s.tolerance.sensitivity / crate::verify::SENSITIVITY_SIGMAS,
                100.0 * s.tolerance.sensitivity / crate::verify::SENSITIVITY_SIGMAS / s.reference_max,
                s.reference_max
            );
        }
    }
}

pub fn demo(model: &str, size: usize, backend: Backend, json_out: bool) -> Result<i32> {
    let (g, w, m) = crate::zoo::build(model, 1, size, 2024)
        .with_context(|| format!("no zoo model `{}`; try one of: {}", model, crate::zoo::MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")))?;
    let fuser = Fuser::new(backend);
    let t = Instant::now();
    let fused = fuser.fuse(&g, &w, &FuseOptions::default())?;
    let fuse_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let eq = check_equivalence(&g, &w, &fused.graph, &fused.weights, 7)?;
    let verify_ms = t.elapsed().as_secs_f64() * 1e3;
    let code = if eq.passed() { EXIT_OK } else { EXIT_OVER_TOLERANCE };
    if json_out {
        println!(
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

/// `repfuse fuse`'s arguments.
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

/// Reads a model file: the IR and, for ONNX, the bytes as read.
fn load(path: &Path) -> Result<(crate::io::LoadedModel, Option<crate::io::FileBytes>)> {
    let t = Instant::now();
    // read_model's errors name the file already.
    let read = crate::io::read_model(path)?;
    tracing::info!(ms = t.elapsed().as_secs_f64() * 1e3, "read {}", path.display());
    Ok(read)
}

pub fn fuse(a: &FuseArgs) -> Result<i32> {
    let t = Instant::now();
    let pb = super::spinner(a.json, &format!("reading {}", a.input.display()));
    let (model, bytes) = load(&a.input)?;
    // The file as read is only needed by the ONNX engine's check: unmap it otherwise.
    let bytes = bytes.filter(|_| a.verify);
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    pb.set_message("fusing and verifying");
    let opts = DeployOptions {
        fuse: FuseOptions { compose_cost_limit: a.compose_cost_limit, widen_shortcuts: a.widen_shortcuts, ..Default::default() },
        verify: a.verify,
        f32: a.f32,
        inject_fault: a.inject_fault,
    };
    let source = bytes.as_deref().map(|b| OnnxSource { bytes: b, dir: a.input.parent() });
    let d = crate::pipeline::deploy(model, source.as_ref(), &Fuser::new(a.backend), &opts).context(if a.f32 { "--f32" } else { "fusing" })?;
    let code = if d.passed() { EXIT_OK } else { EXIT_OVER_TOLERANCE };
    pb.set_message(format!("writing {}", a.output.display()));
    // A fusion that fails verification is not written: no deploy model that lies.
    let t = Instant::now();
    if code == EXIT_OK {
        d.save(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    }
    let write_ms = t.elapsed().as_secs_f64() * 1e3;
    pb.finish_and_clear();
    if a.json {
        let mut doc = d.to_json();
        doc["input"] = json!(a.input);
        doc["output"] = json!(a.output);
        doc["written"] = json!(code == EXIT_OK);
        doc["read_ms"] = json!(read_ms);
        doc["write_ms"] = json!(write_ms);
        doc["peak_rss_bytes"] = json!(crate::bench::e2e::peak_rss_bytes());
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    let fused = &d.fused;
    crate::say!("{} -> {}  (backend {:?}: {})\n", a.input.display(), a.output.display(), fused.backend, fused.backend_reason);
    table::print_report(&fused.report);
    crate::say!("\n  read {:.1} ms, fused {:.1} ms, written {:.1} ms, {} regions fused", read_ms, d.fuse_ms, write_ms, fused.report.fused.len());
    for e in &d.checks {
        crate::say!("\nend-to-end verification ({}, seeded random input):", e.engine);
        print_equivalence(&e.equivalence);
    }
    if let Some(s) = &d.skipped {
        crate::say!("\nend-to-end verification NOT done: {}", s);
    }
    if a.verify {
        print_regions(&d.regions);
    }
    if code != EXIT_OK {
        crate::say!("\nnot written: the fused model is over tolerance");
    }
    Ok(code)
}

fn print_regions(regions: &[crate::verify::RegionCheck]) {
    let checked: Vec<_> = regions.iter().filter_map(|r| r.error.as_ref()).collect();
    let worst = checked.iter().map(|e| e.max_abs).fold(0.0, f64::max);
    let covered = regions.iter().filter(|r| r.covered_by.is_some()).count();
    crate::say!(
        "regions checked alone (CPU reference): {} of {} (max abs error {:.3e}, {} over tolerance, {} inside a larger checked region, {} skipped)",
        checked.len(),
        regions.len(),
        worst,
        checked.iter().filter(|e| !e.passed()).count(),
        covered,
        regions.len() - checked.len() - covered
    );
    let mut reasons: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in regions {
        if let Some(why) = &r.skipped {
            *reasons.entry(why.split(" (").next().unwrap_or(why)).or_default() += 1;
        }
    }
    for (why, n) in reasons {
        crate::say!("  skipped {}: {}", n, why);
    }
}

pub fn verify(original: &Path, fused: &Path, seed: u64, json_out: bool) -> Result<i32> {
    let (a, ba) = load(original)?;
    let (b, bb) = load(fused)?;
    let sa = ba.as_deref().map(|bytes| OnnxSource { bytes, dir: original.parent() });
    let sb = bb.as_deref().map(|bytes| OnnxSource { bytes, dir: fused.parent() });
    let checks = crate::pipeline::compare_models(&a, sa.as_ref(), &b, sb.as_ref(), seed)?;
    let passed = checks.iter().all(|c| c.equivalence.passed());
    if json_out {
        let (eq, engine) = (&checks[0].equivalence, &checks[0].engine);
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"original": original, "fused": fused, "seed": seed, "engine": engine, "verification": eq, "verifications": checks_json(&checks), "passed": passed})
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
    let model = crate::io::load_model(input)?;
    let (report, mut doc) = crate::pipeline::inspect(&model)?;
    if json_out {
        doc["input"] = json!(input);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(EXIT_OK);
    }
    crate::say!(
        "{}: {} nodes, inputs {:?}\n",
        input.display(),
        model.graph.nodes.len(),
        model.graph.inputs.iter().map(|i| (&i.name, &i.shape)).collect::<Vec<_>>()
    );
    table::print_report(&report);
    table::print_carried(&report);
    crate::say!("\n  fusable regions ({}):", report.fused.len());
    for r in &report.fused {
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

/// `repfuse bench`'s arguments.
pub struct BenchArgs {
    pub models: Vec<String>,
    pub onnx: Vec<PathBuf>,
    pub scaling: bool,
    pub backend: Backend,
    pub reps: usize,
    pub forward_size: Option<usize>,
    pub save: bool,
    pub json: bool,
}

pub fn bench(a: &BenchArgs) -> Result<i32> {
    let (backend, reps, forward_size, save, json_out) = (a.backend, a.reps, a.forward_size, a.save, a.json);
    let files_only = a.models.is_empty() && (!a.onnx.is_empty() || a.scaling);
    let models: Vec<String> = if files_only {
        vec![]
    } else if a.models.is_empty() {
        ["repvgg_a0", "repvgg_b0", "mobileone_s0"].iter().map(|s| s.to_string()).collect()
    } else {
        a.models.clone()
    };
    let exe = std::env::current_exe().ok();
    let files: Vec<crate::bench::e2e::FileBench> =
        a.onnx.iter().map(|f| crate::bench::e2e::bench_file(f, reps, exe.as_deref())).collect::<crate::Result<_>>()?;
    let scaling = if a.scaling { crate::bench::e2e::rewrite_scaling(&[100, 300, 1000, 3000, 10000], reps.min(3))? } else { vec![] };
    let gpu = match backend {
        _ if files_only => None,
        Backend::Cpu => None,
        _ => match crate::gpu::GpuContext::new() {
            Ok(c) => Some(c),
            Err(e) if backend == Backend::Gpu => return Err(e.into()),
            Err(e) => {
                eprintln!("no GPU adapter ({}): CPU only", e);
                None
            }
        },
    };
    let opts = crate::bench::BenchOptions { reps, forward_size };
    let mut results = vec![];
    let pb = if super::quiet() || json_out { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(models.len() as u64) };
    for m in &models {
        pb.set_message(m.clone());
        results.push(crate::bench::bench_model(m, gpu.as_ref(), &opts)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let conv = gpu.as_ref().map(|c| crate::bench::bench_conv(c, 64, 56, reps.clamp(3, 7))).transpose()?;
    let adapter = gpu.as_ref().map(|c| json!({"name": c.info.name, "backend": format!("{:?}", c.info.backend), "device_type": format!("{:?}", c.info.device_type), "driver": c.info.driver, "driver_info": c.info.driver_info}));
    let doc = json!({"adapter": adapter, "cpu_threads": rayon::current_num_threads(), "models": results, "conv3x3": conv, "files": files, "rewrite_scaling": scaling});
    if save {
        let name = gpu
            .as_ref()
            .map_or("cpu-only".to_string(), |c| c.info.name.to_lowercase().chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' }).collect());
        let path = Path::new("benches/results").join(format!("{}.json", name));
        std::fs::create_dir_all("benches/results")?;
        crate::io::write_atomic(&path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        eprintln!("saved {}", path.display());
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(EXIT_OK);
    }
    if let Some(c) = &gpu {
        crate::say!("adapter: {} ({:?}, {:?})", c.info.name, c.info.backend, c.info.device_type);
    }
    print_files(&files, &scaling);
    if files_only {
        return Ok(EXIT_OK);
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
    let kernel_rows: Vec<Vec<String>> = results
        .iter()
        .flat_map(|r| {
            r.gpu.iter().flat_map(move |g| {
                g.kernels.iter().map(move |k| {
                    vec![
                        r.model.clone(),
                        k.kernel.clone(),
                        format!("{:.2}", k.ms),
                        format!("{:.1}", k.bytes as f64 / 1e6),
                        format!("{:.2}", k.gb_per_s),
                        format!("{:.1}%", k.fraction_of_copy * 100.0),
                        format!("{:.1}%", k.fraction_of_shader_copy * 100.0),
                        k.gflop_per_s.map_or_else(|| "-".into(), |g| format!("{:.2}", g)),
                    ]
                })
            })
        })
        .collect();
    if !kernel_rows.is_empty() {
        crate::say!("");
        table::print(&["model", "kernel", "ms", "MB r+w", "GB/s", "of device copy", "of shader copy", "GFLOP/s"], &kernel_rows);
        for r in &results {
            if let Some(g) = &r.gpu {
                crate::say!(
                    "  {}: copy.wgsl (the compute roofline) {:.2} ms at {} workgroups = {:.0}% of the device copy",
                    r.model,
                    g.shader_copy_ms,
                    g.shader_copy_workgroups,
                    g.shader_copy_fraction * 100.0
                );
            }
        }
    }
    if let Some(c) = conv {
        crate::say!(
            "\n  {}: WGSL ({:?} kernel) {:.2} GFLOP/s ({:.0} ms), CPU reference {:.2} GFLOP/s ({:.0} ms): {:.0}% of the CPU",
            c.shape,
            c.kernel,
            c.gpu_gflops,
            c.gpu_ms,
            c.cpu_gflops,
            c.cpu_ms,
            100.0 * c.gpu_gflops / c.cpu_gflops
        );
    }
    Ok(EXIT_OK)
}

/// The end-to-end table and the scaling series.
fn print_files(files: &[crate::bench::e2e::FileBench], scaling: &[crate::bench::e2e::ScalePoint]) {
    if !files.is_empty() {
        let rows: Vec<Vec<String>> = files
            .iter()
            .map(|f| {
                vec![
                    Path::new(&f.file).iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<PathBuf>().display().to_string(),
                    format!("{:.1}", f.bytes_read as f64 / 1e6),
                    format!("{:.1}", f.read_ms),
                    format!("{:.1}", f.rewrite_ms),
                    format!("{:.1}", f.plan_ms),
                    format!("{:.1}", f.write_ms),
                    format!("{:.1}", f.stages_ms),
                    format!("{:.1}", f.copy_ms),
                    format!("{:.2}x", f.ratio_to_copy),
                    f.command_ms.map_or("-".into(), |c| format!("{:.1}", c)),
                    f.command_backend.as_deref().and_then(|b| b.split(':').next()).unwrap_or("-").to_string(),
                    f.command_replace_ms.map_or("-".into(), |c| format!("{:.1}", c)),
                    f.rss_ratio_to_file.map_or("-".into(), |r| format!("{:.2}x", r)),
                ]
            })
            .collect();
        table::print(
            &["file", "MB", "read", "rewrite", "plan", "write", "stages ms", "copy ms", "vs copy", "command ms", "on", "replacing ms", "RSS/file"],
            &rows,
        );
    }
    if !scaling.is_empty() {
        crate::say!("");
        let rows: Vec<Vec<String>> =
            scaling.iter().map(|p| vec![p.blocks.to_string(), p.nodes.to_string(), format!("{:.2}", p.rewrite_ms), format!("{:.2}", p.us_per_node)]).collect();
        table::print(&["blocks", "nodes", "rewrite ms", "us/node"], &rows);
    }
}
