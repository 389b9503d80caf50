// place: the sum of several kernels placed into one zero kernel [O, C/groups, KH, KW]:
// each source at a spatial offset (centring, asymmetric 1xK/Kx1), tap step (dilation
// ratio), output-channel offset (concat) and with group expansion. A gather, so
// every destination element is written by exactly one invocation, without atomics.
// A source's channel map (out_stride, in_offset, in_stride, scale) interleaves and
// scales channels, for widened shortcuts. A source may carry a batch norm folded on
// the fly (gamma/beta/mean/var offsets, NONE when absent), so a conv+BN branch is
// placed without its folded kernel ever being written.

// Per-output-channel BN scale of source record q for its output os (1 without BN).
fn bn_scale(q: u32, os: u32) -> f32 {
    let gamma = table[q + 16u];
    if (gamma == NONE) {
        return 1.0;
    }
    return arena[gamma + os] / sqrt(arena[table[q + 19u] + os] + bitcast<f32>(table[q + 20u]));
}

const STRIDE: u32 = 16u;
const SRC_STRIDE: u32 = 24u;
const NONE: u32 = 0xffffffffu;
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.y * STRIDE;
    let out_k = table[r + 0u];
    let out_b = table[r + 1u];
    let o_count = table[r + 2u];
    let per = table[r + 3u];
    let kh_d = table[r + 4u];
    let kw_d = table[r + 5u];
    let groups = table[r + 6u];
    let c_in = table[r + 7u];
    let src0 = table[r + 8u];
    let nsrc = table[r + 9u];
    let row = per * kh_d * kw_d;
    let nk = o_count * row;
    var n = nk;
    if (out_b != NONE) {
        n = nk + o_count;
    }
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        var acc = 0.0;
        if (i < nk) {
            let w = i % kw_d;
            let h = (i / kw_d) % kh_d;
            let cl = (i / (kw_d * kh_d)) % per;
            let o = i / row;
            let c = (o / (o_count / groups)) * per + cl;
            for (var s = 0u; s < nsrc; s++) {
                let q = src0 + s * SRC_STRIDE;
                let k_off = table[q + 0u];
                let os_count = table[q + 2u];
                let gs = table[q + 3u];
                let kh = table[q + 4u];
                let kw = table[q + 5u];
                let off_h = table[q + 6u];
                let off_w = table[q + 7u];
                let step_h = table[q + 8u];
                let step_w = table[q + 9u];
                let out_off = table[q + 10u];
                let out_stride = table[q + 11u];
                let in_off = table[q + 12u];
                let in_stride = table[q + 13u];
                let scale = bitcast<f32>(table[q + 14u]);
                if (o < out_off || (o - out_off) % out_stride != 0u || (o - out_off) / out_stride >= os_count || h < off_h || w < off_w) {
                    continue;
                }
                let dh = h - off_h;
                let dw = w - off_w;
                if (dh % step_h != 0u || dw % step_w != 0u || dh / step_h >= kh || dw / step_w >= kw) {
                    continue;
                }
                let os = (o - out_off) / out_stride;
                let si = table[q + 15u];
                // c is a destination input channel; map it back to the source's.
                if (c < in_off || (c - in_off) % in_stride != 0u) {
                    continue;
                }
                let cs = (c - in_off) / in_stride;
                let base = (os / (os_count / gs)) * si;
                if (cs < base || cs >= base + si) {
                    continue;
                }
                acc += scale * bn_scale(q, os) * arena[k_off + ((os * si + (cs - base)) * kh + dh / step_h) * kw + dw / step_w];
            }
            arena[out_k + i] = acc;
        } else {
            let o = i - nk;
            for (var s = 0u; s < nsrc; s++) {
                let q = src0 + s * SRC_STRIDE;
                let b_off = table[q + 1u];
                let os_count = table[q + 2u];
                let out_off = table[q + 10u];
                let out_stride = table[q + 11u];
                let scale = bitcast<f32>(table[q + 14u]);
                if (o < out_off || (o - out_off) % out_stride != 0u || (o - out_off) / out_stride >= os_count) {
                    continue;
                }
                let os = (o - out_off) / out_stride;
                var b = 0.0;
                if (b_off != NONE) {
                    b = arena[b_off + os];
                }
                if (table[q + 16u] != NONE) {
                    // (b - mean) * s + beta
                    b = (b - arena[table[q + 18u] + os]) * bn_scale(q, os) + arena[table[q + 17u] + os];
                }
                acc += scale * b;
            }
            arena[out_b + o] = acc;
        }
    }
}
