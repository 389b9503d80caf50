// Element-wise forward ops for verification: op 0 = per-channel piecewise affine
// (batch norm, PReLU, per-channel scale and shift), op 1 = activation, op 2 = add of
// two tensors. Op 0 reads `a` as x and `table` as [pos | neg | shift], each `channels`
// long; add reads `a` and `b`.

struct Params {
    op: u32, numel: u32, channels: u32, inner: u32,
    act: u32, alpha: f32, _pad0: u32, _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x + gid.y * stride; i < p.numel; i += stride * nwg.y) {
        if (p.op == 0u) {
            let c = (i / p.inner) % p.channels;
            let x = a[i];
            let s = select(table[p.channels + c], table[c], x >= 0.0);
            y[i] = s * x + table[2u * p.channels + c];
        } else if (p.op == 1u) {
            y[i] = activate(p.act, p.alpha, a[i]);
        } else {
            y[i] = a[i] + b[i];
        }
    }
}
