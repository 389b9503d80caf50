// place: the sum of several kernels placed into one zero kernel [O, C/groups, KH, KW]:
// each source at a spatial offset (centring, asymmetric 1xK/Kx1), tap step (dilation
// ratio), output-channel offset (concat) and with group expansion.
// A source's channel map (out_stride, in_offset, in_stride, scale) interleaves and
// scales channels, for widened shortcuts. A source may carry a batch norm folded on
// the fly (gamma/beta/mean/var offsets, NONE when absent), so a conv+BN branch is
// placed without its folded kernel ever being written.
//
// Work mapping: an invocation owns a run of input channels of one output channel of
// the destination, i.e. a contiguous slice of it (consecutive invocations,
// consecutive slices), at least RUN elements long where the kernel allows: it writes
// the first source that covers the whole slice (zeroes it otherwise), then adds each
// other source's taps into it in source order (the same order as the CPU reference). Nothing is shared between invocations, so there are no
// atomics and no barriers, and the index arithmetic that needs a division (which
// channel of which source, the BN scale with its square root) is done once per slice
// and source, not once per element: the earlier gather, one invocation per
// destination element re-reading every source record and dividing a dozen times,
// ran at ~1% of a device copy on lavapipe. The host sizes the grid by RUN, which it
// sets per adapter when it builds the pipeline (`shaders::place_run`).

// Per-output-channel BN scale of source `src` for its output os (1 without BN).
fn bn_scale(src: PlaceSourceJob, os: u32) -> f32 {
    let gamma = src.gamma;
    if (gamma == NONE) {
        return 1.0;
    }
    return arena[gamma + os] / sqrt(arena[src.variance + os] + src.eps);
}

// a / b, without dividing when b is 1 or a < b (see the note in `main`).
fn quotient(a: u32, b: u32) -> u32 {
    if (b == 1u) {
        return a;
    }
    if (a < b) {
        return 0u;
    }
    return a / b;
}

fn zero_slice(row: u32, first: u32, end: u32) {
    for (var e = first; e < end; e++) {
        arena[row + e] = 0.0;
    }
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

// Elements an invocation's slice aims at: enough to amortise the per-source set-up.
// Overridden per adapter: a CPU adapter wants long slices (each invocation's
// set-up is scalar work its SIMD lanes cannot share), a GPU many short ones.
override RUN: u32 = 128u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let job = jobs[wid.y];
    let per = job.per;
    let kh_d = job.kh;
    let kw_d = job.kw;
    let taps = kh_d * kw_d;
    let o_per_group = job.out_channels / job.groups;
    // Input channels per slice, and slices per output channel.
    let run = clamp(RUN / taps, 1u, per);
    let slices = (per + run - 1u) / run;
    let count = job.out_channels * slices;
    for (var q = wid.x * WG + lid; q < count; q += nwg.x * WG) {
        // Integer division has no SIMD instruction on a CPU adapter (each lane divides
        // on its own): the common divisors, 1 slice per row and 1 or all output
        // channels per group, take no division.
        let o = select(q / slices, q, slices == 1u);
        let cl0 = (q - o * slices) * run;
        let cl1 = min(cl0 + run, per);
        let c0 = quotient(o, o_per_group) * per;
        let row = job.out_kernel + o * per * taps;
        // The slice is not zeroed up front: the first source that covers all of it
        // with a contiguous run stores instead of adding (0 + x is x, so the sum is
        // the same), saving a pass and a read per element; any other first source
        // zeroes the slice before adding.
        var written = false;
        var bias = 0.0;
        for (var s = 0u; s < job.sources; s++) {
            let src = sources[job.first_source + s];
            if (o < src.out_offset) {
                continue;
            }
            let os = quotient(o - src.out_offset, src.out_stride);
            if (os * src.out_stride != o - src.out_offset) {
                continue;
            }
            if (os >= src.out_channels) {
                continue;
            }
            let bn = bn_scale(src, os);
            if (cl0 == 0u && job.out_bias != NONE) {
                var b = 0.0;
                if (src.bias != NONE) {
                    b = arena[src.bias + os];
                }
                if (src.gamma != NONE) {
                    // (b - mean) * s + beta
                    b = (b - arena[src.mean + os]) * bn + arena[src.beta + os];
                }
                bias += src.scale * b;
            }
            let mult = src.scale * bn;
            let si = src.in_per_group;
            let base = quotient(os, quotient(src.out_channels, src.groups)) * si;
            let kh = src.kh;
            let kw = src.kw;
            if (kh == kh_d && kw == kw_d && src.offset_h == 0u && src.offset_w == 0u && src.step_h == 1u && src.step_w == 1u && src.in_stride == 1u) {
                // Same window, contiguous channels (3x3 into 3x3, 1x1 into 1x1): the
                // source's part of the slice is one run of elements.
                let lo = max(c0 + cl0, src.in_offset + base);
                let hi = min(c0 + cl1, src.in_offset + base + si);
                if (lo < hi) {
                    let dst_at = row + (lo - c0) * taps;
                    let src_at = src.kernel + (os * si + (lo - src.in_offset - base)) * taps;
                    let n = (hi - lo) * taps;
                    if (!written && lo == c0 + cl0 && hi == c0 + cl1) {
                        for (var e = 0u; e < n; e++) {
                            arena[dst_at + e] = mult * arena[src_at + e];
                        }
                        written = true;
                        continue;
                    }
                    if (!written) {
                        zero_slice(row, cl0 * taps, cl1 * taps);
                        written = true;
                    }
                    for (var e = 0u; e < n; e++) {
                        arena[dst_at + e] += mult * arena[src_at + e];
                    }
                }
                continue;
            }
            if (!written) {
                zero_slice(row, cl0 * taps, cl1 * taps);
                written = true;
            }
            if (kh == 1u && kw == 1u && src.in_stride == 1u) {
                // A 1x1 source (RepVGG's 1x1 branch, an identity's Dirac): one tap per
                // channel of the slice it covers, `taps` apart in the destination.
                if (src.offset_h < kh_d && src.offset_w < kw_d) {
                    let lo = max(c0 + cl0, src.in_offset + base);
                    let hi = min(c0 + cl1, src.in_offset + base + si);
                    let dst_at = row + src.offset_h * kw_d + src.offset_w;
                    let src_at = src.kernel + os * si - src.in_offset - base;
                    for (var c = lo; c < hi; c++) {
                        arena[dst_at + (c - c0) * taps] += mult * arena[src_at + c];
                    }
                }
                continue;
            }
            for (var cl = cl0; cl < cl1; cl++) {
                // The destination input channel c, mapped back to the source's.
                let c = c0 + cl;
                if (c < src.in_offset) {
                    continue;
                }
                var cs = c - src.in_offset;
                if (src.in_stride != 1u) {
                    if (cs % src.in_stride != 0u) {
                        continue;
                    }
                    cs = cs / src.in_stride;
                }
                if (cs < base || cs >= base + si) {
                    continue;
                }
                let src_at = src.kernel + (os * si + (cs - base)) * kh * kw;
                let dst_at = row + cl * taps + src.offset_h * kw_d + src.offset_w;
                // Only the source taps that land inside the destination window.
                for (var sh = 0u; sh < kh && src.offset_h + sh * src.step_h < kh_d; sh++) {
                    for (var sw = 0u; sw < kw && src.offset_w + sw * src.step_w < kw_d; sw++) {
                        arena[dst_at + sh * src.step_h * kw_d + sw * src.step_w] += mult * arena[src_at + sh * kw + sw];
                    }
                }
            }
        }
        if (!written) {
            zero_slice(row, cl0 * taps, cl1 * taps);
        }
        if (cl0 == 0u && job.out_bias != NONE) {
            arena[job.out_bias + o] = bias;
        }
    }
}
