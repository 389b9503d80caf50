//! Every record the host writes for a kernel to read: the job records of the plan
//! kernels (`fold_bn`, `fill`, `place`, `compose`) and the uniform `Params` of the
//! forward kernels (`src/gpu/forward.rs`). Each is a `#[repr(C)]` Pod struct declared
//! with `gpu_record!`, mirroring a WGSL struct field for field, uploaded as it is.
//! `tests/shaders.rs` checks every field's name and offset against naga's layout of
//! the WGSL, so the two sides cannot drift apart.

/// Offset (in u32 elements of the arena) meaning "absent" (no bias, no BN).
pub const NONE: u32 = u32::MAX;

/// A record a kernel reads: the WGSL struct it mirrors and its fields with their
/// byte offsets.
pub trait GpuRecord: bytemuck::Pod {
    /// The WGSL struct it mirrors.
    const WGSL_NAME: &'static str;
    /// (field name, byte offset), in declaration order.
    fn fields() -> Vec<(&'static str, usize)>;
}

/// Declares a record struct (u32 / f32 fields only, so it has no hidden padding) and
/// its field table; `Name as WgslName` where the WGSL struct is named otherwise.
macro_rules! gpu_record {
    ($(#[$doc:meta])* $name:ident $(as $wgsl:ident)? { $( $(#[$fdoc:meta])* $field:ident : $ty:ty, )* }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $( $(#[$fdoc])* pub $field: $ty, )* }

        impl $crate::gpu::records::GpuRecord for $name {
            const WGSL_NAME: &'static str = gpu_record!(@name $name $($wgsl)?);
            fn fields() -> Vec<(&'static str, usize)> {
                vec![$( (stringify!($field), std::mem::offset_of!($name, $field)), )*]
            }
        }
    };
    (@name $name:ident) => { stringify!($name) };
    (@name $name:ident $wgsl:ident) => { stringify!($wgsl) };
}
pub(crate) use gpu_record;

gpu_record! {
    /// `fold_bn.wgsl`: `kernel * s`, `(bias - mean) * s + beta` into `out_*`.
    FoldBnJob {
        /// Kernel offset.
        kernel: u32,
        /// Bias offset or NONE.
        bias: u32,
        /// BN scale offset.
        gamma: u32,
        /// BN shift offset.
        beta: u32,
        /// BN running mean offset.
        mean: u32,
        /// BN running variance offset.
        variance: u32,
        /// Folded kernel offset.
        out_kernel: u32,
        /// Folded bias offset.
        out_bias: u32,
        /// Output channels.
        out_channels: u32,
        /// Elements per output channel of the kernel.
        row: u32,
        /// BN epsilon.
        eps: f32,
    }
}

gpu_record! {
    /// `fill.wgsl`: a kernel made from its shape (mode 0 dirac, 1 avg-pool, 2 BN as
    /// a depthwise 1x1 with bias).
    FillJob {
        /// 0 dirac, 1 avg-pool, 2 batch norm.
        mode: u32,
        /// Channels.
        channels: u32,
        /// Input channels per group.
        per: u32,
        /// Kernel height.
        kh: u32,
        /// Kernel width.
        kw: u32,
        /// Kernel offset.
        out_kernel: u32,
        /// Bias offset or NONE.
        out_bias: u32,
        /// BN scale offset (mode 2).
        gamma: u32,
        /// BN shift offset (mode 2).
        beta: u32,
        /// BN running mean offset (mode 2).
        mean: u32,
        /// BN running variance offset (mode 2).
        variance: u32,
        /// BN epsilon (mode 2).
        eps: f32,
    }
}

gpu_record! {
    /// `place.wgsl`: one destination kernel, the sum of `sources` placed sources.
    PlaceJob {
        /// Destination kernel offset.
        out_kernel: u32,
        /// Destination bias offset or NONE.
        out_bias: u32,
        /// Output channels.
        out_channels: u32,
        /// Input channels per group.
        per: u32,
        /// Kernel height.
        kh: u32,
        /// Kernel width.
        kw: u32,
        /// Group count.
        groups: u32,
        /// Input channels.
        in_channels: u32,
        /// Index of its first source record.
        first_source: u32,
        /// Number of source records.
        sources: u32,
        /// Bit s: source s (of the first 32) has this kernel's window with contiguous
        /// channels, so the register sum may take it.
        summable: u32,
        /// Bit s: source s (of the first 32) is a 1x1 kernel with contiguous channels
        /// whose tap lies inside this kernel's window where `sum_groups` can add it
        /// (see `centre_mask`).
        centre: u32,
    }
}

gpu_record! {
    /// `place.wgsl`: one source of a placed sum.
    PlaceSourceJob {
        /// Source kernel offset.
        kernel: u32,
        /// Source bias offset or NONE.
        bias: u32,
        /// Source output channels.
        out_channels: u32,
        /// Source groups.
        groups: u32,
        /// Source kernel height.
        kh: u32,
        /// Source kernel width.
        kw: u32,
        /// Spatial offset of its taps in the destination (rows).
        offset_h: u32,
        /// Spatial offset of its taps in the destination (columns).
        offset_w: u32,
        /// Tap step in the destination (rows; dilation ratio).
        step_h: u32,
        /// Tap step in the destination (columns).
        step_w: u32,
        /// First destination output channel.
        out_offset: u32,
        /// Destination output channel step.
        out_stride: u32,
        /// First destination input channel.
        in_offset: u32,
        /// Destination input channel step.
        in_stride: u32,
        /// Scale of the whole source.
        scale: f32,
        /// Source input channels per group.
        in_per_group: u32,
        /// BN scale offset, or NONE without a BN folded on the fly.
        gamma: u32,
        /// BN shift offset.
        beta: u32,
        /// BN running mean offset.
        mean: u32,
        /// BN running variance offset.
        variance: u32,
        /// BN epsilon.
        eps: f32,
        /// Padding to 24 words: `place.wgsl` loads a record as six vec4s.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

gpu_record! {
    /// `compose.wgsl`: `second(first(x))` as one kernel.
    ComposeJob {
        /// First kernel offset.
        first_kernel: u32,
        /// First bias offset or NONE.
        first_bias: u32,
        /// First conv's groups.
        first_groups: u32,
        /// Middle channels (first conv's outputs).
        mid: u32,
        /// First kernel's input channels per group.
        first_per: u32,
        /// First kernel height.
        first_kh: u32,
        /// First kernel width.
        first_kw: u32,
        /// Second kernel offset.
        second_kernel: u32,
        /// Second bias offset or NONE.
        second_bias: u32,
        /// Second conv's groups.
        second_groups: u32,
        /// Output channels.
        out_channels: u32,
        /// Second kernel's input channels per group.
        second_per: u32,
        /// Second kernel height.
        second_kh: u32,
        /// Second kernel width.
        second_kw: u32,
        /// Input channels.
        in_channels: u32,
        /// Groups of the composed kernel.
        groups: u32,
        /// Composed kernel offset.
        out_kernel: u32,
        /// Composed bias offset or NONE.
        out_bias: u32,
        /// 4 when the kernel is composed in 4x4 tiles of (output, input) channels
        /// (every tile within one group of each conv, see `compose_tile`), else 1.
        tile: u32,
        /// 1 when the first kernel is a diagonal (see `compose_is_diagonal`): the
        /// composed kernel is the second with each input channel scaled, four
        /// elements per invocation.
        diagonal: u32,
    }
}
