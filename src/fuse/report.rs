//! What a fusion did, for people (tables) and machines (`--json`).

use std::collections::BTreeMap;

use serde::Serialize;

/// One rewrite that happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FusedRegion {
    /// Name of the rule that fired, e.g. `merge_add`.
    pub rule: String,
    /// Names of the nodes it removed, sorted.
    pub from: Vec<String>,
    /// Name of the node that replaces them.
    pub into: String,
}

/// A pattern found but not fused, because fusing it would not be exact (or worth it).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Refusal {
    /// Name of the rule that declined.
    pub rule: String,
    /// Names of the nodes involved.
    pub nodes: Vec<String>,
    /// Why, in words for the user.
    pub reason: String,
}

/// A node of a kind re-parameterization removes (BN, branch sum, concat) that is
/// still in the deploy graph, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Left {
    /// Its name.
    pub node: String,
    /// Its kind.
    pub op: String,
    /// The refusal that kept it, or "no rule matches: <the pattern>".
    pub why: String,
}

/// Nodes of one op type that the deploy graph carries unchanged, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Carried {
    /// The source op type.
    pub op_type: String,
    /// How many nodes.
    pub count: usize,
    /// Why the reader did not model them.
    pub why: String,
}

/// What a fusion did: the rewrites, the refusals and before/after totals.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FusionReport {
    /// Rewrites, in the order they were applied.
    pub fused: Vec<FusedRegion>,
    /// Patterns left as they were, with reasons.
    pub refused: Vec<Refusal>,
    /// Every BN, sum and concat still in the deploy graph, with why.
    pub left: Vec<Left>,
    /// Ops carried through unchanged (not modelled, or in a form not modelled), by
    /// type and reason.
    pub carried: Vec<Carried>,
    /// Node count per op kind of the training graph.
    pub ops_before: BTreeMap<String, usize>,
    /// Node count per op kind of the deploy graph.
    pub ops_after: BTreeMap<String, usize>,
    /// Parameter values (f32 elements) of the training graph.
    pub params_before: usize,
    /// Parameter values (f32 elements) of the deploy graph.
    pub params_after: usize,
    /// 2 x multiply-accumulates per sample (batch 1) of the training graph.
    pub flops_before: u64,
    /// 2 x multiply-accumulates per sample (batch 1) of the deploy graph.
    pub flops_after: u64,
    /// Number of steps in the [`crate::FusionPlan`].
    pub plan_steps: usize,
    /// Rewrite waves (sets of independent patches of one rule applied together): a
    /// count that grows with the graph means the rewrite is no longer linear.
    pub waves: usize,
}
