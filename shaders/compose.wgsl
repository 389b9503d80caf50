// compose: second(first(x)) as one kernel when one of the two is 1x1 (paradigm 5),
// grouped on both sides, into `groups` groups; the first bias is carried through the
// second kernel: b = b2 + sum_taps(k2) . b1.

struct ComposeJob {
    first_kernel: u32, first_bias: u32, first_groups: u32, mid: u32, first_per: u32, first_kh: u32, first_kw: u32,
    second_kernel: u32, second_bias: u32, second_groups: u32, out_channels: u32, second_per: u32, second_kh: u32, second_kw: u32,
    in_channels: u32, groups: u32, out_kernel: u32, out_bias: u32, tile: u32, diagonal: u32,
}

@group(0) @binding(1) var<storage, read> jobs: array<ComposeJob>;
// The arena as vec4s (as place.wgsl's `sources4`: no job of a dispatch writes what
// another reads): a tile's four input channels of a dense-enough 1x1 first kernel
// are one aligned vec4, one bounds check on lavapipe instead of four; the diagonal
// path reads and writes whole vec4s through it, its output only written, and only
// through this view.
@group(0) @binding(2) var<storage, read_write> arena4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let job = jobs[gid.y];
    let a_k = job.first_kernel;
    let a_b = job.first_bias;
    let ga = job.first_groups;
    let m = job.mid;
    let ca = job.first_per;
    let ah = job.first_kh;
    let aw = job.first_kw;
    let b_k = job.second_kernel;
    let b_b = job.second_bias;
    let gb = job.second_groups;
    let o_count = job.out_channels;
    let mb = job.second_per;
    let bh = job.second_kh;
    let bw = job.second_kw;
    let c_in = job.in_channels;
    let groups = job.groups;
    let out_k = job.out_kernel;
    let out_b = job.out_bias;
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
    if (job.diagonal == 1u) {
        // A diagonal first kernel (the host's `compose_is_diagonal`): the second
        // kernel with input channel c of group g scaled by first[g * per + c], laid
        // out as the composed one. Four elements of one row per invocation: one
        // division for the row, the scales gathered (one vec4 for 1x1 rows), vec4
        // stores (the composed kernel is only written in this dispatch).
        let quads = nk / 4u;
        let row = per * taps;
        let o_per_group = o_count / groups;
        for (var q = gid.x; q < quads + n - nk; q += nwg.x * WG) {
            if (q >= quads) {
                arena[out_b + q - quads] = composed_bias(job, q - quads);
                continue;
            }
            let e = 4u * q;
            let o = e / row;
            let within = e - o * row;
            let c = (o / o_per_group) * per;
            var s = vec4<f32>(0.0);
            if (taps == 1u) {
                // Aligned: offsets 64-aligned, per and within multiples of 4.
                s = arena4[(a_k + c + within) / 4u];
            } else {
                s = vec4<f32>(arena[a_k + c + within / taps], arena[a_k + c + (within + 1u) / taps], arena[a_k + c + (within + 2u) / taps], arena[a_k + c + (within + 3u) / taps]);
            }
            arena4[(out_k + e) / 4u] = arena4[(b_k + e) / 4u] * s;
        }
        return;
    }
    if (job.tile == 4u) {
        // 4x4 tiles of (output, input) channels at one tap; the host chose this only
        // when each tile lies in one group of every conv, so one mid range serves it.
        let tiles = nk / 16u;
        let per4 = per / 4u;
        for (var i = gid.x; i < tiles + n - nk; i += nwg.x * WG) {
            if (i >= tiles) {
                arena[out_b + i - tiles] = composed_bias(job, i - tiles);
                continue;
            }
            let t = i % taps;
            let cl0 = ((i / taps) % per4) * 4u;
            let o0 = (i / (taps * per4)) * 4u;
            let c0 = (o0 / (o_count / groups)) * per + cl0;
            let g_b = o0 / (o_count / gb);
            let mids_a = m / ga;
            let g_a = c0 / ca;
            let ci0 = c0 - g_a * ca;
            let lo = max(g_b * mb, g_a * mids_a);
            let hi = min(g_b * mb + mb, g_a * mids_a + mids_a);
            // Rows: output channels o0..o0+3; lanes: input channels c0..c0+3.
            var acc0 = vec4<f32>(0.0);
            var acc1 = vec4<f32>(0.0);
            var acc2 = vec4<f32>(0.0);
            var acc3 = vec4<f32>(0.0);
            // Strides between consecutive output channels (second kernel) and
            // consecutive input channels (first kernel), and each one's base.
            var b_row = mb;
            var a_lane = 1u;
            var b_at = b_k + o0 * mb - g_b * mb;
            var a_at = a_k + ci0;
            if (first_1x1) {
                b_row = mb * taps;
                b_at = b_k + (o0 * mb - g_b * mb) * taps + t;
            } else {
                a_lane = taps;
                a_at = a_k + ci0 * taps + t;
            }
            var a_mid = ca;
            var b_mid = 1u;
            if (first_1x1) {
                b_mid = taps;
            } else {
                a_mid = ca * taps;
            }
            if (first_1x1) {
                // Lanes are consecutive: offsets 64-aligned, ci0 and ca multiples of 4.
                for (var mid = lo; mid < hi; mid++) {
                    let bi = b_at + mid * b_mid;
                    let a = arena4[(a_at + mid * a_mid) / 4u];
                    acc0 += arena[bi] * a;
                    acc1 += arena[bi + b_row] * a;
                    acc2 += arena[bi + 2u * b_row] * a;
                    acc3 += arena[bi + 3u * b_row] * a;
                }
            } else {
                for (var mid = lo; mid < hi; mid++) {
                    let bi = b_at + mid * b_mid;
                    let ai = a_at + mid * a_mid;
                    let a = vec4<f32>(arena[ai], arena[ai + a_lane], arena[ai + 2u * a_lane], arena[ai + 3u * a_lane]);
                    acc0 += arena[bi] * a;
                    acc1 += arena[bi + b_row] * a;
                    acc2 += arena[bi + 2u * b_row] * a;
                    acc3 += arena[bi + 3u * b_row] * a;
                }
            }
            let row = per * taps;
            let at = out_k + (o0 * per + cl0) * taps + t;
            store_lanes(at, taps, acc0);
            store_lanes(at + row, taps, acc1);
            store_lanes(at + 2u * row, taps, acc2);
            store_lanes(at + 3u * row, taps, acc3);
        }
        return;
    }
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        var acc = 0.0;
        if (i < nk) {
            let t = i % taps;
            let cl = (i / taps) % per;
            let o = i / (taps * per);
            let c = (o / (o_count / groups)) * per + cl;
            let g_b = o / (o_count / gb);
            // Only the mid channels that both read c (those of the first conv's group
            // holding c) and feed o (those of the second conv's group of o): one
            // range, found once per element. Scanning all of the second group's
            // mids and dividing per mid to skip the others cost 7.1 s for
            // RepViT-M1's BN-into-1x1 compositions on lavapipe (a diagonal first
            // conv leaves one mid of hundreds).
            let mids_a = m / ga;
            let g_a = c / ca;
            let ci = c - g_a * ca;
            let lo = max(g_b * mb, g_a * mids_a);
            let hi = min(g_b * mb + mb, g_a * mids_a + mids_a);
            for (var mid = lo; mid < hi; mid++) {
                let j = mid - g_b * mb;
                if (first_1x1) {
                    acc += arena[b_k + (o * mb + j) * taps + t] * arena[a_k + mid * ca + ci];
                } else {
                    acc += arena[b_k + o * mb + j] * arena[a_k + (mid * ca + ci) * taps + t];
                }
            }
            arena[out_k + i] = acc;
        } else {
            arena[out_b + i - nk] = composed_bias(job, i - nk);
        }
    }
}

/// Four consecutive input channels' values at `at`, `at + stride`, ...
fn store_lanes(at: u32, stride: u32, v: vec4<f32>) {
    arena[at] = v.x;
    arena[at + stride] = v.y;
    arena[at + 2u * stride] = v.z;
    arena[at + 3u * stride] = v.w;
}

/// The composed bias of output channel `o`: b2 + sum over mids of the second
/// kernel's taps times the first bias.
fn composed_bias(job: ComposeJob, o: u32) -> f32 {
    var acc = 0.0;
    if (job.second_bias != NONE) {
        acc = arena[job.second_bias + o];
    }
    if (job.first_bias != NONE) {
        let mb = job.second_per;
        let g_b = o / (job.out_channels / job.second_groups);
        let btaps = job.second_kh * job.second_kw;
        for (var j = 0u; j < mb; j++) {
            var tap_sum = 0.0;
            for (var t = 0u; t < btaps; t++) {
                tap_sum += arena[job.second_kernel + (o * mb + j) * btaps + t];
            }
            acc += tap_sum * arena[job.first_bias + g_b * mb + j];
        }
    }
    return acc;
}
