//! What a fusion did, for people (tables) and machines (`--json`).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FusedRegion {
    pub rule: String,
    pub from: Vec<String>,
    pub into: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Refusal {
    pub rule: String,
    pub nodes: Vec<String>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FusionReport {
    pub fused: Vec<FusedRegion>,
    pub refused: Vec<Refusal>,
    pub ops_before: BTreeMap<String, usize>,
    pub ops_after: BTreeMap<String, usize>,
    pub params_before: usize,
    pub params_after: usize,
    pub flops_before: u64,
    pub flops_after: u64,
    pub plan_steps: usize,
}
