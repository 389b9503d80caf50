// Average pooling (and global average pooling as a full-size window) for
// verification, with PyTorch's count_include_pad semantics: the divisor counts the
// window clipped to the padded extent, or only the valid taps.

struct Params {
    planes: u32, h: u32, w: u32, ho: u32,
    wo: u32, kh: u32, kw: u32, sh: u32,
    sw: u32, pt: u32, pl: u32, pb: u32,
    pr: u32, count_include_pad: u32, _pad0: u32, _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.planes * p.ho * p.wo;
    let stride = nwg.x * WG;
    for (var i = gid.x + gid.y * stride; i < total; i += stride * nwg.y) {
        let ox = i % p.wo;
        let oy = (i / p.wo) % p.ho;
        let plane = i / (p.wo * p.ho);
        let y0 = i32(oy * p.sh) - i32(p.pt);
        let x0 = i32(ox * p.sw) - i32(p.pl);
        let y1 = min(y0 + i32(p.kh), i32(p.h + p.pb));
        let x1 = min(x0 + i32(p.kw), i32(p.w + p.pr));
        let ys = max(y0, 0);
        let ye = min(y1, i32(p.h));
        let xs = max(x0, 0);
        let xe = min(x1, i32(p.w));
        var acc = 0.0;
        for (var iy = ys; iy < ye; iy++) {
            for (var ix = xs; ix < xe; ix++) {
                acc += x[plane * p.h * p.w + u32(iy) * p.w + u32(ix)];
            }
        }
        var div = f32((y1 - y0) * (x1 - x0));
        if (p.count_include_pad == 0u) {
            div = f32(max(ye - ys, 0) * max(xe - xs, 0));
        }
        y[i] = select(0.0, acc / div, div > 0.0);
    }
}
