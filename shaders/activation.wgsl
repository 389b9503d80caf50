// Shared activation function, prepended to the shaders that apply one (conv2d with a
// fused activation, and the standalone activation op). Kinds match
// `gpu::forward::act_code`: 0 none, 1 relu, 2 leaky relu, 3 sigmoid, 4 tanh,
// 5 gelu (erf), 6 silu, 7 hardswish, 8 hardsigmoid.

// erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7, below f32 resolution of GELU's
// output scale); WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}

fn activate(kind: u32, alpha: f32, x: f32) -> f32 {
    switch kind {
        case 1u: { return max(x, 0.0); }
        case 2u: { return select(x * alpha, x, x >= 0.0); }
        case 3u: { return 1.0 / (1.0 + exp(-x)); }
        case 4u: { return tanh(x); }
        case 5u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); }
        case 6u: { return x / (1.0 + exp(-x)); }
        case 7u: { return x * clamp(x + 3.0, 0.0, 6.0) / 6.0; }
        case 8u: { return clamp((x + 3.0) / 6.0, 0.0, 1.0); }
        default: { return x; }
    }
}
