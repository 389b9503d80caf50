// fold_bn: scales each output row of a kernel by s = gamma / sqrt(var + eps) and folds
// mean/beta into the bias: k' = k * s, b' = (b - mean) * s + beta.

struct FoldBnJob {
    kernel: u32, bias: u32, gamma: u32, beta: u32, mean: u32, variance: u32,
    out_kernel: u32, out_bias: u32, out_channels: u32, row: u32, eps: f32,
}

@group(0) @binding(1) var<storage, read> jobs: array<FoldBnJob>;
// The arena as vec4s, read at the source kernel only (no job of a dispatch writes
// what another reads, as place.wgsl's `sources4`). Rows a whole number of vec4s long
// are folded four elements per invocation: one row number, one scale and one
// bounds-checked load per four elements (lavapipe spent most of an element on
// its integer division and square root).
@group(0) @binding(2) var<storage, read_write> arena4: array<vec4<f32>>;

// Rows up to this long that are not a whole number of vec4s go one per invocation
// (src/gpu/plan_exec.rs sizes the dispatch with the same bound).
const ROW_PER_INVOCATION: u32 = 64u;

fn scale_of(job: FoldBnJob, o: u32) -> f32 {
    return arena[job.gamma + o] / sqrt(arena[job.variance + o] + job.eps);
}

fn fold_bias(job: FoldBnJob, o: u32) {
    var b = 0.0;
    if (job.bias != NONE) {
        b = arena[job.bias + o];
    }
    arena[job.out_bias + o] = (b - arena[job.mean + o]) * scale_of(job, o) + arena[job.beta + o];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let job = jobs[gid.y];
    let k_off = job.kernel;
    let out_k = job.out_kernel;
    let o_count = job.out_channels;
    let row = job.row;
    if (row % 4u == 0u) {
        let quads = o_count * row / 4u;
        let row4 = row / 4u;
        for (var q = gid.x; q < quads + o_count; q += nwg.x * WG) {
            if (q >= quads) {
                fold_bias(job, q - quads);
                continue;
            }
            let v = arena4[k_off / 4u + q] * scale_of(job, q / row4);
            let at = out_k + 4u * q;
            arena[at] = v.x;
            arena[at + 1u] = v.y;
            arena[at + 2u] = v.z;
            arena[at + 3u] = v.w;
        }
        return;
    }
    if (row <= ROW_PER_INVOCATION) {
        // Short rows of another length (a depthwise 3x3's 9): a row and its bias per
        // invocation, one scale for all of it.
        for (var o = gid.x; o < o_count; o += nwg.x * WG) {
            let s = scale_of(job, o);
            for (var e = o * row; e < o * row + row; e++) {
                arena[out_k + e] = arena[k_off + e] * s;
            }
            fold_bias(job, o);
        }
        return;
    }
    let n = o_count * row;
    for (var i = gid.x; i < n + o_count; i += nwg.x * WG) {
        if (i < n) {
            arena[out_k + i] = arena[k_off + i] * scale_of(job, i / row);
        } else {
            fold_bias(job, i - n);
        }
    }
}
