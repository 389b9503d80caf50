// compose: second(first(x)) as one kernel when one of the two is 1x1 (paradigm 5),
// grouped on both sides, into `groups` groups; the first bias is carried through the
// second kernel: b = b2 + sum_taps(k2) . b1.

const STRIDE: u32 = 20u;
const NONE: u32 = 0xffffffffu;
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.y * STRIDE;
    let a_k = table[r + 0u];
    let a_b = table[r + 1u];
    let ga = table[r + 2u];
    let m = table[r + 3u];
    let ca = table[r + 4u];
    let ah = table[r + 5u];
    let aw = table[r + 6u];
    let b_k = table[r + 7u];
    let b_b = table[r + 8u];
    let gb = table[r + 9u];
    let o_count = table[r + 10u];
    let mb = table[r + 11u];
    let bh = table[r + 12u];
    let bw = table[r + 13u];
    let c_in = table[r + 14u];
    let groups = table[r + 15u];
    let out_k = table[r + 16u];
    let out_b = table[r + 17u];
    let first_1x1 = ah == 1u && aw == 1u;
    var kh = ah;
    var kw = aw;
    if (first_1x1) {
        kh = bh;
        kw = bw;
    }
    let per = c_in / groups;
    let taps = kh * kw;
    let nk = o_count * per * taps;
    var n = nk;
    if (out_b != NONE) {
        n = nk + o_count;
    }
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        var acc = 0.0;
        if (i < nk) {
            let t = i % taps;
            let cl = (i / taps) % per;
            let o = i / (taps * per);
            let c = (o / (o_count / groups)) * per + cl;
            let g_b = o / (o_count / gb);
            for (var j = 0u; j < mb; j++) {
                let mid = g_b * mb + j;
                let base = (mid / (m / ga)) * ca;
                if (c < base || c >= base + ca) {
                    continue;
                }
                let ci = c - base;
                if (first_1x1) {
                    acc += arena[b_k + (o * mb + j) * taps + t] * arena[a_k + mid * ca + ci];
                } else {
                    acc += arena[b_k + o * mb + j] * arena[a_k + (mid * ca + ci) * taps + t];
                }
            }
            arena[out_k + i] = acc;
        } else {
            let o = i - nk;
            if (b_b != NONE) {
                acc = arena[b_b + o];
            }
            if (a_b != NONE) {
                let g_b = o / (o_count / gb);
                let btaps = bh * bw;
                for (var j = 0u; j < mb; j++) {
                    var tap_sum = 0.0;
                    for (var t = 0u; t < btaps; t++) {
                        tap_sum += arena[b_k + (o * mb + j) * btaps + t];
                    }
                    acc += tap_sum * arena[a_b + g_b * mb + j];
                }
            }
            arena[out_b + o] = acc;
        }
    }
}
