// place: the sum of several kernels placed into one zero kernel [O, C/groups, KH, KW]:
// each source at a spatial offset (centring, asymmetric 1xK/Kx1), tap step (dilation
// ratio), output-channel offset (concat) and with group expansion.
// A source's channel map (out_stride, in_offset, in_stride, scale) interleaves and
// scales channels, for widened shortcuts. A source may carry a batch norm folded on
// the fly (gamma/beta/mean/var offsets, NONE when absent), so a conv+BN branch is
// placed without its folded kernel ever being written.
//
// Work mapping: the destination is cut into slices, each a run of input channels of
// one output channel (a contiguous piece of it, at least RUN elements long where the
// kernel allows). A slice is written by one team of LANES consecutive invocations,
// lane l owning the slice's input channels l, l + LANES, ... (all their taps):
// neighbouring invocations touch neighbouring memory (1x1 rows: neighbouring
// elements), which a GPU coalesces and a CPU adapter's SIMD lanes take from one or
// two cache lines (with one slice per invocation, lanes were a whole slice apart).
// Owning whole channels keeps every path (runs, 1x1 taps, mapped channels) on the
// same owner per element. Slices of fewer than LANES channels (depthwise rows) keep
// one invocation each: the per-source set-up every lane of a team repeats would cost
// more than it saves.
// A lone invocation first sums up to four sources that cover its whole slice with
// the destination's window in registers and writes each element once (MobileOne's
// parallel branches: its place went from 17.9-18.3 to 10.3-10.7 ms on lavapipe);
// a team writes the first such source. Where the slice is whole groups of four
// channels at aligned addresses it also takes up to two 1x1 sources at the kernel's
// centre (RepVGG's 1x1 branch and identity) in the same pass (`sum_groups`), so a
// RepVGG slice is written once, as vec4s when no other source is left, instead of
// a read-add-write of one element in nine per 1x1 source after it (RepVGG-B0's
// place 33-39 -> 20-25 ms on lavapipe, with the CPU adapter's longer slices).
// Every other source's taps are then added in
// source order (the reference's order up to the summed ones going first, which the
// GPU-vs-CPU tolerance covers); every element has one owner, so there are no
// atomics and no barriers, and the index arithmetic that needs a division (which channel of which
// source, the BN scale with its square root) is done once per slice and source, not
// once per element: the first design, one invocation per destination element
// re-reading every source record and dividing a dozen times, ran at ~1% of a device
// copy on lavapipe. The host sizes the grid by RUN and LANES, which it sets per
// adapter when it builds the pipeline (`shaders::PlaceShape`).

// Sources read four elements per access. Binding 0 (`arena`, from jobs_common.wgsl) takes
// every scalar access; binding 3 is the same buffer seen as vec4s. A dispatch runs
// one dependency level, so no job of it writes a tensor another job reads, and the
// two views never meet on memory written in the dispatch (no alias for a compiler to
// assume away): binding 3 is read at sources, and written only by the register sum
// of an invocation that owns its whole slice (`own`: every source of the job summed
// or out of reach), which then writes that slice only through it, in whole aligned
// vec4s. Other writes stay scalar because WGSL lets a write to one component of a
// vector touch all four (Metal's does), which would race with the neighbour that
// owns the next element. lavapipe runs every lane's access as its own bounds-checked
// scalar loop, so one access per four elements is most of the gain: loads (see
// gpu-place.md, session 11), then the register sum's stores (session 21). WebGPU in
// a browser forbids a writable binding overlapping another; wgpu on Vulkan, Metal
// and DX12 does not check it.
@group(0) @binding(3) var<storage, read_write> sources4: array<vec4<f32>>;

// Writes four consecutive destination elements.
fn store4(i: u32, v: vec4<f32>) {
    arena[i] = v.x;
    arena[i + 1u] = v.y;
    arena[i + 2u] = v.z;
    arena[i + 3u] = v.w;
}

// Writes four destination elements from element `i`: one vec4 store where the
// invocation owns the slice (`own`, i then 16-byte aligned), else four scalar ones.
fn put4(own: bool, i: u32, v: vec4<f32>) {
    if (own) {
        sources4[i >> 2u] = v;
    } else {
        store4(i, v);
    }
}

// Writes dst[e] = sum over the first k of a[j][e] * m[j] for e < n, each element once
// (k = 1..4 summed sources; see the register sum in `main`): four elements per load
// (and per store when `own`: dst is then aligned too) while every source address is
// a multiple of 4, the tail one by one. Each k has its own loop: a loop over k
// inside would keep the accumulators in memory on lavapipe.
fn sum_sources(dst: u32, n: u32, k: u32, a: vec4<u32>, m: vec4<f32>, own: bool) {
    var done = 0u;
    if (((a.x | a.y | a.z | a.w) & 3u) == 0u) {
        let b = a >> vec4<u32>(2u);
        let n4 = n >> 2u;
        if (k == 1u) {
            for (var e = 0u; e < n4; e++) {
                put4(own, dst + 4u * e, m.x * sources4[b.x + e]);
            }
        } else if (k == 2u) {
            for (var e = 0u; e < n4; e++) {
                put4(own, dst + 4u * e, m.x * sources4[b.x + e] + m.y * sources4[b.y + e]);
            }
        } else if (k == 3u) {
            for (var e = 0u; e < n4; e++) {
                put4(own, dst + 4u * e, m.x * sources4[b.x + e] + m.y * sources4[b.y + e] + m.z * sources4[b.z + e]);
            }
        } else if (k == 4u) {
            for (var e = 0u; e < n4; e++) {
                put4(own, dst + 4u * e, m.x * sources4[b.x + e] + m.y * sources4[b.y + e] + m.z * sources4[b.z + e] + m.w * sources4[b.w + e]);
            }
        }
        done = n4 * 4u;
    }
    if (k == 1u) {
        for (var e = done; e < n; e++) {
            arena[dst + e] = m.x * arena[a.x + e];
        }
    } else if (k == 2u) {
        for (var e = done; e < n; e++) {
            arena[dst + e] = m.x * arena[a.x + e] + m.y * arena[a.y + e];
        }
    } else if (k == 3u) {
        for (var e = done; e < n; e++) {
            arena[dst + e] = m.x * arena[a.x + e] + m.y * arena[a.y + e] + m.z * arena[a.z + e];
        }
    } else if (k == 4u) {
        for (var e = done; e < n; e++) {
            arena[dst + e] = m.x * arena[a.x + e] + m.y * arena[a.y + e] + m.z * arena[a.z + e] + m.w * arena[a.w + e];
        }
    }
}

// A 1x1 source taken into the register sum of a wider kernel (RepVGG's 1x1 branch,
// an identity's Dirac): for slice channel r in [lo, hi) its value is
// m * arena[at + r], added at tap p of that channel's taps (p4 = p / 4).
struct Centre { at: u32, lo: u32, hi: u32, m: f32, p4: u32 }

// The centre source's values for slice channels r .. r + 3 (0 outside [lo, hi)):
// one vec4 load where all four are in range and aligned.
fn centre_values(c: Centre, r: u32) -> vec4<f32> {
    if (r >= c.lo && r + 4u <= c.hi && ((c.at + r) & 3u) == 0u) {
        return c.m * sources4[(c.at + r) >> 2u];
    }
    var w = vec4<f32>(0.0);
    if (r + 4u <= c.lo || r >= c.hi) {
        return w;
    }
    if (r >= c.lo && r < c.hi) { w.x = c.m * arena[c.at + r]; }
    if (r + 1u >= c.lo && r + 1u < c.hi) { w.y = c.m * arena[c.at + r + 1u]; }
    if (r + 2u >= c.lo && r + 2u < c.hi) { w.z = c.m * arena[c.at + r + 2u]; }
    if (r + 3u >= c.lo && r + 3u < c.hi) { w.w = c.m * arena[c.at + r + 3u]; }
    return w;
}

// The k summed sources' vec4 i (vec4 indices b), four elements per load.
fn sum4(k: u32, b: vec4<u32>, m: vec4<f32>, i: u32) -> vec4<f32> {
    var v = m.x * sources4[b.x + i];
    if (k >= 2u) { v += m.y * sources4[b.y + i]; }
    if (k >= 3u) { v += m.z * sources4[b.z + i]; }
    if (k >= 4u) { v += m.w * sources4[b.w + i]; }
    return v;
}

// `sum_sources` for slices of whole groups of four channels, with up to two 1x1
// sources (`cn` of c0, c1) added at their tap in the same pass, so the slice is
// written once and never read back (RepVGG's 3x3 + 1x1 + identity; before, each
// 1x1 tap was a read-add-write one element in nine). Four channels of `taps`
// elements are `taps` vec4s; with taps % 4 == 1 and p % 4 == 0 (odd square kernels'
// centre, any tap of a 1x1 kernel) channel j's tap p is lane j of vec4
// j * (taps - 1) / 4 + p / 4, so a 1x1 source adds its four values where that
// index is i: one compare and select per vec4. Every address is 16-byte aligned.
// `own`: nothing else touches the slice in this dispatch, so stores are vec4s.
fn sum_groups(dst: u32, groups: u32, taps: u32, k: u32, a: vec4<u32>, m: vec4<f32>, cn: u32, c0: Centre, c1: Centre, own: bool) {
    let q = vec4<u32>(0u, 1u, 2u, 3u) * ((taps - 1u) / 4u);
    let idx0 = q + vec4<u32>(c0.p4);
    let idx1 = q + vec4<u32>(c1.p4);
    let zero = vec4<f32>(0.0);
    for (var g = 0u; g < groups; g++) {
        let w0 = centre_values(c0, 4u * g);
        var w1 = zero;
        if (cn >= 2u) {
            w1 = centre_values(c1, 4u * g);
        }
        let b = (a >> vec4<u32>(2u)) + vec4<u32>(g * taps);
        let d = (dst >> 2u) + g * taps;
        if (k == 1u && own) {
            for (var i = 0u; i < taps; i++) {
                let at = vec4<u32>(i);
                sources4[d + i] = m.x * sources4[b.x + i] + select(zero, w0, idx0 == at) + select(zero, w1, idx1 == at);
            }
            continue;
        }
        for (var i = 0u; i < taps; i++) {
            let at = vec4<u32>(i);
            put4(own, 4u * (d + i), sum4(k, b, m, i) + select(zero, w0, idx0 == at) + select(zero, w1, idx1 == at));
        }
    }
}

// Per-output-channel BN scale of source `src` for its output os (1 without BN).
fn bn_scale(src: PlaceSourceJob, os: u32) -> f32 {
    let gamma = src.gamma;
    if (gamma == NONE) {
        return 1.0;
    }
    return arena[gamma + os] / sqrt(arena[src.variance + os] + src.eps);
}

// The source's output channel feeding destination output channel o, or NONE when
// the source does not reach o (concat offsets, interleaving strides).
fn source_channel(src: PlaceSourceJob, o: u32) -> u32 {
    if (o < src.out_offset) {
        return NONE;
    }
    let os = quotient(o - src.out_offset, src.out_stride);
    if (os * src.out_stride != o - src.out_offset || os >= src.out_channels) {
        return NONE;
    }
    return os;
}

// The source's share of the destination bias: its bias, through its BN if any.
fn source_bias(src: PlaceSourceJob, os: u32, bn: f32) -> f32 {
    var b = 0.0;
    if (src.bias != NONE) {
        b = arena[src.bias + os];
    }
    if (src.gamma != NONE) {
        // (b - mean) * s + beta
        b = (b - arena[src.mean + os]) * bn + arena[src.beta + os];
    }
    return src.scale * b;
}

// First input channel (in the source's numbering) of the group that the source's
// output channel os reads.
fn group_base(src: PlaceSourceJob, os: u32) -> u32 {
    return quotient(os, quotient(src.out_channels, src.groups)) * src.in_per_group;
}

// The source has the destination's window and contiguous channels (3x3 into 3x3,
// 1x1 into 1x1): each channel it covers is one run of `taps` elements.
fn same_window(src: PlaceSourceJob, kh_d: u32, kw_d: u32) -> bool {
    return src.kh == kh_d && src.kw == kw_d && src.offset_h == 0u && src.offset_w == 0u && src.step_h == 1u && src.step_w == 1u && src.in_stride == 1u;
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

// Zeroes the taps of input channels first, first + step, ... below end of the
// destination row at `row` (one flat run when those are consecutive elements).
fn zero_channels(row: u32, first: u32, end: u32, step: u32, taps: u32) {
    if (step == 1u || taps == 1u) {
        for (var e = first * taps; e < end * taps; e += step) {
            arena[row + e] = 0.0;
        }
        return;
    }
    for (var cl = first; cl < end; cl += step) {
        for (var t = 0u; t < taps; t++) {
            arena[row + cl * taps + t] = 0.0;
        }
    }
}

// Adds (or, when `store`, writes) `mult` times a source's run of channels
// [lo, hi) into the destination's, this lane's channels only: the first is `first`,
// then every `lanes`-th. A lane alone, or 1x1 kernels (a channel is one element),
// make that one strided run of elements, the loop the slices were fastest with on
// lavapipe; teams on wider kernels take each owned channel's taps in turn.
fn add_run(dst: u32, src: u32, lo: u32, hi: u32, first: u32, lanes: u32, taps: u32, mult: f32, store: bool) {
    if (lanes == 1u || taps == 1u) {
        let n = (hi - lo) * taps;
        if (store) {
            for (var e = first - lo; e < n; e += lanes) {
                arena[dst + e] = mult * arena[src + e];
            }
        } else {
            for (var e = first - lo; e < n; e += lanes) {
                arena[dst + e] += mult * arena[src + e];
            }
        }
        return;
    }
    for (var c = first - lo; c < hi - lo; c += lanes) {
        for (var t = c * taps; t < (c + 1u) * taps; t++) {
            if (store) {
                arena[dst + t] = mult * arena[src + t];
            } else {
                arena[dst + t] += mult * arena[src + t];
            }
        }
    }
}

struct PlaceJob {
    out_kernel: u32, out_bias: u32, out_channels: u32, per: u32, kh: u32, kw: u32,
    groups: u32, in_channels: u32, first_source: u32, sources: u32, summable: u32, centre: u32,
}

struct PlaceSourceJob {
    kernel: u32, bias: u32, out_channels: u32, groups: u32, kh: u32, kw: u32,
    offset_h: u32, offset_w: u32, step_h: u32, step_w: u32, out_offset: u32, out_stride: u32,
    in_offset: u32, in_stride: u32, scale: f32, in_per_group: u32,
    gamma: u32, beta: u32, mean: u32, variance: u32, eps: f32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(1) var<storage, read> jobs: array<PlaceJob>;
// The source records, 24 words each, read as six vec4s (`source_at`).
@group(0) @binding(2) var<storage, read> source_words: array<vec4<u32>>;

// Source record i. lavapipe runs each storage load as a loop over the SIMD lanes
// (uniform address or not), so a record costs six such loops, not one per field;
// the depthwise rows of MobileOne read six records per nine elements.
fn source_at(i: u32) -> PlaceSourceJob {
    let v0 = source_words[6u * i];
    let v1 = source_words[6u * i + 1u];
    let v2 = source_words[6u * i + 2u];
    let v3 = source_words[6u * i + 3u];
    let v4 = source_words[6u * i + 4u];
    let v5 = source_words[6u * i + 5u];
    return PlaceSourceJob(
        v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w, v2.x, v2.y, v2.z, v2.w,
        v3.x, v3.y, bitcast<f32>(v3.z), v3.w, v4.x, v4.y, v4.z, v4.w, bitcast<f32>(v5.x), v5.y, v5.z, v5.w,
    );
}

// Elements a slice aims at: enough to amortise the per-source set-up (on a CPU
// adapter scalar work its SIMD lanes cannot share; on a GPU shared by a team).
override RUN: u32 = 1024u;
// Invocations sharing one slice (a power of two dividing WG): a GPU's SIMD width, or
// 1 on a CPU adapter (see `shaders::PlaceShape`).
override LANES: u32 = 32u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let job = jobs[wid.y];
    let per = job.per;
    let kh_d = job.kh;
    let kw_d = job.kw;
    let taps = kh_d * kw_d;
    let o_per_group = job.out_channels / job.groups;
    // Input channels per slice, and slices per output channel.
    // A multiple of 4 channels when slices are cut (so a slice of a row that starts
    // 16-byte aligned keeps its sources' runs aligned for vec4 loads).
    let run = clamp(select(RUN / taps, (RUN / taps) & ~3u, RUN / taps >= 4u), 1u, per);
    let slices = (per + run - 1u) / run;
    let count = job.out_channels * slices;
    // One invocation per slice, or a team of LANES per slice (see the top note); the
    // choice is the job's, so uniform across the workgroup.
    let team = run >= LANES;
    let inv = wid.x * WG + lid;
    let lanes = select(1u, LANES, team);
    let lane = select(0u, inv % LANES, team);
    for (var q = select(inv, inv / LANES, team); q < count; q += nwg.x * (WG / lanes)) {
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
        // A lone invocation first sums up to four sources that cover its whole slice
        // with the same window (MobileOne's parallel 1x1 and 3x3 branches) in
        // registers and writes each element once, instead of storing the first and
        // reading, adding and writing the slice again for each other one. They are
        // then skipped below (`summed`, a bit per source).
        var summed = 0u;
        if (lanes == 1u) {
            // Sources that do not reach this output channel: nothing to add.
            var settled = 0u;
            var k = 0u;
            var a0 = 0u; var a1 = 0u; var a2 = 0u; var a3 = 0u;
            var m0 = 0.0; var m1 = 0.0; var m2 = 0.0; var m3 = 0.0;
            // Only the first 32 sources can be summed (one bit each in `summed`), and
            // only those with the destination's window (the host's `summable` bits,
            // `same_window` decided once per job): no other record is read here.
            for (var bits = job.summable; bits != 0u && k < 4u; bits &= bits - 1u) {
                let s = countTrailingZeros(bits);
                let src = source_at(job.first_source + s);
                let os = source_channel(src, o);
                if (os == NONE) {
                    settled |= 1u << s;
                    continue;
                }
                let si = src.in_per_group;
                let base = group_base(src, os);
                if (src.in_offset + base > c0 + cl0 || src.in_offset + base + si < c0 + cl1) {
                    continue;
                }
                let bn = bn_scale(src, os);
                if (cl0 == 0u && job.out_bias != NONE) {
                    bias += source_bias(src, os, bn);
                }
                let at = src.kernel + (os * si + (c0 + cl0 - src.in_offset - base)) * taps;
                let m = src.scale * bn;
                if (k == 0u) { a0 = at; m0 = m; } else if (k == 1u) { a1 = at; m1 = m; } else if (k == 2u) { a2 = at; m2 = m; } else { a3 = at; m3 = m; }
                k++;
                summed |= 1u << s;
            }
            let a = vec4<u32>(a0, a1, a2, a3);
            let m = vec4<f32>(m0, m1, m2, m3);
            let dst = row + cl0 * taps;
            // Up to two 1x1 sources (the host's `centre` bits) join the sum where the
            // slice is whole groups of four channels at aligned addresses (`sum_groups`).
            var cn = 0u;
            var cen0 = Centre(0u, 0u, 0u, 0.0, 0u);
            var cen1 = cen0;
            let n = (cl1 - cl0) * taps;
            let aligned = ((a.x | a.y | a.z | a.w | dst | n) & 3u) == 0u;
            if (k > 0u && aligned && (cl1 - cl0) % 4u == 0u) {
                for (var bits = job.centre & ~summed; bits != 0u && cn < 2u; bits &= bits - 1u) {
                    let s = countTrailingZeros(bits);
                    let src = source_at(job.first_source + s);
                    let os = source_channel(src, o);
                    if (os == NONE) {
                        settled |= 1u << s;
                        continue;
                    }
                    let bn = bn_scale(src, os);
                    if (cl0 == 0u && job.out_bias != NONE) {
                        bias += source_bias(src, os, bn);
                    }
                    // Its channels [lo, hi) of the slice; `at` wraps below the kernel
                    // where the source starts past the slice, and is only read in range.
                    let first = src.in_offset + group_base(src, os);
                    let lo = max(c0 + cl0, first);
                    let hi = max(min(c0 + cl1, first + src.in_per_group), lo);
                    let at = src.kernel + os * src.in_per_group + c0 + cl0 - first;
                    let cen = Centre(at, lo - c0 - cl0, hi - c0 - cl0, src.scale * bn, (src.offset_h * kw_d + src.offset_w) / 4u);
                    if (cn == 0u) { cen0 = cen; } else { cen1 = cen; }
                    cn++;
                    summed |= 1u << s;
                }
            }
            // Every source of the job summed or out of reach: this invocation alone
            // writes the slice in this dispatch, and only here (vec4 stores are safe).
            let all = select((1u << job.sources) - 1u, 0xffffffffu, job.sources >= 32u);
            let own = job.sources <= 32u && ((summed | settled) & all) == all;
            if (cn > 0u) {
                sum_groups(dst, (cl1 - cl0) / 4u, taps, k, a, m, cn, cen0, cen1, own);
            } else {
                sum_sources(dst, n, k, a, m, own && aligned);
            }
            written = k > 0u;
        }
        for (var s = 0u; s < job.sources; s++) {
            if (s < 32u && ((summed >> s) & 1u) != 0u) {
                continue;
            }
            let src = source_at(job.first_source + s);
            let os = source_channel(src, o);
            if (os == NONE) {
                continue;
            }
            let bn = bn_scale(src, os);
            if (cl0 == 0u && job.out_bias != NONE) {
                bias += source_bias(src, os, bn);
            }
            let mult = src.scale * bn;
            let si = src.in_per_group;
            let base = group_base(src, os);
            let kh = src.kh;
            let kw = src.kw;
            if (same_window(src, kh_d, kw_d)) {
                let lo = max(c0 + cl0, src.in_offset + base);
                let hi = min(c0 + cl1, src.in_offset + base + si);
                if (lo < hi) {
                    let store = !written && lo == c0 + cl0 && hi == c0 + cl1;
                    if (!written && !store) {
                        zero_channels(row, cl0 + lane, cl1, lanes, taps);
                    }
                    written = true;
                    // This lane's first channel at or after lo (lanes is a power of two,
                    // so the wrapping difference masks right).
                    let first = lo + ((c0 + cl0 + lane - lo) & (lanes - 1u));
                    let dst_at = row + (lo - c0) * taps;
                    let src_at = src.kernel + (os * si + (lo - src.in_offset - base)) * taps;
                    add_run(dst_at, src_at, lo, hi, first, lanes, taps, mult, store);
                }
                continue;
            }
            if (!written) {
                zero_channels(row, cl0 + lane, cl1, lanes, taps);
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
                    for (var c = lo + ((c0 + cl0 + lane - lo) & (lanes - 1u)); c < hi; c += lanes) {
                        arena[dst_at + (c - c0) * taps] += mult * arena[src_at + c];
                    }
                }
                continue;
            }
            for (var cl = cl0 + lane; cl < cl1; cl += lanes) {
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
            zero_channels(row, cl0 + lane, cl1, lanes, taps);
        }
        if (cl0 == 0u && job.out_bias != NONE && lane == 0u) {
            arena[job.out_bias + o] = bias;
        }
    }
}
