// fill: generates kernels from nothing but their shape (and BN statistics):
//   mode 0: dirac / identity [C, C/groups, kh, kw], 1 at the centre tap (odd kernels);
//   mode 1: avg-pool as depthwise [C, 1, kh, kw] of 1/(kh*kw);
//   mode 2: a lone BN as depthwise 1x1 [C, 1, 1, 1] of s, bias beta - mean * s.

struct FillJob {
    mode: u32, channels: u32, per: u32, kh: u32, kw: u32, out_kernel: u32, out_bias: u32,
    gamma: u32, beta: u32, mean: u32, variance: u32, eps: f32,
}

@group(0) @binding(1) var<storage, read> jobs: array<FillJob>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let job = jobs[gid.y];
    let mode = job.mode;
    let c_count = job.channels;
    let per = job.per;
    let kh = job.kh;
    let kw = job.kw;
    let out_k = job.out_kernel;
    let out_b = job.out_bias;
    let gamma = job.gamma;
    let beta = job.beta;
    let mean = job.mean;
    let var_ = job.variance;
    let eps = job.eps;
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
