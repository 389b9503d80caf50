//! The exactness arithmetic of merging conv windows and choosing group counts.
//!
//! A branch with kernel k, dilation d and leading pad p reads input offsets
//! `-p + a*d` (a < k) around each output position times the stride. Branches merge
//! into one conv when they share the stride, their taps land on one lattice of step D
//! (the merged dilation), and they produce the same number of outputs.

/// The sliding-window part of a conv.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
}

/// Where each branch's kernel goes inside the merged one.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedWindow {
    /// The merged conv's window.
    pub window: Window,
    /// Per branch, its top-left tap `[y, x]` inside the merged kernel.
    pub offsets: Vec<[usize; 2]>,
    /// Per branch, the merged-kernel distance `[y, x]` between its taps.
    pub steps: Vec<[usize; 2]>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

const AXIS: [&str; 2] = ["height", "width"];

/// Merges branch windows that read the same input into one, or says why not.
pub fn merge_windows(ws: &[Window]) -> Result<MergedWindow, String> {
    let mut window = Window { kernel: [1, 1], stride: [1, 1], pads: [0; 4], dilation: [1, 1] };
    let mut offsets = vec![[0usize; 2]; ws.len()];
    let mut steps = vec![[1usize; 2]; ws.len()];
    for a in 0..2 {
        let s = ws[0].stride[a];
        if let Some(w) = ws.iter().find(|w| w.stride[a] != s) {
            return Err(format!("strides differ along {} ({} vs {}): the branches sample different positions", AXIS[a], s, w.stride[a]));
        }
        // Taps of a 1-tap axis sit on any lattice; they do not constrain the dilation.
        let dil = ws.iter().filter(|w| w.kernel[a] > 1).map(|w| w.dilation[a]).fold(0, gcd).max(1);
        let start = |w: &Window| -(w.pads[a] as i64);
        let end = |w: &Window| start(w) + ((w.kernel[a] - 1) * w.dilation[a]) as i64;
        let lo = ws.iter().map(start).min().expect("at least one branch");
        let hi = ws.iter().map(end).max().expect("at least one branch");
        let tail = |w: &Window| w.pads[a + 2] as i64 + hi - end(w);
        let pad_end = tail(&ws[0]);
        for (b, w) in ws.iter().enumerate() {
            if (start(w) - lo) % dil as i64 != 0 {
                return Err(format!("along {}, a branch's taps fall between the merged kernel's taps (dilation {})", AXIS[a], dil));
            }
            if tail(w) != pad_end {
                return Err(format!(
                    "along {}, padding does not align: kernel {} pad ({},{}) and kernel {} pad ({},{}) give different output sizes or are not centred on each other",
                    AXIS[a], ws[0].kernel[a], ws[0].pads[a], ws[0].pads[a + 2], w.kernel[a], w.pads[a], w.pads[a + 2]
                ));
            }
            offsets[b][a] = ((start(w) - lo) / dil as i64) as usize;
            steps[b][a] = if w.kernel[a] > 1 { w.dilation[a] / dil } else { 1 };
        }
        window.stride[a] = s;
        window.dilation[a] = dil;
        window.kernel[a] = ((hi - lo) / dil as i64) as usize + 1;
        window.pads[a] = (-lo) as usize;
        window.pads[a + 2] = pad_end as usize;
    }
    Ok(MergedWindow { window, offsets, steps })
}

/// The largest group count `g` such that every output channel's input range
/// `(out, lo, hi)` lies inside the input slice of its group: the coarsest exact
/// structure (a dense result would waste compute; the seed returned dense).
pub fn coarsest_groups(out_channels: usize, in_channels: usize, ranges: &[(usize, usize, usize)]) -> usize {
    let top = gcd(out_channels, in_channels);
    (1..=top)
        .rev()
        .filter(|g| top.is_multiple_of(*g))
        .find(|&g| {
            let (po, pi) = (out_channels / g, in_channels / g);
            ranges.iter().all(|&(o, lo, hi)| {
                let base = (o / po) * pi;
                lo >= base && hi <= base + pi
            })
        })
        .unwrap_or(1)
}

/// `coarsest_groups` for branches that are summed (every branch spans all output
/// and input channels, out offset 0): a merged group must be a union of each
/// branch's groups, so `g` works exactly when it divides every branch's group count,
/// and the coarsest is their gcd. O(branches) where the range check is O(channels),
/// which was a tenth of MobileOne's rewrite (its depthwise branches have one range
/// per channel).
pub fn summed_groups(branch_groups: impl IntoIterator<Item = usize>) -> usize {
    branch_groups.into_iter().fold(0, gcd).max(1)
}

/// Input ranges per output channel of `second(first(x))`, for `coarsest_groups`.
pub fn composed_ranges(in_channels: usize, mid: usize, first_groups: usize, out: usize, second_groups: usize) -> Vec<(usize, usize, usize)> {
    let (pm_b, pm_a, pc_a) = (mid / second_groups, mid / first_groups, in_channels / first_groups);
    (0..out)
        .map(|o| {
            let gb = o / (out / second_groups);
            let (m_lo, m_hi) = (gb * pm_b, (gb + 1) * pm_b);
            let (ga_lo, ga_hi) = (m_lo / pm_a, (m_hi - 1) / pm_a);
            (o, ga_lo * pc_a, (ga_hi + 1) * pc_a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One range per output channel of a conv with `groups` groups, as
    /// `ConvLike::input_ranges` gives them.
    fn ranges(out: usize, inp: usize, groups: usize) -> Vec<(usize, usize, usize)> {
        (0..out).map(|o| (o, (o / (out / groups)) * (inp / groups), (o / (out / groups) + 1) * (inp / groups))).collect()
    }

    #[test]
    fn summed_groups_agrees_with_the_range_check() {
        // Every combination of up to three branch group counts dividing gcd(O, I),
        // over channel counts with many divisors: the closed form and the general
        // per-channel check give the same coarsest group count.
        for (out, inp) in [(12, 12), (24, 36), (8, 16), (30, 30), (7, 7)] {
            let divisors: Vec<usize> = (1..=gcd(out, inp)).filter(|d| gcd(out, inp).is_multiple_of(*d)).collect();
            for &a in &divisors {
                for &b in &divisors {
                    for &c in &divisors {
                        let all: Vec<_> = [a, b, c].iter().flat_map(|&g| ranges(out, inp, g)).collect();
                        assert_eq!(summed_groups([a, b, c]), coarsest_groups(out, inp, &all), "O {} I {} groups {:?}", out, inp, [a, b, c]);
                    }
                }
            }
        }
    }
}
