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

/// A `Conv2d` or a `Linear`, as the one conv the rules work on: a Linear is the
/// dense 1x1 conv with its weight and bias. Reads (and writes) the conv's fields
/// through `Deref`, so the geometry is described once, by `Conv2d`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLike {
    /// The op it came from.
    pub kind: Kind,
    /// Its conv: the op itself, or the Linear as a 1x1 conv.
    pub conv: Conv2d,
}

impl std::ops::Deref for ConvLike {
    type Target = Conv2d;
    fn deref(&self) -> &Conv2d {
        &self.conv
    }
}

impl std::ops::DerefMut for ConvLike {
    fn deref_mut(&mut self) -> &mut Conv2d {
        &mut self.conv
    }
}

impl ConvLike {
    /// The conv view of a `Conv2d` or `Linear` op; `None` for any other op.
    pub fn from_op(op: &Op) -> Option<ConvLike> {
        match op {
            Op::Conv2d(c) => Some(ConvLike { kind: Kind::Conv, conv: c.clone() }),
            Op::Linear(l) => Some(ConvLike {
                kind: Kind::Linear,
                conv: Conv2d {
                    weight: l.weight.clone(),
                    bias: l.bias.clone(),
                    in_channels: l.in_features,
                    out_channels: l.out_features,
                    kernel: [1, 1],
                    stride: [1, 1],
                    pads: [0; 4],
                    dilation: [1, 1],
                    groups: 1,
                },
            }),
            _ => None,
        }
    }

    /// The same kind of op with `f` applied to its conv.
    pub fn with(&self, f: impl FnOnce(&mut Conv2d)) -> ConvLike {
        let mut c = self.clone();
        f(&mut c.conv);
        c
    }

    /// Back to an op of the same kind. A Linear can only hold a dense 1x1 result;
    /// rules make sure of that before they build one.
    pub fn to_op(&self) -> Op {
        self.clone().into_op()
    }

    /// [`Self::to_op`], consuming the view (no copy of the names).
    pub fn into_op(self) -> Op {
        match self.kind {
            Kind::Conv => Op::Conv2d(self.conv),
            Kind::Linear => {
                debug_assert!(self.groups == 1 && self.kernel == [1, 1]);
                let c = self.conv;
                Op::Linear(Linear { weight: c.weight, bias: c.bias, in_features: c.in_channels, out_features: c.out_channels })
            }
        }
    }

    /// Weight tensor shape of the op (`[O, I]` for a Linear).
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind {
            Kind::Conv => self.conv.weight_shape(),
            Kind::Linear => vec![self.out_channels, self.in_channels],
        }
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
