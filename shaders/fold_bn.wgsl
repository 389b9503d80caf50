// fold_bn: scales each output row of a kernel by s = gamma / sqrt(var + eps) and folds
// mean/beta into the bias: k' = k * s, b' = (b - mean) * s + beta. One dispatch runs
// every job of one plan level; job j's record is table[j * STRIDE ..].

const STRIDE: u32 = 16u;
const NONE: u32 = 0xffffffffu;
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.y * STRIDE;
    let k_off = table[r + 0u];
    let b_off = table[r + 1u];
    let gamma = table[r + 2u];
    let beta = table[r + 3u];
    let mean = table[r + 4u];
    let var_ = table[r + 5u];
    let out_k = table[r + 6u];
    let out_b = table[r + 7u];
    let o_count = table[r + 8u];
    let row = table[r + 9u];
    let eps = bitcast<f32>(table[r + 10u]);
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
