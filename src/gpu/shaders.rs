//! Every WGSL kernel, one file each under `shaders/`, loaded here and nowhere else.
//! Shaders that apply an activation get `activation.wgsl` prepended (WGSL has no
//! includes); nothing is templated.

pub const FOLD_BN: &str = include_str!("../../shaders/fold_bn.wgsl");
pub const FILL: &str = include_str!("../../shaders/fill.wgsl");
pub const PLACE: &str = include_str!("../../shaders/place.wgsl");
pub const COMPOSE: &str = include_str!("../../shaders/compose.wgsl");
pub const CONV2D: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv2d.wgsl"));
pub const CONV2D_TILED: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv2d_tiled.wgsl"));
pub const ELEMENTWISE: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/elementwise.wgsl"));
pub const POOL: &str = include_str!("../../shaders/pool.wgsl");
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
