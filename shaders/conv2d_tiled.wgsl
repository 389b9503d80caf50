// conv2d forward as an implicit GEMM, tiled for data reuse: per group, output
// channels (M) x output pixels over the batch (N) x reduction over input channels
// and taps (K). A workgroup computes a 64x64 tile; each of its 16x16 invocations
// keeps a 4x4 block of accumulators in registers; A (weights, contiguous in K) and B
// (the im2col gather of the input) are staged through workgroup memory 8 K-steps at
// a time. Same Params as conv2d.wgsl; dispatch (ceil(N/64), ceil(M/64), groups).

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 8u;

var<workgroup> tile_a: array<f32, 512>;
var<workgroup> tile_b: array<f32, 512>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = wg.z;
    let per_in = p.c / p.groups;
    let per_out = p.o / p.groups;
    let taps = p.kh * p.kw;
    let k_len = per_in * taps;
    let plane = p.ho * p.wo;
    let n_len = p.n * plane;
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < k_len; k0 += TK) {
        for (var r = 0u; r < 2u; r++) {
            let idx = li + r * 256u;
            let kk = idx / TM;
            let mm = idx % TM;
            let m = m0 + mm;
            let k = k0 + kk;
            var v = 0.0;
            if (m < per_out && k < k_len) {
                v = weight[(g * per_out + m) * k_len + k];
            }
            tile_a[kk * TM + mm] = v;
        }
        for (var r = 0u; r < 2u; r++) {
            let idx = li + r * 256u;
            let kk = idx / TN;
            let nn = idx % TN;
            let n = n0 + nn;
            let k = k0 + kk;
            var v = 0.0;
            if (n < n_len && k < k_len) {
                let ci = k / taps;
                let t = k % taps;
                let ox = n % p.wo;
                let oy = (n / p.wo) % p.ho;
                let b = n / plane;
                let iy = i32(oy * p.sh + (t / p.kw) * p.dh) - i32(p.pt);
                let ix = i32(ox * p.sw + (t % p.kw) * p.dw) - i32(p.pl);
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    v = x[((b * p.c + g * per_in + ci) * p.h + u32(iy)) * p.w + u32(ix)];
                }
            }
            tile_b[kk * TN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = vec4<f32>(tile_a[kk * TM + lid.y * 4u], tile_a[kk * TM + lid.y * 4u + 1u], tile_a[kk * TM + lid.y * 4u + 2u], tile_a[kk * TM + lid.y * 4u + 3u]);
            let bv = vec4<f32>(tile_b[kk * TN + lid.x * 4u], tile_b[kk * TN + lid.x * 4u + 1u], tile_b[kk * TN + lid.x * 4u + 2u], tile_b[kk * TN + lid.x * 4u + 3u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i * 4u + 0u] += a[i] * bv.x;
                acc[i * 4u + 1u] += a[i] * bv.y;
                acc[i * 4u + 2u] += a[i] * bv.z;
                acc[i * 4u + 3u] += a[i] * bv.w;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y * 4u + i;
        if (m >= per_out) {
            continue;
        }
        let oc = g * per_out + m;
        var b0 = 0.0;
        if (p.has_bias != 0u) {
            b0 = bias[oc];
        }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x * 4u + j;
            if (n < n_len) {
                let b = n / plane;
                y[(b * p.o + oc) * plane + n % plane] = activate(p.act, p.alpha, acc[i * 4u + j] + b0);
            }
        }
    }
}
