// fill: generates kernels from nothing but their shape (and BN statistics):
//   mode 0: dirac / identity [C, C/groups, kh, kw], 1 at the centre tap (odd kernels);
//   mode 1: avg-pool as depthwise [C, 1, kh, kw] of 1/(kh*kw);
//   mode 2: a lone BN as depthwise 1x1 [C, 1, 1, 1] of s, bias beta - mean * s.

const STRIDE: u32 = 16u;
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.y * STRIDE;
    let mode = table[r + 0u];
    let c_count = table[r + 1u];
    let per = table[r + 2u];
    let kh = table[r + 3u];
    let kw = table[r + 4u];
    let out_k = table[r + 5u];
    let out_b = table[r + 6u];
    let gamma = table[r + 7u];
    let beta = table[r + 8u];
    let mean = table[r + 9u];
    let var_ = table[r + 10u];
    let eps = bitcast<f32>(table[r + 11u]);
    let taps = kh * kw;
    let nk = c_count * per * taps;
    var n = nk;
    if (mode == 2u) {
        n = nk + c_count;
    }
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        if (mode == 0u) {
            let t = i % taps;
            let j = (i / taps) % per;
            let c = i / (taps * per);
            let centre = (kh / 2u) * kw + kw / 2u;
            arena[out_k + i] = select(0.0, 1.0, t == centre && j == c % per);
        } else if (mode == 1u) {
            arena[out_k + i] = 1.0 / f32(taps);
        } else {
            let c = select(i - nk, i, i < nk);
            let s = arena[gamma + c] / sqrt(arena[var_ + c] + eps);
            if (i < nk) {
                arena[out_k + i] = s;
            } else {
                arena[out_b + c] = arena[beta + c] - arena[mean + c] * s;
            }
        }
    }
}
