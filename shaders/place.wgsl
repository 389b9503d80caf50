// place: the sum of several kernels placed into one zero kernel [O, C/groups, KH, KW]:
// each source at a spatial offset (centring, asymmetric 1xK/Kx1), tap step (dilation
// ratio), output-channel offset (concat) and with group expansion. A gather, so
// every destination element is written by exactly one invocation, without atomics.
// A source's channel map (out_stride, in_offset, in_stride, scale) interleaves and
// scales channels, for widened shortcuts. A source may carry a batch norm folded on
// the fly (gamma/beta/mean/var offsets, NONE when absent), so a conv+BN branch is
// placed without its folded kernel ever being written.

// Per-output-channel BN scale of source `src` for its output os (1 without BN).
fn bn_scale(src: PlaceSourceJob, os: u32) -> f32 {
    let gamma = src.gamma;
    if (gamma == NONE) {
        return 1.0;
    }
    return arena[gamma + os] / sqrt(arena[src.variance + os] + src.eps);
}

struct PlaceJob {
    out_kernel: u32, out_bias: u32, out_channels: u32, per: u32, kh: u32, kw: u32,
    groups: u32, in_channels: u32, first_source: u32, sources: u32,
}

struct PlaceSourceJob {
    kernel: u32, bias: u32, out_channels: u32, groups: u32, kh: u32, kw: u32,
    offset_h: u32, offset_w: u32, step_h: u32, step_w: u32, out_offset: u32, out_stride: u32,
    in_offset: u32, in_stride: u32, scale: f32, in_per_group: u32,
    gamma: u32, beta: u32, mean: u32, variance: u32, eps: f32,
}

@group(0) @binding(1) var<storage, read> jobs: array<PlaceJob>;
@group(0) @binding(2) var<storage, read> sources: array<PlaceSourceJob>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let job = jobs[gid.y];
    let out_k = job.out_kernel;
    let out_b = job.out_bias;
    let o_count = job.out_channels;
    let per = job.per;
    let kh_d = job.kh;
    let kw_d = job.kw;
    let groups = job.groups;
    let c_in = job.in_channels;
    let src0 = job.first_source;
    let nsrc = job.sources;
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
                let src = sources[src0 + s];
                let k_off = src.kernel;
                let os_count = src.out_channels;
                let gs = src.groups;
                let kh = src.kh;
                let kw = src.kw;
                let off_h = src.offset_h;
                let off_w = src.offset_w;
                let step_h = src.step_h;
                let step_w = src.step_w;
                let out_off = src.out_offset;
                let out_stride = src.out_stride;
                let in_off = src.in_offset;
                let in_stride = src.in_stride;
                let scale = src.scale;
                if (o < out_off || (o - out_off) % out_stride != 0u || (o - out_off) / out_stride >= os_count || h < off_h || w < off_w) {
                    continue;
                }
                let dh = h - off_h;
                let dw = w - off_w;
                if (dh % step_h != 0u || dw % step_w != 0u || dh / step_h >= kh || dw / step_w >= kw) {
                    continue;
                }
                let os = (o - out_off) / out_stride;
                let si = src.in_per_group;
                // c is a destination input channel; map it back to the source's.
                if (c < in_off || (c - in_off) % in_stride != 0u) {
                    continue;
                }
                let cs = (c - in_off) / in_stride;
                let base = (os / (os_count / gs)) * si;
                if (cs < base || cs >= base + si) {
                    continue;
                }
                acc += scale * bn_scale(src, os) * arena[k_off + ((os * si + (cs - base)) * kh + dh / step_h) * kw + dw / step_w];
            }
            arena[out_k + i] = acc;
        } else {
            let o = i - nk;
            for (var s = 0u; s < nsrc; s++) {
                let src = sources[src0 + s];
                let b_off = src.bias;
                let os_count = src.out_channels;
                let out_off = src.out_offset;
                let out_stride = src.out_stride;
                let scale = src.scale;
                if (o < out_off || (o - out_off) % out_stride != 0u || (o - out_off) / out_stride >= os_count) {
                    continue;
                }
                let os = (o - out_off) / out_stride;
                var b = 0.0;
                if (b_off != NONE) {
                    b = arena[b_off + os];
                }
                if (src.gamma != NONE) {
                    // (b - mean) * s + beta
                    b = (b - arena[src.mean + os]) * bn_scale(src, os) + arena[src.beta + os];
                }
                acc += scale * b;
            }
            arena[out_b + o] = acc;
        }
    }
}
