//! Every WGSL kernel, one file each under `shaders/`, loaded here and nowhere else.
//! Shaders that apply an activation get `activation.wgsl` prepended (WGSL has no
//! includes); nothing is templated.

/// Folds a batch norm into conv kernels and biases.
pub const FOLD_BN: &str = include_str!("../../shaders/fold_bn.wgsl");
/// Builds fixed kernels: Dirac (identity), avg-pool and BN-as-conv.
pub const FILL: &str = include_str!("../../shaders/fill.wgsl");
/// Accumulates source kernels into a larger zero kernel (branch merges).
pub const PLACE: &str = include_str!("../../shaders/place.wgsl");
/// Composes two convs into one kernel (1x1/KxK sequences).
pub const COMPOSE: &str = include_str!("../../shaders/compose.wgsl");
/// Direct conv forward with a fused activation.
pub const CONV2D: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv2d.wgsl"));
/// Workgroup-tiled conv forward with a fused activation, for larger layers.
pub const CONV2D_TILED: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv2d_tiled.wgsl"));
/// Batch norm, activation and add in the forward pass.
pub const ELEMENTWISE: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/elementwise.wgsl"));
/// Average pooling in the forward pass.
pub const POOL: &str = include_str!("../../shaders/pool.wgsl");
/// Fully connected layer in the forward pass.
pub const LINEAR: &str = include_str!("../../shaders/linear.wgsl");

/// (name, source) of every kernel, for validation and the pipeline cache.
pub const ALL: &[(&str, &str)] = &[
    ("fold_bn", FOLD_BN),
    ("fill", FILL),
    ("place", PLACE),
    ("compose", COMPOSE),
    ("conv2d", CONV2D),
    ("conv2d_tiled", CONV2D_TILED),
    ("elementwise", ELEMENTWISE),
    ("pool", POOL),
    ("linear", LINEAR),
];

/// Parses and validates one WGSL source with naga (no GPU needed).
pub fn validate(name: &str, source: &str) -> crate::Result<naga::Module> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| crate::Error::Shader { name: name.into(), why: e.emit_to_string(source) })?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| crate::Error::Shader { name: name.into(), why: e.emit_to_string(source) })?;
    Ok(module)
}
