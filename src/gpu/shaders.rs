//! Every WGSL kernel, one file each under `shaders/`, loaded here and nowhere else.
//! WGSL has no includes, so shared code is prepended: the plan kernels get
//! `jobs_common.wgsl` (arena binding, NONE, workgroup size), the conv kernels
//! `conv_common.wgsl` (their one Params and bindings), shaders that apply an
//! activation get `activation.wgsl`; nothing is templated.

/// Folds a batch norm into conv kernels and biases.
pub const FOLD_BN: &str = concat!(include_str!("../../shaders/jobs_common.wgsl"), include_str!("../../shaders/fold_bn.wgsl"));
/// Builds fixed kernels: Dirac (identity), avg-pool and BN-as-conv.
pub const FILL: &str = concat!(include_str!("../../shaders/jobs_common.wgsl"), include_str!("../../shaders/fill.wgsl"));
/// Accumulates source kernels into a larger zero kernel (branch merges).
pub const PLACE: &str = concat!(include_str!("../../shaders/jobs_common.wgsl"), include_str!("../../shaders/place.wgsl"));
/// Composes two convs into one kernel (1x1/KxK sequences).
pub const COMPOSE: &str = concat!(include_str!("../../shaders/jobs_common.wgsl"), include_str!("../../shaders/compose.wgsl"));
/// Direct conv forward with a fused activation.
pub const CONV2D: &str =
    concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv_common.wgsl"), include_str!("../../shaders/conv2d.wgsl"));
/// Workgroup-tiled conv forward with a fused activation, for larger layers.
pub const CONV2D_TILED: &str =
    concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv_common.wgsl"), include_str!("../../shaders/conv2d_tiled.wgsl"));
/// Register-blocked conv forward without workgroup memory, for CPU adapters.
pub const CONV2D_BLOCKED: &str =
    concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/conv_common.wgsl"), include_str!("../../shaders/conv2d_blocked.wgsl"));
/// Batch norm, activation and add in the forward pass.
pub const ELEMENTWISE: &str = concat!(include_str!("../../shaders/activation.wgsl"), include_str!("../../shaders/elementwise.wgsl"));
/// Average pooling in the forward pass.
pub const POOL: &str = include_str!("../../shaders/pool.wgsl");
/// Fully connected layer in the forward pass.
pub const LINEAR: &str = include_str!("../../shaders/linear.wgsl");
/// A plain copy: the compute roofline `repfuse bench` measures kernels against.
pub const COPY: &str = include_str!("../../shaders/copy.wgsl");

/// Every kernel, by name in code: the pipeline cache, the binding layouts and the
/// dispatches all take one of these, so a kernel cannot be misspelt or forgotten (a
/// new one fails to compile until its source and layout are given).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelId {
    /// `fold_bn.wgsl`.
    FoldBn,
    /// `fill.wgsl`.
    Fill,
    /// `place.wgsl`.
    Place,
    /// `compose.wgsl`.
    Compose,
    /// `conv2d.wgsl`.
    Conv2d,
    /// `conv2d_tiled.wgsl`.
    Conv2dTiled,
    /// `conv2d_blocked.wgsl`.
    Conv2dBlocked,
    /// `elementwise.wgsl`.
    Elementwise,
    /// `pool.wgsl`.
    Pool,
    /// `linear.wgsl`.
    Linear,
    /// `copy.wgsl`.
    Copy,
}

impl KernelId {
    /// Every kernel.
    pub const ALL: [KernelId; 11] = [
        KernelId::FoldBn,
        KernelId::Fill,
        KernelId::Place,
        KernelId::Compose,
        KernelId::Conv2d,
        KernelId::Conv2dTiled,
        KernelId::Conv2dBlocked,
        KernelId::Elementwise,
        KernelId::Pool,
        KernelId::Linear,
        KernelId::Copy,
    ];

    /// Its name (labels, errors), the file name without `.wgsl`.
    pub fn name(self) -> &'static str {
        match self {
            KernelId::FoldBn => "fold_bn",
            KernelId::Fill => "fill",
            KernelId::Place => "place",
            KernelId::Compose => "compose",
            KernelId::Conv2d => "conv2d",
            KernelId::Conv2dTiled => "conv2d_tiled",
            KernelId::Conv2dBlocked => "conv2d_blocked",
            KernelId::Elementwise => "elementwise",
            KernelId::Pool => "pool",
            KernelId::Linear => "linear",
            KernelId::Copy => "copy",
        }
    }

    /// Its WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            KernelId::FoldBn => FOLD_BN,
            KernelId::Fill => FILL,
            KernelId::Place => PLACE,
            KernelId::Compose => COMPOSE,
            KernelId::Conv2d => CONV2D,
            KernelId::Conv2dTiled => CONV2D_TILED,
            KernelId::Conv2dBlocked => CONV2D_BLOCKED,
            KernelId::Elementwise => ELEMENTWISE,
            KernelId::Pool => POOL,
            KernelId::Linear => LINEAR,
            KernelId::Copy => COPY,
        }
    }

    /// Values of the kernel's pipeline-overridable constants, given the context's
    /// `place` work shape (the pipeline cache builds each kernel with them).
    pub fn overrides(self, place: PlaceShape) -> Vec<(&'static str, f64)> {
        match self {
            KernelId::Place => vec![("RUN", place.run as f64), ("LANES", place.lanes as f64)],
            _ => vec![],
        }
    }
}

/// How `place` cuts its work (`RUN` and `LANES` in place.wgsl), per kind of adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceShape {
    /// Elements a slice aims at: long enough to amortise the per-source set-up (BN
    /// scale, channel mapping), which on a CPU adapter is scalar work (lavapipe,
    /// RepVGG-A0's place: 128 -> 1024 took it from 53 to 24-35 ms; with the register
    /// sum's vec4 stores, 256 / 512 / 1024 / 4096 gave 28-31 / 22 / 13-14 / 10-11 ms,
    /// the 4096 taking a 3x3 row of up to 452 channels whole: 4096 there). 1024 on a
    /// GPU, unmeasured (no GPU was lent). Crate-private,
    /// like `lanes`: only `for_adapter` and `checked` make a shape, so the dispatch
    /// never divides by 0 and a team never strides by 0 or races.
    pub(crate) run: usize,
    /// Consecutive invocations sharing a slice. 32 on a GPU, so a warp's loads
    /// coalesce (not yet measured on one: no GPU was lent). 1 on a CPU adapter:
    /// teams of 8 lanes made lavapipe's place 1.5-2x slower (RepVGG-A0 24 -> 48 ms,
    /// MobileOne-S0 19 -> 27 ms), every lane repeating the per-source set-up while
    /// neighbouring slices gained nothing from sharing cache lines.
    pub(crate) lanes: usize,
}

impl PlaceShape {
    /// The shape for a CPU adapter (`software`) or a GPU.
    pub fn for_adapter(software: bool) -> Self {
        PlaceShape { run: if software { 4096 } else { 1024 }, lanes: if software { 1 } else { 32 } }
    }

    /// `run` at least 1 and `lanes` a power of two dividing the workgroup (256), so
    /// the dispatch's divisions and the shader's team split are well defined.
    pub fn checked(run: usize, lanes: usize) -> crate::Result<Self> {
        if run == 0 || !lanes.is_power_of_two() || lanes > 256 {
            return Err(crate::Error::Gpu(format!("place shape: run {} must be at least 1 and lanes {} a power of two up to 256", run, lanes)));
        }
        Ok(PlaceShape { run, lanes })
    }
}

/// (name, source) of every kernel, for validation and the pipeline cache.
pub const ALL: &[(&str, &str)] = &[
    ("fold_bn", FOLD_BN),
    ("fill", FILL),
    ("place", PLACE),
    ("compose", COMPOSE),
    ("conv2d", CONV2D),
    ("conv2d_tiled", CONV2D_TILED),
    ("conv2d_blocked", CONV2D_BLOCKED),
    ("elementwise", ELEMENTWISE),
    ("pool", POOL),
    ("linear", LINEAR),
    ("copy", COPY),
];

/// Parses and validates one WGSL source with naga (no GPU needed).
pub fn validate(name: &str, source: &str) -> crate::Result<naga::Module> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| crate::Error::Shader { name: name.into(), why: e.emit_to_string(source) })?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| crate::Error::Shader { name: name.into(), why: e.emit_to_string(source) })?;
    Ok(module)
}
