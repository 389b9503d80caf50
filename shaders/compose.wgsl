// compose: second(first(x)) as one kernel when one of the two is 1x1 (paradigm 5),
// grouped on both sides, into `groups` groups; the first bias is carried through the
// second kernel: b = b2 + sum_taps(k2) . b1.

struct ComposeJob {
    first_kernel: u32, first_bias: u32, first_groups: u32, mid: u32, first_per: u32, first_kh: u32, first_kw: u32,
    second_kernel: u32, second_bias: u32, second_groups: u32, out_channels: u32, second_per: u32, second_kh: u32, second_kw: u32,
    in_channels: u32, groups: u32, out_kernel: u32, out_bias: u32,
}

@group(0) @binding(1) var<storage, read> jobs: array<ComposeJob>;

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
