// copy: dst = src, vec4 loads and stores, grid-stride, consecutive invocations on
// consecutive memory. It does no arithmetic: `repfuse bench` times it next to a
// buffer-to-buffer copy as the roofline a compute kernel can reach on the adapter
// (on lavapipe a buffer copy is a host memcpy, while a shader runs through the JIT's
// SIMD lanes with bounds-checked indexing, several times slower).

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = id.x; i < arrayLength(&src); i += stride) {
        dst[i] = src[i];
    }
}
