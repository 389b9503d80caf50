// conv2d forward, register-blocked and without workgroup memory: each invocation
// computes 8 output channels x 4 consecutive output pixels of one row (32
// accumulators in 8 vec4 registers), reading inputs and weights straight from the
// storage buffers, so each loaded input feeds 8 FMAs and each weight 4.
//
// Why no workgroup tiling here: on a CPU adapter (lavapipe, SwiftShader) a workgroup
// runs as a loop over its subgroups and every barrier switches between all of them,
// while "global" memory is the CPU's own cached memory; a barrier-free kernel whose
// reuse lives in registers is faster there than the tiled one. Real GPUs take
// `conv2d_tiled.wgsl`; the host picks per adapter.
//
// - The output-channel block is the workgroup's y, so every lane of a workgroup loads
//   the same weight addresses.
// - Taps are the outer loops and input channels the inner one: the border checks of
//   a tap (which columns fall in the padding) are made once per tap, not once per
//   input channel.
// - Rows of 3 taps at stride 1 (every 3x3 and 1x3 conv of RepVGG-style nets) load
//   the 6 input columns the 4 pixels' taps share once per input channel, not 12
//   times: 9 against 5 GFLOP/s on lavapipe for a 64-channel 3x3 layer.
// - The accumulators are named vec4s, not an array: a dynamically indexed private
//   array stays in memory on lavapipe.
// Same Params as conv2d.wgsl; the host sends only convs with at least 4 output
// channels per group. Dispatch (ceil(pixel blocks / 256), blocks per group x groups).

const WG: u32 = 256u;
const OCB: u32 = 8u;
const PX: u32 = 4u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let per_in = p.c / p.groups;
    let per_out = p.o / p.groups;
    let blocks_x = (p.wo + PX - 1u) / PX;
    let blocks_oc = (per_out + OCB - 1u) / OCB;
    let rows = p.n * p.ho;
    let total = blocks_x * rows;
    let taps = p.kh * p.kw;
    let w_stride = per_in * taps;
    let hw = p.h * p.w;
    let stride = nwg.x * WG;
    let three_wide = p.kw == 3u && p.sw == 1u && p.dw == 1u;
    let g = wg.y / blocks_oc;
    let m0 = (wg.y % blocks_oc) * OCB;
    // Output channels past the group's end load channel per_out - 1 and are not
    // written.
    let last = g * per_out + per_out - 1u;
    let oc0 = g * per_out + m0;
        let w0 = min(oc0 + 0u, last) * w_stride;
    let w1 = min(oc0 + 1u, last) * w_stride;
    let w2 = min(oc0 + 2u, last) * w_stride;
    let w3 = min(oc0 + 3u, last) * w_stride;
    let w4 = min(oc0 + 4u, last) * w_stride;
    let w5 = min(oc0 + 5u, last) * w_stride;
    let w6 = min(oc0 + 6u, last) * w_stride;
    let w7 = min(oc0 + 7u, last) * w_stride;
    for (var i = gid.x; i < total; i += stride) {
        let ox0 = (i % blocks_x) * PX;
        let row_id = i / blocks_x;
        let oy = row_id % p.ho;
        let b = row_id / p.ho;
        let x0 = (b * p.c + g * per_in) * hw;
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        var acc4 = vec4<f32>(0.0);
        var acc5 = vec4<f32>(0.0);
        var acc6 = vec4<f32>(0.0);
        var acc7 = vec4<f32>(0.0);
        for (var a = 0u; a < p.kh; a++) {
            let iy = i32(oy * p.sh + a * p.dh) - i32(p.pt);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            let row = x0 + u32(iy) * p.w;
            if (three_wide) {
                // 1x3 taps at stride 1: the 4 pixels' three taps read 6 neighbouring
                // columns, loaded once per input channel instead of 12 times.
                let ix0 = i32(ox0) - i32(p.pl);
                let ia = vec4<i32>(ix0, ix0 + 1, ix0 + 2, ix0 + 3);
                let ib = vec2<i32>(ix0 + 4, ix0 + 5);
                let wmax = i32(p.w) - 1;
                let ma = select(vec4<f32>(0.0), vec4<f32>(1.0), ia >= vec4<i32>(0) & ia <= vec4<i32>(wmax));
                let mb = select(vec2<f32>(0.0), vec2<f32>(1.0), ib >= vec2<i32>(0) & ib <= vec2<i32>(wmax));
                let ca = vec4<u32>(clamp(ia, vec4<i32>(0), vec4<i32>(wmax))) + row;
                let cb = vec2<u32>(clamp(ib, vec2<i32>(0), vec2<i32>(wmax))) + row;
                var k = a * 3u;
                for (var j = 0u; j < per_in; j++) {
                    let off = j * hw;
                    let va = vec4<f32>(x[ca.x + off], x[ca.y + off], x[ca.z + off], x[ca.w + off]) * ma;
                    let vb = vec2<f32>(x[cb.x + off], x[cb.y + off]) * mb;
                    let v0 = va;
                    let v1 = vec4<f32>(va.yzw, vb.x);
                    let v2 = vec4<f32>(va.zw, vb);
                    acc0 += weight[w0 + k] * v0 + weight[w0 + k + 1u] * v1 + weight[w0 + k + 2u] * v2;
                    acc1 += weight[w1 + k] * v0 + weight[w1 + k + 1u] * v1 + weight[w1 + k + 2u] * v2;
                    acc2 += weight[w2 + k] * v0 + weight[w2 + k + 1u] * v1 + weight[w2 + k + 2u] * v2;
                    acc3 += weight[w3 + k] * v0 + weight[w3 + k + 1u] * v1 + weight[w3 + k + 2u] * v2;
                    acc4 += weight[w4 + k] * v0 + weight[w4 + k + 1u] * v1 + weight[w4 + k + 2u] * v2;
                    acc5 += weight[w5 + k] * v0 + weight[w5 + k + 1u] * v1 + weight[w5 + k + 2u] * v2;
                    acc6 += weight[w6 + k] * v0 + weight[w6 + k + 1u] * v1 + weight[w6 + k + 2u] * v2;
                    acc7 += weight[w7 + k] * v0 + weight[w7 + k + 1u] * v1 + weight[w7 + k + 2u] * v2;
                    k += taps;
                }
                continue;
            }
            for (var t = 0u; t < p.kw; t++) {
                // Column of each of the 4 pixels for this tap (clamped, so every lane
                // reads in bounds) and 1.0 where it lies inside the image, 0.0 in the
                // padding.
                let ix = vec4<i32>(vec4<u32>(ox0, ox0 + 1u, ox0 + 2u, ox0 + 3u) * p.sw + t * p.dw) - i32(p.pl);
                let inside = ix >= vec4<i32>(0) & ix < vec4<i32>(i32(p.w)) & vec4<u32>(ox0, ox0 + 1u, ox0 + 2u, ox0 + 3u) < vec4<u32>(p.wo);
                let mask = select(vec4<f32>(0.0), vec4<f32>(1.0), inside);
                let col = vec4<u32>(clamp(ix, vec4<i32>(0), vec4<i32>(i32(p.w) - 1))) + row;
                var k = a * p.kw + t;
                for (var j = 0u; j < per_in; j++) {
                    let off = j * hw;
                    let v = vec4<f32>(x[col.x + off], x[col.y + off], x[col.z + off], x[col.w + off]) * mask;
                    acc0 += weight[w0 + k] * v;
                    acc1 += weight[w1 + k] * v;
                    acc2 += weight[w2 + k] * v;
                    acc3 += weight[w3 + k] * v;
                    acc4 += weight[w4 + k] * v;
                    acc5 += weight[w5 + k] * v;
                    acc6 += weight[w6 + k] * v;
                    acc7 += weight[w7 + k] * v;
                    k += taps;
                }
            }
        }
        let plane_out = p.ho * p.wo;
        let out_row = oy * p.wo;
        for (var r = 0u; r < OCB; r++) {
            let m = m0 + r;
            if (m >= per_out) {
                break;
            }
            let oc = g * per_out + m;
            var acc = acc0;
            if (r == 1u) { acc = acc1; }
            if (r == 2u) { acc = acc2; }
            if (r == 3u) { acc = acc3; }
            if (r == 4u) { acc = acc4; }
            if (r == 5u) { acc = acc5; }
            if (r == 6u) { acc = acc6; }
            if (r == 7u) { acc = acc7; }
            var bias_v = 0.0;
            if (p.has_bias != 0u) {
                bias_v = bias[oc];
            }
            let base = (b * p.o + oc) * plane_out + out_row;
            for (var q = 0u; q < PX; q++) {
                if (ox0 + q < p.wo) {
                    y[base + ox0 + q] = activate(p.act, p.alpha, acc[q] + bias_v);
                }
            }
        }
    }
}
