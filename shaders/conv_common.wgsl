// Shared by the two conv forward kernels (conv2d, conv2d_tiled), prepended to each
// after activation.wgsl: one Params (mirrored by `ConvParams` in src/gpu/forward.rs)
// and one binding layout, so either kernel runs any conv the host describes.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    o: u32, ho: u32, wo: u32, groups: u32,
    kh: u32, kw: u32, sh: u32, sw: u32,
    pt: u32, pl: u32, dh: u32, dw: u32,
    has_bias: u32, act: u32, alpha: f32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
