// The arena of one window, element by element: prepended to the plan kernels that
// index it as f32 (fold_bn, fill, compose; place views it as vec4s).

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
