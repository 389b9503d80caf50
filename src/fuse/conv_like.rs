//! Conv2d and Linear seen as one thing: a Linear is a 1x1 conv on a 1x1 map
//! (paradigm 9), so every rule that folds, composes or merges convs serves both.

use crate::graph::{Conv2d, Linear, Op};

/// Which op a [`ConvLike`] came from, so `to_op` rebuilds the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `Conv2d`.
    Conv,
    /// A `Linear`, seen as a 1x1 conv with one group.
    Linear,
}

/// The fields of a `Conv2d` or `Linear`, as one conv shape the rules work on.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLike {
    /// The op it came from.
    pub kind: Kind,
    /// Kernel tensor name, `[O, I/groups, kh, kw]` or `[O, I]`.
    pub weight: String,
    /// Bias tensor name `[O]`, if any.
    pub bias: Option<String>,
    /// Input channels (features for a Linear).
    pub in_channels: usize,
    /// Output channels (features for a Linear).
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`; `[1, 1]` for a Linear.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Group count; 1 for a Linear.
    pub groups: usize,
}

impl ConvLike {
    /// The conv view of a `Conv2d` or `Linear` op; `None` for any other op.
    pub fn from_op(op: &Op) -> Option<ConvLike> {
        match op {
            Op::Conv2d(c) => Some(ConvLike {
                kind: Kind::Conv,
                weight: c.weight.clone(),
                bias: c.bias.clone(),
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                pads: c.pads,
                dilation: c.dilation,
                groups: c.groups,
            }),
            Op::Linear(l) => Some(ConvLike {
                kind: Kind::Linear,
                weight: l.weight.clone(),
                bias: l.bias.clone(),
                in_channels: l.in_features,
                out_channels: l.out_features,
                kernel: [1, 1],
                stride: [1, 1],
                pads: [0; 4],
                dilation: [1, 1],
                groups: 1,
            }),
            _ => None,
        }
    }

    /// Back to an op of the same kind. A Linear can only hold a dense 1x1 result;
    /// rules make sure of that before they build one.
    pub fn to_op(&self) -> Op {
        match self.kind {
            Kind::Conv => Op::Conv2d(Conv2d {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                kernel: self.kernel,
                stride: self.stride,
                pads: self.pads,
                dilation: self.dilation,
                groups: self.groups,
            }),
            Kind::Linear => {
                debug_assert!(self.groups == 1 && self.kernel == [1, 1]);
                Op::Linear(Linear { weight: self.weight.clone(), bias: self.bias.clone(), in_features: self.in_channels, out_features: self.out_channels })
            }
        }
    }

    /// Weight tensor shape for this geometry.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind {
            Kind::Conv => vec![self.out_channels, self.in_channels / self.groups, self.kernel[0], self.kernel[1]],
            Kind::Linear => vec![self.out_channels, self.in_channels],
        }
    }

    /// A 1x1 kernel (every Linear is one).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
    }

    /// Any side padded by more than zero.
    pub fn has_padding(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }

    /// Input-channel range read by each output channel, for the group computation.
    pub fn input_ranges(&self, out_offset: usize) -> Vec<(usize, usize, usize)> {
        let per_out = self.out_channels / self.groups;
        let per_in = self.in_channels / self.groups;
        (0..self.out_channels)
            .map(|o| {
                let g = o / per_out;
                (out_offset + o, g * per_in, (g + 1) * per_in)
            })
            .collect()
    }
}
