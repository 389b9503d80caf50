//! Whole training-form networks at their published sizes.

use super::blocks::{acnet_block, dbb_block, mobileone_block, replk_block, repnext_block, repvgg_block};
use super::builder::{ConvSpec, GraphBuilder};
use crate::graph::Graph;
use crate::weights::Weights;

/// A zoo entry: name, what its deploy form should look like, and its builder.
pub struct ZooModel {
    /// Name used by `zoo::build` and `repfuse bench`.
    pub name: &'static str,
    /// Convs in the published deploy form (one per block).
    pub deploy_convs: usize,
    build: fn(&mut GraphBuilder, &str) -> String,
}

fn repvgg(b: &mut GraphBuilder, x: &str, blocks: [usize; 4], a: f64, bw: f64, groups_every_other: bool) -> String {
    let widths = [(64.0 * a) as usize, (128.0 * a) as usize, (256.0 * a) as usize, (512.0 * bw) as usize];
    let mut t = repvgg_block(b, x, 64.min((64.0 * a) as usize), 2, 1);
    let mut layer = 1;
    for (s, (&n, &w)) in blocks.iter().zip(&widths).enumerate() {
        for i in 0..n {
            // RepVGG-*g variants group every other conv layer; plain ones are dense.
            let g = if groups_every_other && layer % 2 == 0 && s < 3 { 4 } else { 1 };
            t = repvgg_block(b, &t, w, if i == 0 { 2 } else { 1 }, g);
            layer += 1;
        }
    }
    head(b, &t)
}

fn head(b: &mut GraphBuilder, t: &str) -> String {
    let p = b.global_pool(t);
    let f = b.flatten(&p);
    b.linear(&f, 1000, true)
}

fn mobileone(b: &mut GraphBuilder, x: &str, w: [f64; 4], k: usize) -> String {
    let in_planes = 64.min((64.0 * w[0]) as usize);
    let mut t = mobileone_block(b, x, in_planes, 3, 2, 1, k);
    let blocks = [2, 8, 10, 1];
    let widths = [(64.0 * w[0]) as usize, (128.0 * w[1]) as usize, (256.0 * w[2]) as usize, (512.0 * w[3]) as usize];
    for (&n, &planes) in blocks.iter().zip(&widths) {
        for i in 0..n {
            let c = b.channels(&t);
            t = mobileone_block(b, &t, c, 3, if i == 0 { 2 } else { 1 }, c, k);
            t = mobileone_block(b, &t, planes, 1, 1, 1, k);
        }
    }
    head(b, &t)
}

fn small_net(b: &mut GraphBuilder, x: &str, block: fn(&mut GraphBuilder, &str, usize, usize) -> String) -> String {
    let mut t = b.conv_bn(x, ConvSpec::same(32, 3, 2, 1));
    t = b.relu(&t);
    for (w, s) in [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1)] {
        t = block(b, &t, w, s);
    }
    head(b, &t)
}

/// Every zoo model, by name.
pub const MODELS: &[ZooModel] = &[
    ZooModel { name: "repvgg_a0", deploy_convs: 22, build: |b, x| repvgg(b, x, [2, 4, 14, 1], 0.75, 2.5, false) },
    ZooModel { name: "repvgg_a1", deploy_convs: 22, build: |b, x| repvgg(b, x, [2, 4, 14, 1], 1.0, 2.5, false) },
    ZooModel { name: "repvgg_a2", deploy_convs: 22, build: |b, x| repvgg(b, x, [2, 4, 14, 1], 1.5, 2.75, false) },
    ZooModel { name: "repvgg_b0", deploy_convs: 28, build: |b, x| repvgg(b, x, [4, 6, 16, 1], 1.0, 2.5, false) },
    ZooModel { name: "repvgg_b1", deploy_convs: 28, build: |b, x| repvgg(b, x, [4, 6, 16, 1], 2.0, 4.0, false) },
    ZooModel { name: "repvgg_b1g4", deploy_convs: 28, build: |b, x| repvgg(b, x, [4, 6, 16, 1], 2.0, 4.0, true) },
    ZooModel { name: "repvgg_b2", deploy_convs: 28, build: |b, x| repvgg(b, x, [4, 6, 16, 1], 2.5, 5.0, false) },
    ZooModel { name: "repvgg_b3", deploy_convs: 28, build: |b, x| repvgg(b, x, [4, 6, 16, 1], 3.0, 5.0, false) },
    ZooModel { name: "mobileone_s0", deploy_convs: 43, build: |b, x| mobileone(b, x, [0.75, 1.0, 1.0, 2.0], 4) },
    ZooModel { name: "mobileone_s1", deploy_convs: 43, build: |b, x| mobileone(b, x, [1.5, 1.5, 2.0, 2.5], 1) },
    ZooModel { name: "mobileone_s2", deploy_convs: 43, build: |b, x| mobileone(b, x, [1.5, 2.0, 2.5, 4.0], 1) },
    ZooModel { name: "mobileone_s3", deploy_convs: 43, build: |b, x| mobileone(b, x, [2.0, 2.5, 3.0, 4.0], 1) },
    ZooModel { name: "mobileone_s4", deploy_convs: 43, build: |b, x| mobileone(b, x, [3.0, 3.5, 3.5, 4.0], 1) },
    ZooModel { name: "acnet", deploy_convs: 6, build: |b, x| small_net(b, x, |b, t, w, s| acnet_block(b, t, w, 3, s)) },
    ZooModel { name: "dbb", deploy_convs: 6, build: |b, x| small_net(b, x, |b, t, w, s| dbb_block(b, t, w, 3, s)) },
    ZooModel {
        name: "replknet",
        // stem + 4 x (large||small -> one dw conv, then a 1x1 with a bias and ReLU)
        deploy_convs: 9,
        build: |b, x| {
            let mut t = b.conv_bn(x, ConvSpec::same(64, 3, 2, 1));
            t = b.relu(&t);
            for _ in 0..4 {
                t = replk_block(b, &t, 31, 5);
                t = b.conv(&t, ConvSpec::same(64, 1, 1, 1).with_bias());
                t = b.relu(&t);
            }
            head(b, &t)
        },
    },
    ZooModel {
        name: "repnext",
        // stem + 3 x (one dw mixer conv + two pointwise convs)
        deploy_convs: 10,
        build: |b, x| {
            let mut t = b.conv_bn(x, ConvSpec::same(48, 3, 2, 1));
            for _ in 0..3 {
                t = repnext_block(b, &t);
            }
            head(b, &t)
        },
    },
];

/// Builds the named model for a `[batch, 3, size, size]` input with seeded weights.
pub fn build(name: &str, batch: usize, size: usize, seed: u64) -> Option<(Graph, Weights, &'static ZooModel)> {
    let m = MODELS.iter().find(|m| m.name == name)?;
    let mut b = GraphBuilder::new(seed);
    let x = b.input("input", &[batch, 3, size, size]);
    let y = (m.build)(&mut b, &x);
    b.output(&y);
    let (g, w) = b.finish();
    Some((g, w, m))
}
