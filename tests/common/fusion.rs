//! Shared helpers of the CPU property tests (paradigms, refusals, no_mutation): fuse a
//! graph, check it against the CPU reference forward of the original with the
//! tolerance policy of `verify.rs`, and count ops. No expected numbers live here: every
//! expectation is the reference forward of the original graph.

use std::collections::BTreeMap;

use proptest::test_runner::Config as ProptestConfig;
use repfuse::graph::{Conv2d, Linear, Op};
use repfuse::verify::check_equivalence;
use repfuse::{fuse, FuseOptions, Fusion, Graph, Weights};

/// Cases per property: every case builds, fuses and runs two small graphs, and the
/// whole suite has to stay well under a minute on two cores. `PROPTEST_CASES` in the
/// environment overrides the count (for a long local hunt). Failures print the
/// minimal input; nothing is written into the source tree.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, max_global_rejects: 1024.max(4 * cases), failure_persistence: None, max_shrink_iters: 256, ..ProptestConfig::default() }
}

/// A fused graph with its deploy weights computed by the CPU plan executor.
pub struct Fused {
    pub fusion: Fusion,
    pub weights: Weights,
}

impl Fused {
    pub fn graph(&self) -> &Graph {
        &self.fusion.graph
    }

    pub fn convs(&self) -> Vec<&Conv2d> {
        convs(&self.fusion.graph)
    }

    /// One line per fused region and refusal, for assertion messages.
    pub fn summary(&self) -> String {
        let r = &self.fusion.report;
        let mut s = format!("ops after: {:?}\n", r.ops_after);
        for f in &r.fused {
            s += &format!("  fused   {} {:?} -> {}\n", f.rule, f.from, f.into);
        }
        for f in &r.refused {
            s += &format!("  refused {} {:?}: {}\n", f.rule, f.nodes, f.reason);
        }
        s
    }

    /// Refusals by `rule` (all of them when `rule` is empty).
    pub fn refusals(&self, rule: &str) -> Vec<&repfuse::fuse::Refusal> {
        self.fusion.report.refused.iter().filter(|r| rule.is_empty() || r.rule == rule).collect()
    }
}

/// Fuses `g`, computes the deploy weights on the CPU, and asserts that the deploy
/// graph validates and matches the original on two seeded random inputs.
pub fn fuse_checked(g: &Graph, w: &Weights, seed: u64) -> Fused {
    g.validate().expect("the test builds a valid graph");
    let fusion = fuse(g, &FuseOptions::default()).unwrap_or_else(|e| panic!("fuse failed: {}", e));
    let weights = fusion.weights_cpu(w).unwrap_or_else(|e| panic!("weights_cpu failed: {}", e));
    let fused = Fused { fusion, weights };
    fused.graph().validate().unwrap_or_else(|e| panic!("fused graph is invalid: {}\n{}", e, fused.summary()));
    assert_equivalent(g, w, fused.graph(), &fused.weights, seed, &fused.summary());
    fused
}

/// Asserts that `b` computes what `a` computes, on two seeded inputs, under the
/// tolerance `verify::check_equivalence` picks for `a`.
pub fn assert_equivalent(a: &Graph, aw: &Weights, b: &Graph, bw: &Weights, seed: u64, context: &str) {
    for s in [seed, seed ^ 0x9e37_79b9_7f4a_7c15] {
        let eq = check_equivalence(a, aw, b, bw, s).unwrap_or_else(|e| panic!("check_equivalence failed: {}\n{}", e, context));
        assert!(
            eq.passed(),
            "fused graph differs from the original (input seed {}): max abs {:e}, max rel {:e}\n{:#?}\n{}",
            s,
            eq.max_abs(),
            eq.max_rel(),
            eq.outputs,
            context
        );
    }
}

/// Asserts the exact count of each listed op kind (kinds not listed are not checked).
pub fn assert_ops(fused: &Fused, expected: &[(&str, usize)]) {
    let hist = fused.graph().op_histogram();
    for (kind, n) in expected {
        let got = hist.get(*kind).copied().unwrap_or(0);
        assert_eq!(got, *n, "expected {} {} node(s) after fusion, got {}\n{}", n, kind, got, fused.summary());
    }
}

pub fn histogram(g: &Graph) -> BTreeMap<String, usize> {
    g.op_histogram()
}

pub fn convs(g: &Graph) -> Vec<&Conv2d> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub fn linears(g: &Graph) -> Vec<&Linear> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Linear(l) => Some(l),
            _ => None,
        })
        .collect()
}

pub fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

/// The `i`-th divisor of `n` (cyclically): a group count chosen by a generated index.
pub fn divisor(n: usize, i: usize) -> usize {
    let d = divisors(n);
    d[i % d.len()]
}

/// Smallest spatial size a window of `kernel` taps `dilation` apart fits in with
/// `pad_total` padding.
pub fn min_len(kernel: usize, dilation: usize, pad_total: usize) -> usize {
    ((kernel - 1) * dilation + 1).saturating_sub(pad_total).max(1)
}

/// Asserts a refusal by `rule` naming exactly `nodes` (in order), whose reason
/// mentions `reason_has` (case-insensitive), and that every node it names survives.
pub fn assert_refused(fused: &Fused, rule: &str, nodes: &[&str], reason_has: &str) {
    let found = fused.fusion.report.refused.iter().find(|r| r.rule == rule && r.nodes == nodes);
    let Some(r) = found else {
        panic!("no `{}` refusal naming {:?}\n{}", rule, nodes, fused.summary());
    };
    assert!(r.reason.to_lowercase().contains(&reason_has.to_lowercase()), "refusal reason `{}` does not mention `{}`", r.reason, reason_has);
    for n in nodes {
        assert!(fused.graph().node(n).is_some(), "refused node `{}` is gone from the deploy graph\n{}", n, fused.summary());
    }
}
