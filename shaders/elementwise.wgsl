// Element-wise forward ops for verification: op 0 = batch norm (inference), op 1 =
// activation, op 2 = add of two tensors. BN reads `a` as x and `params_*` as its
// statistics; add reads `a` and `b`.

struct Params {
    op: u32, numel: u32, channels: u32, inner: u32,
    act: u32, alpha: f32, eps: f32, _pad: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x + gid.y * stride; i < p.numel; i += stride * nwg.y) {
        if (p.op == 0u) {
            // stats = [gamma | beta | mean | var], each `channels` long.
            let c = (i / p.inner) % p.channels;
            let s = stats[c] / sqrt(stats[3u * p.channels + c] + p.eps);
            y[i] = (a[i] - stats[2u * p.channels + c]) * s + stats[p.channels + c];
        } else if (p.op == 1u) {
            y[i] = activate(p.act, p.alpha, a[i]);
        } else {
            y[i] = a[i] + b[i];
        }
    }
}
