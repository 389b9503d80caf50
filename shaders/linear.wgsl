// Linear forward for verification: y[n, o] = b[o] + sum_i W[o, i] x[n, i].

struct Params {
    n: u32, fin: u32, fout: u32, has_bias: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.n * p.fout;
    let stride = nwg.x * WG;
    for (var i = gid.x + gid.y * stride; i < total; i += stride * nwg.y) {
        let o = i % p.fout;
        let b = i / p.fout;
        var acc = 0.0;
        if (p.has_bias != 0u) {
            acc = bias[o];
        }
        for (var k = 0u; k < p.fin; k++) {
            acc += weight[o * p.fin + k] * x[b * p.fin + k];
        }
        y[i] = acc;
    }
}
