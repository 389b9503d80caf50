// fold_bn: scales each output row of a kernel by s = gamma / sqrt(var + eps) and folds
// mean/beta into the bias: k' = k * s, b' = (b - mean) * s + beta.

struct FoldBnJob {
    kernel: u32, bias: u32, gamma: u32, beta: u32, mean: u32, variance: u32,
    out_kernel: u32, out_bias: u32, out_channels: u32, row: u32, eps: f32,
}

@group(0) @binding(1) var<storage, read> jobs: array<FoldBnJob>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let job = jobs[gid.y];
    let k_off = job.kernel;
    let b_off = job.bias;
    let gamma = job.gamma;
    let beta = job.beta;
    let mean = job.mean;
    let var_ = job.variance;
    let out_k = job.out_kernel;
    let out_b = job.out_bias;
    let o_count = job.out_channels;
    let row = job.row;
    let eps = job.eps;
    let n = o_count * row + o_count;
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let o = select(i - o_count * row, i / row, i < o_count * row);
        let s = arena[gamma + o] / sqrt(arena[var_ + o] + eps);
        if (i < o_count * row) {
            arena[out_k + i] = arena[k_off + i] * s;
        } else {
            var b = 0.0;
            if (b_off != NONE) {
                b = arena[b_off + o];
            }
            arena[out_b + o] = (b - arena[mean + o]) * s + arena[beta + o];
        }
    }
}
