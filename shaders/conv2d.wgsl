// conv2d forward for verification: NCHW, OIHW kernel, stride, per-side padding,
// dilation, groups, optional bias and a fused activation. One output element per
// invocation (grid-stride), f32 accumulation.

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.n * p.o * p.ho * p.wo;
    let per_in = p.c / p.groups;
    let per_out = p.o / p.groups;
    let stride = nwg.x * WG;
    for (var i = gid.x + gid.y * stride; i < total; i += stride * nwg.y) {
        let ox = i % p.wo;
        let oy = (i / p.wo) % p.ho;
        let oc = (i / (p.wo * p.ho)) % p.o;
        let b = i / (p.wo * p.ho * p.o);
        let cbase = (oc / per_out) * per_in;
        var acc = 0.0;
        if (p.has_bias != 0u) {
            acc = bias[oc];
        }
        for (var j = 0u; j < per_in; j++) {
            let xbase = (b * p.c + cbase + j) * p.h * p.w;
            let wbase = (oc * per_in + j) * p.kh * p.kw;
            for (var a = 0u; a < p.kh; a++) {
                let iy = i32(oy * p.sh + a * p.dh) - i32(p.pt);
                if (iy < 0 || iy >= i32(p.h)) {
                    continue;
                }
                for (var t = 0u; t < p.kw; t++) {
                    let ix = i32(ox * p.sw + t * p.dw) - i32(p.pl);
                    if (ix < 0 || ix >= i32(p.w)) {
                        continue;
                    }
                    acc += weight[wbase + a * p.kw + t] * x[xbase + u32(iy) * p.w + u32(ix)];
                }
            }
        }
        y[i] = activate(p.act, p.alpha, acc);
    }
}
