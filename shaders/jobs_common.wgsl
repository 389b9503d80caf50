// Shared by the plan kernels (fold_bn, fill, place, compose), prepended to each
// (WGSL has no includes): the "absent" offset and the workgroup size. Each kernel
// then sees the arena every tensor of a window lives in at binding 0 (`arena.wgsl`;
// place also reads it as vec4s), declares its job struct (mirrored field for field
// by `src/gpu/records.rs`) and `jobs: array<ThatJob>` at binding 1; one dispatch runs
// every job of one plan level, job j at workgroup row y = j.

const NONE: u32 = 0xffffffffu;
const WG: u32 = 256u;
