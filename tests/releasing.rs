//! Giving memory back while fusing: the reader releases each decoded weight's pages
//! of the mapped file, and the releasing plan executor drops each source after its
//! last reader. Neither may change a single value.

use repfuse::io::onnx::{read_onnx, read_onnx_bytes};
use repfuse::io::FileBytes;
use repfuse::{Backend, FuseOptions, Fuser};

mod common;

#[test]
fn released_pages_read_back_the_same_bytes() {
    let path = common::fixture("v02_opset13_dbb");
    let on_disk = std::fs::read(&path).unwrap();
    let mapped = FileBytes::open(&path).unwrap();
    mapped.release(0..on_disk.len());
    mapped.release(4096..3 * 4096 + 17);
    assert!(mapped[..] == on_disk[..], "a released page came back with other bytes");
}

#[test]
fn a_model_read_through_the_map_equals_one_read_from_memory() {
    for case in common::fixture_cases() {
        let path = case.join("train.onnx");
        let mapped = read_onnx(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let in_memory = read_onnx_bytes(&path, &bytes).unwrap();
        assert_eq!(mapped.graph, in_memory.graph, "{}", case.display());
        assert_eq!(mapped.weights.len(), in_memory.weights.len());
        for (name, t) in in_memory.weights.iter() {
            let bits = |x: &repfuse::Tensor| x.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(mapped.weights.get(name).unwrap()), bits(t), "{}: `{}`", case.display(), name);
        }
    }
}

#[test]
fn the_releasing_executor_computes_the_same_weights_and_keeps_what_the_deploy_graph_names() {
    for name in ["repvgg_a0", "mobileone_s0", "acnet", "dbb", "replknet"] {
        let (g, w, _) = repfuse::zoo::build(name, 1, 32, 5).unwrap_or_else(|| panic!("no zoo model {}", name));
        let fuser = Fuser::new(Backend::Cpu);
        let whole = fuser.fuse(&g, &w, &FuseOptions::default()).unwrap();
        let mut consumed = w.clone();
        let released = fuser.fuse_releasing(&g, &mut consumed, &FuseOptions::default()).unwrap();
        assert_eq!(whole.graph, released.graph, "{}", name);
        assert_eq!(whole.weights.len(), released.weights.len(), "{}", name);
        for (t, x) in whole.weights.iter() {
            let y = released.weights.get(t).unwrap();
            assert!(x.data().iter().zip(y.data()).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: `{}` differs", name, t);
        }
        // Left of the training weights: exactly what the plan does not read, and what
        // the deploy graph still names.
        let plan = repfuse::fuse(&g, &FuseOptions::default()).unwrap().plan;
        let read: std::collections::HashSet<&str> = plan.sources().into_iter().collect();
        let deploy = &whole.graph.params;
        for (t, _) in w.iter() {
            let should_stay = !read.contains(t.as_str()) || deploy.contains_key(t);
            assert_eq!(
                consumed.contains(t),
                should_stay,
                "{}: `{}` (read by the plan: {}, in the deploy graph: {})",
                name,
                t,
                read.contains(t.as_str()),
                deploy.contains_key(t)
            );
        }
        assert!(consumed.len() < w.len(), "{}: nothing was released", name);
    }
}

#[test]
fn a_nan_in_a_source_released_before_the_failure_is_still_named() {
    // A multi-level plan (DBB: folds, then compositions, then placements), with a NaN
    // in a source whose last reader runs before the last level: by the time the
    // output check fails, that source has been released.
    let (g, w, _) = repfuse::zoo::build("dbb", 1, 32, 5).unwrap();
    let plan = repfuse::fuse(&g, &FuseOptions::default()).unwrap().plan;
    let levels = plan.levels();
    let depth = levels.iter().max().unwrap() + 1;
    assert!(depth >= 2, "the test needs a plan of several levels");
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (s, &l) in plan.steps.iter().zip(&levels) {
        for t in s.inputs() {
            let e = last.entry(t).or_insert(l);
            *e = (*e).max(l);
        }
    }
    let sources = plan.sources();
    let early = *sources.iter().find(|t| last[**t] + 1 < depth && w.get(t).unwrap().numel() > 1).expect("a source read only before the last level");
    let mut poisoned = repfuse::Weights::new();
    for (t, x) in w.iter() {
        let mut data = x.data().to_vec();
        if t == early {
            data[1] = f32::NAN;
        }
        poisoned.insert(t.clone(), repfuse::Tensor::new(t, x.shape().to_vec(), data).unwrap());
    }
    let e = Fuser::new(Backend::Cpu).fuse_releasing(&g, &mut poisoned, &FuseOptions::default()).unwrap_err().to_string();
    assert!(e.contains(early) && e.contains("NaN"), "the error does not name `{}`: {}", early, e);
}

#[test]
fn a_plan_run_again_in_reused_arena_memory_gives_the_same_bits() {
    // Kernel outputs are written into arenas whose mappings are reused by the next
    // plan without zeroing (every value is written): runs on different weights,
    // interleaved, must each give exactly what a run on their own gives.
    let (g, w1, _) = repfuse::zoo::build("repvgg_a0", 1, 32, 5).unwrap();
    let (_, w2, _) = repfuse::zoo::build("repvgg_a0", 1, 32, 6).unwrap();
    let f = repfuse::fuse(&g, &FuseOptions::default()).unwrap();
    let bits = |m: &std::collections::HashMap<String, repfuse::Tensor>| {
        let mut v: Vec<(String, Vec<u32>)> = m.iter().map(|(n, t)| (n.clone(), t.data().iter().map(|x| x.to_bits()).collect())).collect();
        v.sort();
        v
    };
    let first = bits(&repfuse::cpu::execute_plan(&f.plan, &w1).unwrap());
    let other = bits(&repfuse::cpu::execute_plan(&f.plan, &w2).unwrap());
    assert_ne!(first, other, "different weights should fuse to different values");
    for _ in 0..3 {
        assert_eq!(bits(&repfuse::cpu::execute_plan(&f.plan, &w1).unwrap()), first, "a rerun on reused arena memory differs");
        assert_eq!(bits(&repfuse::cpu::execute_plan(&f.plan, &w2).unwrap()), other, "a rerun on reused arena memory differs");
    }
}

#[test]
fn every_conv_bn_branch_is_folded_inside_its_merge_not_written_first() {
    // A RepVGG or MobileOne branch's conv+BN feeds one merge: the plan folds the BN on
    // the fly in `place` (no FoldBn step, whose folded kernel would be written and
    // read back), and the fused weights are still what the training graph computes.
    for name in ["repvgg_a0", "mobileone_s0"] {
        let (g, w, _) = repfuse::zoo::build(name, 1, 32, 5).unwrap();
        let f = repfuse::fuse(&g, &FuseOptions::default()).unwrap();
        let folds = f.plan.steps.iter().filter(|s| s.primitive() == "fold_bn").count();
        let on_the_fly: usize = f
            .plan
            .steps
            .iter()
            .map(|s| match s {
                repfuse::plan::Step::Place { sources, .. } => sources.iter().filter(|s| s.bn.is_some()).count(),
                _ => 0,
            })
            .sum();
        assert_eq!(folds, 0, "{}: {} FoldBn steps left beside the merges", name, folds);
        assert!(on_the_fly > 0, "{}: no batch norm folded inside a merge", name);
        let fw = f.weights_cpu(&w).unwrap();
        let eq = repfuse::verify::check_equivalence(&g, &w, &f.graph, &fw, 2).unwrap();
        assert!(eq.passed(), "{}: fused model differs: {:?}", name, eq.outputs);
    }
}
