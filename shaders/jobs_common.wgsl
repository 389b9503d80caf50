// Shared by the plan kernels (fold_bn, fill, place, compose), prepended to each
// (WGSL has no includes): the arena every tensor of a window lives in, the "absent"
// offset, and the workgroup size (place also reads the arena as vec4s, at binding
// 3). Each kernel then declares its job struct (mirrored field for field by
// `src/gpu/records.rs`) and `jobs: array<ThatJob>` at binding 1; one dispatch runs
// every job of one plan level, job j at workgroup row y = j.

const NONE: u32 = 0xffffffffu;
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
