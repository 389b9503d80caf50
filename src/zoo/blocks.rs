//! Training-form blocks of the re-parameterization literature, each a function that
//! appends one block to a builder and returns its output tensor.

use super::builder::{ConvSpec, GraphBuilder};

/// RepVGG: 3x3+BN, 1x1+BN, and a BN-only identity branch when shapes allow; ReLU.
pub fn repvgg_block(b: &mut GraphBuilder, x: &str, out: usize, stride: usize, groups: usize) -> String {
    let cin = b.channels(x);
    let mut branches = vec![b.conv_bn(x, ConvSpec::same(out, 3, stride, groups)), b.conv_bn(x, ConvSpec::same(out, 1, stride, groups))];
    if cin == out && stride == 1 {
        branches.push(b.bn(x));
    }
    let s = b.add_chain(&branches);
    b.relu(&s)
}

/// ACNet: 3x3, 1x3 and 3x1 convs, each +BN, summed.
pub fn acnet_block(b: &mut GraphBuilder, x: &str, out: usize, k: usize, stride: usize) -> String {
    let branches = [
        b.conv_bn(x, ConvSpec::same(out, k, stride, 1)),
        b.conv_bn(x, ConvSpec::kernel_hw(out, 1, k, stride)),
        b.conv_bn(x, ConvSpec::kernel_hw(out, k, 1, stride)),
    ];
    let s = b.add_chain(&branches);
    b.relu(&s)
}

/// Diverse Branch Block: KxK+BN, 1x1+BN, 1x1(pad)+BN -> avg+BN, 1x1(pad)+BN -> KxK+BN.
/// The 1x1 convs feeding KxK ops carry the padding, so the border equals BN(0): the
/// exact form of the seed's `BNAndPadLayer`.
pub fn dbb_block(b: &mut GraphBuilder, x: &str, out: usize, k: usize, stride: usize) -> String {
    let cin = b.channels(x);
    let p = k / 2;
    let kxk = b.conv_bn(x, ConvSpec::same(out, k, stride, 1));
    let one = b.conv_bn(x, ConvSpec::same(out, 1, stride, 1));
    let a = b.conv_bn(x, ConvSpec::same(out, 1, 1, 1).pad(p));
    let a = b.avg_pool(&a, k, stride, 0, true);
    let a = b.bn(&a);
    let c = b.conv_bn(x, ConvSpec::same(cin, 1, 1, 1).pad(p));
    let c = b.conv_bn(&c, ConvSpec::same(out, k, stride, 1).pad(0));
    let s = b.add_chain(&[kxk, one, a, c]);
    b.relu(&s)
}

/// MobileOne block: `k` over-parameterized conv+BN branches, a 1x1 scale branch when
/// the kernel is larger than 1, and a BN identity when shapes allow; ReLU.
pub fn mobileone_block(b: &mut GraphBuilder, x: &str, out: usize, kernel: usize, stride: usize, groups: usize, k: usize) -> String {
    let cin = b.channels(x);
    let mut branches: Vec<String> = (0..k).map(|_| b.conv_bn(x, ConvSpec::same(out, kernel, stride, groups))).collect();
    if kernel > 1 {
        branches.push(b.conv_bn(x, ConvSpec::same(out, 1, stride, groups)));
    }
    if cin == out && stride == 1 {
        branches.push(b.bn(x));
    }
    let s = b.add_chain(&branches);
    b.relu(&s)
}

/// RepLKNet-style: a large depthwise kernel with a parallel small one, each +BN.
pub fn replk_block(b: &mut GraphBuilder, x: &str, large: usize, small: usize) -> String {
    let c = b.channels(x);
    let l = b.conv_bn(x, ConvSpec::same(c, large, 1, c));
    let s = b.conv_bn(x, ConvSpec::same(c, small, 1, c));
    b.add(&[l, s])
}

/// RepNeXt-style multi-scale depthwise mixer: 7x7, 5x5, 3x3 and 1x3/3x1 depthwise
/// convs and a BN identity, summed, then a pointwise MLP with a residual shortcut.
pub fn repnext_block(b: &mut GraphBuilder, x: &str) -> String {
    let c = b.channels(x);
    let mut branches: Vec<String> = [7, 5, 3].iter().map(|&k| b.conv_bn(x, ConvSpec::same(c, k, 1, c))).collect();
    let mut asym = ConvSpec::kernel_hw(c, 1, 3, 1);
    asym.groups = c;
    branches.push(b.conv_bn(x, asym));
    branches.push(b.bn(x));
    let mixed = b.add_chain(&branches);
    let h = b.conv(&mixed, ConvSpec::same(2 * c, 1, 1, 1).with_bias());
    let h = b.act(&h, crate::graph::Activation::Gelu);
    let h = b.conv(&h, ConvSpec::same(c, 1, 1, 1).with_bias());
    b.add(&[h, x.to_string()])
}
