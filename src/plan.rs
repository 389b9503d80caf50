//! FusionPlan: the weight arithmetic of a fusion as a list of kernel primitives over
//! named tensors. The rewrite engine emits it; the CPU reference (`cpu::plan_exec`)
//! and the GPU engine execute the same list, so fusion logic exists once.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::weights::Weights;

use serde::{Deserialize, Serialize};

/// Names of the four batch-norm parameter tensors and its epsilon.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BnParams {
    /// Scale tensor `[C]`.
    pub gamma: String,
    /// Shift tensor `[C]`.
    pub beta: String,
    /// Running mean `[C]`.
    pub mean: String,
    /// Running variance `[C]`; must be non-negative.
    pub var: String,
    /// Added to `var` before the square root.
    pub eps: f32,
}

/// One conv-like operand of `Compose`: kernel `[O, I/groups, kh, kw]` (or `[O, I]` for
/// a Linear, read as 1x1) and optional bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvOperand {
    /// Kernel tensor name, `[O, I/groups, kh, kw]` or `[O, I]`.
    pub kernel: String,
    /// Bias tensor name `[O]`, if any.
    pub bias: Option<String>,
    /// Group count of the operand (1 for a Linear).
    pub groups: usize,
}

/// One kernel accumulated by `Place`: written at spatial `offset`, with its taps
/// `step` apart (a dilated small kernel inside a denser one), at output channel
/// `out_offset`, expanded from `groups` to the destination's group count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceSource {
    /// Source kernel tensor name, `[O, I/groups, kh, kw]` or `[O, I]`.
    pub kernel: String,
    /// Source bias `[O]`, summed into the destination bias.
    pub bias: Option<String>,
    /// Group count of the source kernel.
    pub groups: usize,
    /// Top-left tap position `[y, x]` in the destination kernel.
    pub offset: [usize; 2],
    /// Distance `[y, x]` between consecutive taps in the destination (the dilation ratio).
    pub step: [usize; 2],
    /// First destination output channel.
    pub out_offset: usize,
    /// Strided/scaled channel placement (interleaving for widened shortcuts).
    #[serde(default)]
    pub map: ChannelMap,
    /// A batch norm folded on the fly (`FoldBn` merged into this step by
    /// `FusionPlan::fold_bn_into_place`), so the folded kernel is never materialised.
    #[serde(default)]
    pub bn: Option<BnParams>,
}

/// Where a source's channels land in the destination beyond `out_offset`: output `o`
/// goes to `out_offset + o * out_stride`, input channel `c` reads destination input
/// `in_offset + c * in_stride`, and every value is multiplied by `scale`. The
/// identity map is what branch merges use; widened shortcuts (paradigm 6b) interleave
/// and negate identity kernels with it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelMap {
    /// Destination output channels between consecutive source outputs.
    pub out_stride: usize,
    /// First destination input channel.
    pub in_offset: usize,
    /// Destination input channels between consecutive source inputs.
    pub in_stride: usize,
    /// Factor applied to every placed value (and bias), e.g. -1 to negate.
    pub scale: f32,
}

impl ChannelMap {
    /// Channels land one-to-one, unscaled.
    pub const IDENTITY: ChannelMap = ChannelMap { out_stride: 1, in_offset: 0, in_stride: 1, scale: 1.0 };
}

impl Default for ChannelMap {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl PlaceSource {
    /// A kernel placed at the origin with the identity channel map.
    pub fn new(kernel: String, bias: Option<String>, groups: usize) -> Self {
        PlaceSource { kernel, bias, groups, offset: [0, 0], step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None }
    }
}

/// One kernel primitive of a [`FusionPlan`]; `out_*` names the tensors it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Paradigms 1/8: `k' = k * s[o]`, `b' = (b - mean) * s + beta`, `s = gamma/sqrt(var+eps)`.
    FoldBn {
        /// Conv kernel `[O, I/groups, kh, kw]` or Linear weight `[O, I]`.
        kernel: String,
        /// Conv bias `[O]`; absent reads as zero.
        bias: Option<String>,
        /// The batch norm that follows the conv.
        bn: BnParams,
        /// Folded kernel, same shape as `kernel`.
        out_kernel: String,
        /// Folded bias `[O]`, always produced.
        out_bias: String,
    },
    /// A lone BN as a depthwise 1x1 conv `[C, 1, 1, 1]` with bias.
    BnToConv {
        /// The batch norm to express as a conv.
        bn: BnParams,
        /// Channel count C.
        channels: usize,
        /// Kernel `[C, 1, 1, 1]` produced.
        out_kernel: String,
        /// Bias `[C]` produced.
        out_bias: String,
    },
    /// Paradigm 6a: identity as a kernel `[C, C/groups, kh, kw]`, 1 at the centre tap.
    Dirac {
        /// Channel count C (input = output).
        channels: usize,
        /// Group count of the kernel.
        groups: usize,
        /// Kernel size `[kh, kw]`; odd, so a centre tap exists.
        kernel: [usize; 2],
        /// Identity kernel `[C, C/groups, kh, kw]` produced.
        out_kernel: String,
    },
    /// Paradigm 7: average pooling as a depthwise kernel `[C, 1, kh, kw]` of 1/(kh*kw).
    AvgPoolKernel {
        /// Channel count C.
        channels: usize,
        /// Pool window `[kh, kw]`.
        kernel: [usize; 2],
        /// Depthwise kernel `[C, 1, kh, kw]` produced.
        out_kernel: String,
    },
    /// Paradigms 2/3/4: the sum of `sources` placed into a zero kernel of `out_shape`
    /// (`[O, C/groups, KH, KW]`, or `[O, C]` for a Linear) with `groups` groups.
    Place {
        /// Shape of the merged kernel.
        out_shape: Vec<usize>,
        /// Group count of the merged kernel.
        groups: usize,
        /// Input channels C of the merged conv.
        in_channels: usize,
        /// Kernels accumulated into it.
        sources: Vec<PlaceSource>,
        /// Merged kernel produced.
        out_kernel: String,
        /// Merged bias `[O]`, the sum of the sources' biases; `None` when none has one.
        out_bias: Option<String>,
    },
    /// Paradigm 5: `second(first(x))` as one kernel; one of the two is 1x1.
    Compose {
        /// The conv applied first.
        first: ConvOperand,
        /// The conv applied to `first`'s output.
        second: ConvOperand,
        /// Input channels of `first`.
        in_channels: usize,
        /// Shape of the composed kernel.
        out_shape: Vec<usize>,
        /// Group count of the composed kernel.
        groups: usize,
        /// Composed kernel produced.
        out_kernel: String,
        /// Composed bias `[O]`, if either operand has a bias.
        out_bias: Option<String>,
    },
}

impl Step {
    /// Short name, used for GPU batching keys and reports.
    pub fn primitive(&self) -> &'static str {
        match self {
            Step::FoldBn { .. } => "fold_bn",
            Step::BnToConv { .. } => "bn_to_conv",
            Step::Dirac { .. } => "dirac",
            Step::AvgPoolKernel { .. } => "avgpool_kernel",
            Step::Place { .. } => "place",
            Step::Compose { .. } => "compose",
        }
    }

    /// Tensors the step reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Step::FoldBn { kernel, bias, bn, .. } => {
                let mut v = vec![kernel.as_str(), &bn.gamma, &bn.beta, &bn.mean, &bn.var];
                v.extend(bias.as_deref());
                v
            }
            Step::BnToConv { bn, .. } => vec![&bn.gamma, &bn.beta, &bn.mean, &bn.var],
            Step::Dirac { .. } | Step::AvgPoolKernel { .. } => vec![],
            Step::Place { sources, .. } => sources
                .iter()
                .flat_map(|s| {
                    let bn = s.bn.iter().flat_map(|b| [b.gamma.as_str(), &b.beta, &b.mean, &b.var]);
                    std::iter::once(s.kernel.as_str()).chain(s.bias.as_deref()).chain(bn)
                })
                .collect(),
            Step::Compose { first, second, .. } => {
                [first, second].into_iter().flat_map(|o| std::iter::once(o.kernel.as_str()).chain(o.bias.as_deref())).collect()
            }
        }
    }

    /// Applies `f` to every tensor name the step reads or writes (for renaming).
    pub fn for_each_name(&mut self, f: &mut dyn FnMut(&mut String)) {
        let bn = |b: &mut BnParams, f: &mut dyn FnMut(&mut String)| {
            for t in [&mut b.gamma, &mut b.beta, &mut b.mean, &mut b.var] {
                f(t);
            }
        };
        match self {
            Step::FoldBn { kernel, bias, bn: b, out_kernel, out_bias } => {
                f(kernel);
                bias.iter_mut().for_each(&mut *f);
                bn(b, f);
                f(out_kernel);
                f(out_bias);
            }
            Step::BnToConv { bn: b, out_kernel, out_bias, .. } => {
                bn(b, f);
                f(out_kernel);
                f(out_bias);
            }
            Step::Dirac { out_kernel, .. } | Step::AvgPoolKernel { out_kernel, .. } => f(out_kernel),
            Step::Place { sources, out_kernel, out_bias, .. } => {
                for s in sources {
                    f(&mut s.kernel);
                    s.bias.iter_mut().for_each(&mut *f);
                    if let Some(b) = s.bn.as_mut() {
                        bn(b, f);
                    }
                }
                f(out_kernel);
                out_bias.iter_mut().for_each(&mut *f);
            }
            Step::Compose { first, second, out_kernel, out_bias, .. } => {
                for o in [first, second] {
                    f(&mut o.kernel);
                    o.bias.iter_mut().for_each(&mut *f);
                }
                f(out_kernel);
                out_bias.iter_mut().for_each(&mut *f);
            }
        }
    }

    /// Tensors the step writes (each written by exactly one step).
    pub fn outputs(&self) -> Vec<&str> {
        match self {
            Step::FoldBn { out_kernel, out_bias, .. } | Step::BnToConv { out_kernel, out_bias, .. } => vec![out_kernel, out_bias],
            Step::Dirac { out_kernel, .. } | Step::AvgPoolKernel { out_kernel, .. } => vec![out_kernel],
            Step::Place { out_kernel, out_bias, .. } | Step::Compose { out_kernel, out_bias, .. } => {
                std::iter::once(out_kernel.as_str()).chain(out_bias.as_deref()).collect()
            }
        }
    }
}

/// Largest tensor (in f32 elements) a plan may compute: 16 GiB.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 32;

/// The steps of one fusion, in an order where every step's inputs are either source
/// weights or outputs of earlier steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FusionPlan {
    /// Steps in dependency order.
    pub steps: Vec<Step>,
}

impl FusionPlan {
    /// Dependency level of each step: 0 when it reads only source weights, else one
    /// more than the deepest step it reads from. Steps of one level are independent,
    /// which is what lets the GPU run a whole level of one primitive in one dispatch.
    pub fn levels(&self) -> Vec<usize> {
        let mut level_of: HashMap<&str, usize> = HashMap::new();
        let mut levels = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let l = s.inputs().iter().filter_map(|t| level_of.get(t).map(|l| l + 1)).max().unwrap_or(0);
            for o in s.outputs() {
                level_of.insert(o, l);
            }
            levels.push(l);
        }
        levels
    }
}

impl FusionPlan {
    /// Source tensors the plan reads (not produced by any step), in first-use order.
    pub fn sources(&self) -> Vec<&str> {
        let produced: HashSet<&str> = self.steps.iter().flat_map(|s| s.outputs()).collect();
        let mut seen = HashSet::new();
        self.steps.iter().flat_map(|s| s.inputs()).filter(|t| !produced.contains(t) && seen.insert(*t)).collect()
    }

    /// Checks every source value both executors would read: a NaN or Inf weight, or a
    /// BN variance that makes `sqrt(var + eps)` meaningless, is an error naming the
    /// tensor, not a silently poisoned deploy model.
    pub fn check_sources(&self, weights: &Weights) -> Result<()> {
        let sources: Vec<(&str, &crate::tensor::Tensor)> = self.sources().into_iter().map(|n| Ok((n, weights.get(n)?))).collect::<Result<_>>()?;
        Self::check_finite(&sources)?;
        self.check_bn_variances(weights)
    }

    /// `check_sources` over the sources still in `weights` (a releasing executor
    /// has dropped the others, checking each as it went).
    pub fn check_present_sources(&self, weights: &Weights) -> Result<()> {
        let sources: Vec<(&str, &crate::tensor::Tensor)> = self.sources().into_iter().filter_map(|n| weights.get(n).ok().map(|t| (n, t))).collect();
        Self::check_finite(&sources)
    }

    /// The first of `sources` that holds a NaN or an infinity, as an error naming it
    /// and the value's flat index.
    pub(crate) fn check_finite(sources: &[(&str, &crate::tensor::Tensor)]) -> Result<()> {
        use rayon::prelude::*;
        // A vectorisable all-finite scan per tensor, in parallel; the position is only
        // searched for in a tensor that fails.
        let bad = sources.par_iter().find_first(|(_, t)| !t.data().par_chunks(1 << 16).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite())));
        if let Some((name, t)) = bad {
            let (i, v) = t.first_non_finite().expect("a non-finite value was seen");
            return Err(Error::tensor(name, format!("holds {} at flat index {}", v, i)));
        }
        Ok(())
    }

    /// The variance half of [`Self::check_sources`]: every BN's `var + eps` is
    /// positive. Cheap (one value per channel); the CPU executor runs only this before
    /// computing, because NaN and Inf propagate through its f64 sums and products, so
    /// [`Self::check_outputs`] sees any non-finite source it read, and only then is
    /// the full scan run, to name the source.
    pub fn check_bn_variances(&self, weights: &Weights) -> Result<()> {
        let bns = self.steps.iter().flat_map(|s| match s {
            Step::FoldBn { bn, .. } | Step::BnToConv { bn, .. } => vec![bn],
            Step::Place { sources, .. } => sources.iter().filter_map(|s| s.bn.as_ref()).collect(),
            _ => vec![],
        });
        for bn in bns {
            if let Some((c, v)) = weights.get(&bn.var)?.data().iter().enumerate().find(|(_, v)| !(**v >= 0.0 && **v as f64 + bn.eps as f64 > 0.0)) {
                return Err(Error::tensor(&bn.var, format!("running_var[{}] = {} with eps {}: var must be >= 0 and var + eps > 0", c, v, bn.eps)));
            }
        }
        Ok(())
    }

    /// Merges each `FoldBn` whose outputs feed exactly one `Place` (and are not
    /// parameters in `keep`, the deploy graph's) into that place as an on-the-fly
    /// BN: the folded kernel is never written and read back, which is most of the
    /// memory traffic of a RepVGG-style fusion. Same arithmetic, fewer steps.
    pub fn fold_bn_into_place(&mut self, keep: &crate::graph::ParamShapes) {
        // (place step, its source, fold step) of each merge, found by index over
        // borrowed names; the fold's names are then moved into the source, not cloned.
        let merges: Vec<(usize, usize, usize)> = {
            let mut readers: foldhash::HashMap<&str, usize> = foldhash::HashMap::with_capacity_and_hasher(4 * self.steps.len(), Default::default());
            for s in &self.steps {
                for t in s.inputs() {
                    *readers.entry(t).or_default() += 1;
                }
            }
            let mut folds: foldhash::HashMap<&str, usize> = foldhash::HashMap::with_capacity_and_hasher(self.steps.len(), Default::default());
            for (i, s) in self.steps.iter().enumerate() {
                if let Step::FoldBn { out_kernel, out_bias, .. } = s {
                    let single = |t: &String| readers.get(t.as_str()) == Some(&1) && !keep.contains_key(t);
                    if single(out_kernel) && single(out_bias) {
                        folds.insert(out_kernel, i);
                    }
                }
            }
            let mut merges = vec![];
            for (pi, s) in self.steps.iter().enumerate() {
                let Step::Place { sources, .. } = s else { continue };
                for (sj, src) in sources.iter().enumerate() {
                    let Some(&fi) = folds.get(src.kernel.as_str()) else { continue };
                    if let Step::FoldBn { out_bias, .. } = &self.steps[fi] {
                        if src.bias.as_ref() == Some(out_bias) && src.bn.is_none() {
                            merges.push((pi, sj, fi));
                        }
                    }
                }
            }
            merges
        };
        // Each fold has one reader, so each is moved at most once.
        let mut folded = vec![false; self.steps.len()];
        for (pi, sj, fi) in merges {
            let Step::FoldBn { kernel, bias, bn, .. } = &mut self.steps[fi] else { continue };
            let (kernel, bias, bn) = (std::mem::take(kernel), bias.take(), std::mem::take(bn));
            folded[fi] = true;
            if let Step::Place { sources, .. } = &mut self.steps[pi] {
                let src = &mut sources[sj];
                src.kernel = kernel;
                src.bias = bias;
                src.bn = Some(bn);
            }
        }
        let mut i = 0;
        self.steps.retain(|_| {
            i += 1;
            !folded[i - 1]
        });
    }

    /// Checks every computed tensor: finite inputs can still fold into a non-finite
    /// kernel (gamma 1e30 over a tiny variance), and such a model must not be written.
    pub fn check_outputs(&self, computed: &HashMap<String, crate::tensor::Tensor>) -> Result<()> {
        self.check_outputs_unless(computed, |_| false)
    }

    /// [`Self::check_outputs`] skipping the tensors `checked` says were already
    /// checked as they were written (the CPU place kernels).
    pub fn check_outputs_unless(&self, computed: &HashMap<String, crate::tensor::Tensor>, checked: impl Fn(&str) -> bool + Sync) -> Result<()> {
        use rayon::prelude::*;
        let bad = computed.par_iter().filter(|(n, _)| !checked(n)).find_any(|(_, t)| !t.data().iter().fold(true, |ok, v| ok & v.is_finite()));
        match bad {
            Some((name, t)) => {
                let (i, v) = t.first_non_finite().expect("a non-finite value was seen");
                let by = self.steps.iter().find(|s| s.outputs().contains(&name.as_str())).map_or("?", |s| s.primitive());
                Err(Error::tensor(
                    name,
                    format!("fused value overflows f32: {} at flat index {} (computed by {}); check the BN statistics and weights", v, i, by),
                ))
            }
            None => Ok(()),
        }
    }

    /// Shape of every tensor a step writes, given the source shapes.
    pub fn output_shapes(&self, weights: &Weights) -> Result<BTreeMap<String, Vec<usize>>> {
        let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let shape_of = |shapes: &BTreeMap<String, Vec<usize>>, n: &str| -> Result<Vec<usize>> {
            match shapes.get(n) {
                Some(s) => Ok(s.clone()),
                None => Ok(weights.get(n)?.shape().to_vec()),
            }
        };
        for s in &self.steps {
            let outs: Vec<(String, Vec<usize>)> = match s {
                Step::FoldBn { kernel, out_kernel, out_bias, .. } => {
                    let k = shape_of(&shapes, kernel)?;
                    vec![(out_bias.clone(), vec![k[0]]), (out_kernel.clone(), k)]
                }
                Step::BnToConv { channels, out_kernel, out_bias, .. } => {
                    vec![(out_kernel.clone(), vec![*channels, 1, 1, 1]), (out_bias.clone(), vec![*channels])]
                }
                Step::Dirac { channels, groups, kernel, out_kernel } => {
                    vec![(out_kernel.clone(), vec![*channels, channels / groups.max(&1), kernel[0], kernel[1]])]
                }
                Step::AvgPoolKernel { channels, kernel, out_kernel } => vec![(out_kernel.clone(), vec![*channels, 1, kernel[0], kernel[1]])],
                Step::Place { out_shape, out_kernel, out_bias, .. } | Step::Compose { out_shape, out_kernel, out_bias, .. } => {
                    let mut v = vec![(out_kernel.clone(), out_shape.clone())];
                    v.extend(out_bias.iter().map(|b| (b.clone(), vec![out_shape[0]])));
                    v
                }
            };
            for (name, shape) in &outs {
                // Caught before anything is allocated: a 1 KB file can ask for a
                // 65536x65536 pool kernel.
                match crate::tensor::checked_numel(shape) {
                    Some(n) if n <= MAX_TENSOR_ELEMENTS => {}
                    _ => {
                        return Err(Error::tensor(
                            name,
                            format!("fused tensor of shape {:?} exceeds the {} GiB per-tensor limit", shape, (MAX_TENSOR_ELEMENTS * 4) >> 30),
                        ))
                    }
                }
            }
            shapes.extend(outs);
        }
        Ok(shapes)
    }
}
