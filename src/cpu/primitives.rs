//! The weight-kernel primitives (README "How it works") as pure functions: they take tensors by
//! shared reference and return new ones (and `Tensor` storage is immutable), so no
//! primitive can mutate its inputs. Arithmetic is done in f64 and rounded once.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::error::{Error, Result};
pub use crate::plan::ChannelMap;
use crate::tensor::Tensor;

/// Batch-norm statistics, all `[C]`.
pub struct BnTensors<'a> {
    /// Scale `[C]`.
    pub gamma: &'a Tensor,
    /// Shift `[C]`.
    pub beta: &'a Tensor,
    /// Running mean `[C]`.
    pub mean: &'a Tensor,
    /// Running variance `[C]`.
    pub var: &'a Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// A kernel read as `[O, I, kh, kw]`; a Linear weight `[O, I]` reads as 1x1.
pub fn kernel_dims(name: &str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [o, i, h, w] => Ok([o, i, h, w]),
        [o, i] => Ok([o, i, 1, 1]),
        ref s => Err(Error::tensor(name, format!("expected a kernel [O, I, kh, kw] or [O, I], got {:?}", s))),
    }
}

fn want_len(name: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.shape() == [n] {
        Ok(())
    } else {
        Err(Error::tensor(name, format!("expected shape [{}], got {:?}", n, t.shape())))
    }
}

/// One channel's batch norm as `y = s * x + t`: `s = gamma / sqrt(var + eps)`,
/// `t = beta - mean * s`, in f64 (the one place this arithmetic is written).
pub fn bn_affine(gamma: f32, beta: f32, mean: f32, var: f32, eps: f32) -> (f64, f64) {
    let s = gamma as f64 / (var as f64 + eps as f64).sqrt();
    (s, beta as f64 - mean as f64 * s)
}

/// Per-channel `s = gamma / sqrt(var + eps)` and shift `beta - mean * s`, rejecting
/// statistics that make the fold meaningless instead of propagating NaN.
pub fn bn_scale_shift(bn: &BnTensors, channels: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    for (field, t) in [("scale", bn.gamma), ("bias", bn.beta), ("mean", bn.mean), ("var", bn.var)] {
        want_len(field, t, channels)?;
        if let Some((i, v)) = t.first_non_finite() {
            return Err(Error::tensor(field, format!("batch-norm {} holds {} at channel {}", field, v, i)));
        }
    }
    let mut scale = Vec::with_capacity(channels);
    let mut shift = Vec::with_capacity(channels);
    for c in 0..channels {
        let var = bn.var.data()[c] as f64;
        let denom = var + bn.eps as f64;
        if var < 0.0 || denom <= 0.0 {
            return Err(Error::tensor("var", format!("batch-norm running_var[{}] = {} with eps {}: var must be >= 0 and var + eps > 0", c, var, bn.eps)));
        }
        let (s, t) = bn_affine(bn.gamma.data()[c], bn.beta.data()[c], bn.mean.data()[c], bn.var.data()[c], bn.eps);
        scale.push(s);
        shift.push(t);
    }
    Ok((scale, shift))
}

/// Paradigm 1/8: folds a BN that follows a conv (or Linear) into its kernel and bias.
pub fn fold_bn(kernel: &Tensor, bias: Option<&Tensor>, bn: &BnTensors) -> Result<(Tensor, Tensor)> {
    let [o, ..] = kernel_dims("kernel", kernel)?;
    let (scale, shift) = bn_scale_shift(bn, o)?;
    if let Some(b) = bias {
        want_len("bias", b, o)?;
    }
    let row = kernel.numel() / o;
    let mut k = vec![0f32; kernel.numel()];
    k.par_chunks_mut(row.max(1)).enumerate().for_each(|(oc, dst)| {
        let src = &kernel.data()[oc * row..(oc + 1) * row];
        for (d, s) in dst.iter_mut().zip(src) {
            *d = (*s as f64 * scale[oc]) as f32;
        }
    });
    let b: Vec<f32> = (0..o)
        .map(|oc| {
            let b0 = bias.map_or(0.0, |b| b.data()[oc] as f64);
            (b0 * scale[oc] + shift[oc]) as f32
        })
        .collect();
    Ok((Tensor::from_parts(kernel.shape().to_vec(), k), Tensor::from_parts(vec![o], b)))
}

/// A lone BN as a depthwise 1x1 conv: kernel `[C, 1, 1, 1]` and bias `[C]`.
pub fn bn_to_conv(bn: &BnTensors, channels: usize) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = bn_scale_shift(bn, channels)?;
    Ok((
        Tensor::from_parts(vec![channels, 1, 1, 1], scale.iter().map(|&s| s as f32).collect()),
        Tensor::from_parts(vec![channels], shift.iter().map(|&s| s as f32).collect()),
    ))
}

/// Paradigm 6a: identity as a conv `[C, C/groups, kh, kw]`. The tap is the kernel
/// centre `k / 2`, so the kernel must be odd in both axes (an even kernel has no centre
/// and cannot hold a dirac; the seed code's hard-coded `[1, 1]` was right for 3x3 only).
pub fn dirac(channels: usize, groups: usize, kernel: [usize; 2]) -> Result<Tensor> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::tensor("dirac", format!("groups {} must divide channels {}", groups, channels)));
    }
    if kernel[0].is_multiple_of(2) || kernel[1].is_multiple_of(2) {
        return Err(Error::tensor("dirac", format!("kernel {:?} is even: a dirac needs a centre tap", kernel)));
    }
    let per = channels / groups;
    let taps = kernel[0] * kernel[1];
    let centre = (kernel[0] / 2) * kernel[1] + kernel[1] / 2;
    let mut k = vec![0f32; channels * per * taps];
    for c in 0..channels {
        k[(c * per + c % per) * taps + centre] = 1.0;
    }
    Ok(Tensor::from_parts(vec![channels, per, kernel[0], kernel[1]], k))
}

/// Paradigm 7: average pooling (count_include_pad, or no padding) as a depthwise
/// kernel `[C, 1, kh, kw]`.
pub fn avgpool_kernel(channels: usize, kernel: [usize; 2]) -> Tensor {
    let taps = kernel[0] * kernel[1];
    Tensor::from_parts(vec![channels, 1, kernel[0], kernel[1]], vec![(1.0 / taps as f64) as f32; channels * taps])
}

/// One source of `place`, with its tensors.
pub struct PlaceInput<'a> {
    /// Source kernel `[O, I/groups, kh, kw]` or `[O, I]`.
    pub kernel: &'a Tensor,
    /// Source bias `[O]`, summed into the destination bias.
    pub bias: Option<&'a Tensor>,
    /// Group count of the source kernel.
    pub groups: usize,
    /// Top-left tap `[y, x]` in the destination kernel.
    pub offset: [usize; 2],
    /// Distance `[y, x]` between consecutive taps in the destination.
    pub step: [usize; 2],
    /// First destination output channel.
    pub out_offset: usize,
    /// Strided/scaled channel placement beyond `out_offset`.
    pub map: ChannelMap,
    /// Per-output-channel BN applied to this source on the fly:
    /// `k * scale[o]`, bias `bias * scale[o] + shift[o]` (see `bn_scale_shift`).
    pub bn: Option<BnFold<'a>>,
}

/// A batch norm folded into a `place` source: scale and shift per output channel.
#[derive(Clone, Copy)]
pub struct BnFold<'a> {
    /// Per-output-channel multiplier `gamma / sqrt(var + eps)`, `[O]`.
    pub scale: &'a [f64],
    /// Per-output-channel additive term `beta - mean * scale`, `[O]`.
    pub shift: &'a [f64],
}

/// Paradigms 2/3/4: sums kernels into a new zero kernel `[O, C/groups, KH, KW]`, each
/// at its spatial offset (centring or asymmetric 1xK/Kx1 alignment), tap step
/// (dilation ratio), output-channel offset (concat) and with group expansion.
pub fn place(out_shape: &[usize], groups: usize, in_channels: usize, sources: &[PlaceInput]) -> Result<(Tensor, Option<Tensor>)> {
    let n = crate::tensor::checked_numel(out_shape).ok_or_else(|| Error::tensor("place", format!("destination {:?} overflows", out_shape)))?;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let bias = place_into(&mut out.spare_capacity_mut()[..n], out_shape, groups, in_channels, sources)?;
    // SAFETY: `place_into` returned Ok, so it wrote every one of the `n` elements,
    // and `n` is within the capacity reserved above.
    unsafe { out.set_len(n) };
    Ok((Tensor::from_parts(out_shape.to_vec(), out), bias))
}

/// `place` writing the kernel into `dst` (its element count long: a fresh buffer
/// or an arena slice, not zeroed first) and returning the bias. On `Ok` every
/// element of `dst` has been written.
pub fn place_into(dst: &mut [MaybeUninit<f32>], out_shape: &[usize], groups: usize, in_channels: usize, sources: &[PlaceInput]) -> Result<Option<Tensor>> {
    let [o_total, per, kh_out, kw_out] = match *out_shape {
        [o, i, h, w] => [o, i, h, w],
        [o, i] => [o, i, 1, 1],
        ref s => return Err(Error::tensor("place", format!("bad destination shape {:?}", s))),
    };
    if groups == 0 || !in_channels.is_multiple_of(groups) || o_total % groups != 0 || per != in_channels / groups {
        return Err(Error::tensor("place", format!("destination {:?} does not match {} input channels in {} groups", out_shape, in_channels, groups)));
    }
    let mut dims = Vec::with_capacity(sources.len());
    for s in sources {
        let [so, si, sh, sw] = kernel_dims("place source", s.kernel)?;
        let m = s.map;
        let fits = s.groups > 0
            && m.out_stride > 0
            && m.in_stride > 0
            && so.is_multiple_of(s.groups)
            && m.in_offset + (si * s.groups - 1) * m.in_stride < in_channels
            && s.out_offset + (so - 1) * m.out_stride < o_total
            && s.offset[0] + (sh - 1) * s.step[0] < kh_out
            && s.offset[1] + (sw - 1) * s.step[1] < kw_out;
        if !fits {
            return Err(Error::tensor(
                "place",
                format!(
                    "source {:?} (groups {}, offset {:?}, step {:?}, out offset {}) does not fit destination {:?}",
                    s.kernel.shape(),
                    s.groups,
                    s.offset,
                    s.step,
                    s.out_offset,
                    out_shape
                ),
            ));
        }
        if let Some(b) = s.bias {
            want_len("place bias", b, so)?;
        }
        if s.bn.is_some_and(|b| b.scale.len() != so || b.shift.len() != so) {
            return Err(Error::tensor("place", "folded batch norm does not match the source's output channels"));
        }
        dims.push([so, si, sh, sw]);
    }
    let row = per * kh_out * kw_out;
    if dst.len() != o_total * row {
        return Err(Error::tensor("place", format!("internal error: {} slots for destination {:?}", dst.len(), out_shape)));
    }
    let failed = std::sync::atomic::AtomicBool::new(false);
    let overflow_at = std::sync::atomic::AtomicUsize::new(usize::MAX);
    // One output row (output channel) per task, summed in an f64 row buffer and
    // rounded once: no whole-kernel f64 temporary, no second pass, no zero fill. The
    // f32 rounding is also where a sum can overflow, so finiteness is checked there
    // (the executors' separate output scan skips place kernels).
    super::out_buffer::fill_rows_into(
        dst,
        row,
        || vec![0f64; row],
        |acc, o, dst| {
            acc.iter_mut().for_each(|a| *a = 0.0);
            let base = (o / (o_total / groups)) * per;
            for (s, &[so, si, sh, sw]) in sources.iter().zip(&dims) {
                let m = s.map;
                if o < s.out_offset || (o - s.out_offset) % m.out_stride != 0 || (o - s.out_offset) / m.out_stride >= so {
                    continue;
                }
                let os = (o - s.out_offset) / m.out_stride;
                // Source input channel c0 + j lands on destination input channel
                // in_offset + (c0 + j) * in_stride, which must lie in o's group.
                let c0 = (os / (so / s.groups)) * si;
                let (first, last) = (m.in_offset + c0 * m.in_stride, m.in_offset + (c0 + si - 1) * m.in_stride);
                if first < base || last >= base + per {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let scale = m.scale as f64 * s.bn.map_or(1.0, |b| b.scale[os]);
                let src = &s.kernel.data()[os * si * sh * sw..][..si * sh * sw];
                if [sh, sw] == [kh_out, kw_out] && m.in_stride == 1 {
                    // Same window, contiguous channels: one vectorisable run.
                    let at = (first - base) * kh_out * kw_out;
                    for (a, v) in acc[at..at + src.len()].iter_mut().zip(src) {
                        *a += *v as f64 * scale;
                    }
                    continue;
                }
                for (j, taps) in src.chunks_exact(sh * sw).enumerate() {
                    let cl = first - base + j * m.in_stride;
                    for a in 0..sh {
                        let at = (cl * kh_out + s.offset[0] + a * s.step[0]) * kw_out + s.offset[1];
                        for b in 0..sw {
                            acc[at + b * s.step[1]] += taps[a * sw + b] as f64 * scale;
                        }
                    }
                }
            }
            let mut finite = true;
            for (d, a) in dst.iter_mut().zip(acc.iter()) {
                let v = *a as f32;
                finite &= v.is_finite();
                d.write(v);
            }
            if !finite {
                let i = acc.iter().position(|a| !(*a as f32).is_finite()).expect("a non-finite value was seen");
                overflow_at.fetch_min(o * row + i, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    let at = overflow_at.into_inner();
    if at < o_total * row {
        // SAFETY: every row has been written by now (`fill_rows_into` returned).
        let v = unsafe { dst[at].assume_init() };
        return Err(Error::tensor("place", format!("fused value overflows f32: {} at flat index {}; check the BN statistics and weights", v, at)));
    }
    if failed.into_inner() {
        return Err(Error::tensor("place", format!("a source's groups do not fit the destination's {} groups", groups)));
    }
    let bias = sources.iter().any(|s| s.bias.is_some() || s.bn.is_some()).then(|| {
        let mut b = vec![0f64; o_total];
        for (s, &[so, ..]) in sources.iter().zip(&dims) {
            for i in 0..so {
                let raw = s.bias.map_or(0.0, |t| t.data()[i] as f64);
                let v = match s.bn {
                    Some(bn) => raw * bn.scale[i] + bn.shift[i],
                    None => raw,
                };
                b[s.out_offset + i * s.map.out_stride] += v * s.map.scale as f64;
            }
        }
        Tensor::from_parts(vec![o_total], b.into_iter().map(|v| v as f32).collect())
    });
    Ok(bias)
}

/// One operand of `compose`.
pub struct ComposeInput<'a> {
    /// Kernel `[O, I/groups, kh, kw]` or `[O, I]` (read as 1x1).
    pub kernel: &'a Tensor,
    /// Bias `[O]`, if any.
    pub bias: Option<&'a Tensor>,
    /// Group count of the kernel.
    pub groups: usize,
}

/// Paradigm 5: `second(first(x))` as one kernel, where `first` or `second` is 1x1
/// (1x1 -> KxK and KxK -> 1x1), with groups on both sides and the first bias carried
/// through the second kernel. The result has `groups` groups; the caller picks the
/// coarsest exact count (not dense, unlike the seed's `fuse_1x1_kxk_conv`).
/// Exactness at the border is the caller's job (see `fuse::sequence`).
pub fn compose(first: &ComposeInput, second: &ComposeInput, in_channels: usize, groups: usize) -> Result<(Tensor, Option<Tensor>)> {
    let [m, ca, ah, aw] = kernel_dims("compose first", first.kernel)?;
    let [o, mb, bh, bw] = kernel_dims("compose second", second.kernel)?;
    let (ga, gb) = (first.groups, second.groups);
    let ok = ga > 0
        && gb > 0
        && groups > 0
        && in_channels.is_multiple_of(ga)
        && ca == in_channels / ga
        && m % ga == 0
        && m % gb == 0
        && mb == m / gb
        && o % gb == 0
        && in_channels.is_multiple_of(groups)
        && o % groups == 0;
    if !ok {
        return Err(Error::tensor(
            "compose",
            format!(
                "kernels {:?} (groups {}) then {:?} (groups {}) do not chain over {} input channels into {} groups",
                first.kernel.shape(),
                ga,
                second.kernel.shape(),
                gb,
                in_channels,
                groups
            ),
        ));
    }
    let first_is_1x1 = ah == 1 && aw == 1;
    let second_is_1x1 = bh == 1 && bw == 1;
    if !(first_is_1x1 || second_is_1x1) {
        return Err(Error::tensor("compose", "one of the two kernels must be 1x1 (general KxK->KxK composition is not supported)"));
    }
    let (kh, kw) = if first_is_1x1 { (bh, bw) } else { (ah, aw) };
    let per = in_channels / groups;
    let row = per * kh * kw;
    let mut out = vec![0f32; o * row];
    let failed = std::sync::atomic::AtomicBool::new(false);
    out.par_chunks_mut(row).enumerate().for_each_init(
        || vec![0f64; row],
        |dst, (oc, out_row)| {
            dst.iter_mut().for_each(|a| *a = 0.0);
            let g_b = oc / (o / gb);
            let base = (oc / (o / groups)) * per;
            for j in 0..mb {
                let mid = g_b * mb + j;
                let g_a = mid / (m / ga);
                for i in 0..ca {
                    let c = g_a * ca + i;
                    if c < base || c >= base + per {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    let d = &mut dst[(c - base) * kh * kw..][..kh * kw];
                    let a_k = &first.kernel.data()[(mid * ca + i) * ah * aw..][..ah * aw];
                    let b_k = &second.kernel.data()[(oc * mb + j) * bh * bw..][..bh * bw];
                    if first_is_1x1 {
                        let a = a_k[0] as f64;
                        for (d, b) in d.iter_mut().zip(b_k) {
                            *d += a * *b as f64;
                        }
                    } else {
                        let b = b_k[0] as f64;
                        for (d, a) in d.iter_mut().zip(a_k) {
                            *d += b * *a as f64;
                        }
                    }
                }
            }
            for (d, a) in out_row.iter_mut().zip(dst.iter()) {
                *d = *a as f32;
            }
        },
    );
    if failed.into_inner() {
        return Err(Error::tensor("compose", format!("the composed kernel does not fit {} groups", groups)));
    }
    let bias = (first.bias.is_some() || second.bias.is_some()).then(|| {
        (0..o)
            .map(|oc| {
                let mut b = second.bias.map_or(0.0, |t| t.data()[oc] as f64);
                if let Some(ba) = first.bias {
                    let g_b = oc / (o / gb);
                    for j in 0..mb {
                        let tap_sum: f64 = second.kernel.data()[(oc * mb + j) * bh * bw..][..bh * bw].iter().map(|&v| v as f64).sum();
                        b += tap_sum * ba.data()[g_b * mb + j] as f64;
                    }
                }
                b as f32
            })
            .collect::<Vec<f32>>()
    });
    Ok((Tensor::from_parts(vec![o, per, kh, kw], out), bias.map(|b| Tensor::from_parts(vec![o], b))))
}

/// Paradigm 9: a Linear weight `[O, I]` as a 1x1 conv kernel `[O, I, 1, 1]` (a view).
pub fn linear_to_conv1x1(weight: &Tensor) -> Result<Tensor> {
    match *weight.shape() {
        [o, i] => Ok(weight.reshaped(vec![o, i, 1, 1]).expect("same element count")),
        ref s => Err(Error::tensor("linear weight", format!("expected [O, I], got {:?}", s))),
    }
}

/// Paradigm 9, the other way: a dense 1x1 conv kernel `[O, I, 1, 1]` as a Linear
/// weight `[O, I]` (a view). Both directions exist; the seed code defined
/// `lc2pwconv` twice and so lost one.
pub fn conv1x1_to_linear(kernel: &Tensor) -> Result<Tensor> {
    match *kernel.shape() {
        [o, i, 1, 1] => Ok(kernel.reshaped(vec![o, i]).expect("same element count")),
        ref s => Err(Error::tensor("conv kernel", format!("expected a dense 1x1 kernel [O, I, 1, 1], got {:?}", s))),
    }
}
