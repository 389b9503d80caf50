//! Runs a FusionPlan on the GPU in one batch: every source tensor uploaded once into
//! one arena, one dispatch per (dependency level, primitive) driven by a descriptor
//! table of jobs, one submission, one download of every computed tensor. The number
//! of submissions does not depend on the network's depth.

use std::collections::{BTreeMap, HashMap};

use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::plan::{FusionPlan, Step};
use crate::tensor::Tensor;
use crate::weights::Weights;

const NONE: u32 = u32::MAX;
/// Job record strides; `shaders_match_rust_constants` checks them against the WGSL.
pub const FOLD_BN_STRIDE: usize = 16;
pub const FILL_STRIDE: usize = 16;
pub const PLACE_STRIDE: usize = 16;
pub const PLACE_SRC_STRIDE: usize = 12;
pub const COMPOSE_STRIDE: usize = 20;

/// Where each tensor lives in the arena (in f32 elements).
struct Arena {
    offset: HashMap<String, usize>,
    len: usize,
}

impl Arena {
    fn place(&mut self, name: &str, numel: usize) {
        // 64-element alignment keeps every tensor on a 256-byte boundary.
        self.offset.insert(name.to_string(), self.len);
        self.len += numel.div_ceil(64).max(1) * 64;
    }
    fn at(&self, name: &str) -> Result<u32> {
        let off = self.offset.get(name).ok_or_else(|| Error::tensor(name, "not in the GPU arena"))?;
        u32::try_from(*off).map_err(|_| Error::Limit { what: "arena offset (u32 elements)".into(), need: *off as u64, have: u32::MAX as u64 })
    }
    fn at_opt(&self, name: Option<&String>) -> Result<u32> {
        name.map_or(Ok(NONE), |n| self.at(n))
    }
}

fn dims4(shape: &[usize]) -> [usize; 4] {
    match *shape {
        [o, i, h, w] => [o, i, h, w],
        [o, i] => [o, i, 1, 1],
        [o] => [o, 1, 1, 1],
        _ => [0; 4],
    }
}

/// Records of one (level, primitive) dispatch: the job table and the largest job.
#[derive(Default)]
struct Batch {
    records: Vec<u32>,
    /// `place` source records, after all job records in the final table.
    side: Vec<u32>,
    jobs: u32,
    max_elems: usize,
}

impl Batch {
    fn push(&mut self, kernel: &str, (mut record, side): Record, elems: usize) {
        if kernel == "place" {
            record[8] = self.side.len() as u32;
        }
        self.records.extend(record);
        self.side.extend(side);
        self.jobs += 1;
        self.max_elems = self.max_elems.max(elems);
    }

    /// The table the shader reads: job records, then the source records they index.
    fn table(mut self, kernel: &str) -> Vec<u32> {
        if kernel == "place" {
            let base = self.records.len() as u32;
            for j in 0..self.jobs as usize {
                self.records[j * PLACE_STRIDE + 8] += base;
            }
        }
        self.records.extend(self.side);
        self.records
    }
}

/// Executes `plan` on the GPU; returns every computed tensor by name.
pub fn execute_plan_gpu(ctx: &GpuContext, plan: &FusionPlan, weights: &Weights) -> Result<HashMap<String, Tensor>> {
    plan.check_sources(weights)?;
    let out_shapes = plan.output_shapes(weights)?;
    let shape_of = |n: &str| -> Result<Vec<usize>> { out_shapes.get(n).cloned().map_or_else(|| Ok(weights.get(n)?.shape().to_vec()), Ok) };
    let mut arena = Arena { offset: HashMap::new(), len: 0 };
    let sources = plan.sources();
    for s in &sources {
        arena.place(s, weights.get(s)?.numel());
    }
    let computed_start = arena.len;
    for (name, shape) in &out_shapes {
        arena.place(name, shape.iter().product());
    }
    let bytes = arena.len as u64 * 4;
    ctx.check_binding(bytes)?;
    let arena_buf = ctx.empty("arena", arena.len)?;
    for s in &sources {
        ctx.queue.write_buffer(&arena_buf, arena.offset[*s] as u64 * 4, bytemuck::cast_slice(weights.get(s)?.data()));
    }

    // (level, primitive) -> batch, in level order.
    let levels = plan.levels();
    let mut batches: BTreeMap<(usize, &'static str), Batch> = BTreeMap::new();
    for (step, &level) in plan.steps.iter().zip(&levels) {
        let kernel = match step {
            Step::FoldBn { .. } => "fold_bn",
            Step::BnToConv { .. } | Step::Dirac { .. } | Step::AvgPoolKernel { .. } => "fill",
            Step::Place { .. } => "place",
            Step::Compose { .. } => "compose",
        };
        let (record, elems) = encode(step, &arena, &shape_of)?;
        batches.entry((level, kernel)).or_default().push(kernel, record, elems);
    }
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("plan") });
    let mut keep = vec![];
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("plan"), timestamp_writes: None });
        for ((_, kernel), b) in batches {
            if b.jobs > 65535 {
                return Err(Error::Limit { what: "jobs per dispatch".into(), need: b.jobs as u64, have: 65535 });
            }
            let k = ctx.kernel(kernel)?;
            let (x, jobs) = ((b.max_elems.div_ceil(256).clamp(1, 65535)) as u32, b.jobs);
            let table = ctx.table(kernel, &b.table(kernel));
            let bg = ctx.bind_group(&k, &[arena_buf.as_entire_binding(), table.as_entire_binding()]);
            pass.set_pipeline(&k.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(x, jobs, 1);
            keep.push(table);
        }
    }
    let computed_len = (arena.len - computed_start) as u64;
    let mut data = ctx.submit_and_read(encoder, &[(&arena_buf, computed_start as u64, computed_len)])?;
    let all = data.pop().unwrap_or_default();
    let mut out = HashMap::new();
    for (name, shape) in out_shapes {
        let off = arena.offset[&name] - computed_start;
        let n: usize = shape.iter().product();
        out.insert(name, Tensor::from_parts(shape, all[off..off + n].to_vec()));
    }
    Ok(out)
}

type Record = (Vec<u32>, Vec<u32>);

/// Encodes one step as a job record, plus for `place` its source records, and the
/// number of elements it writes.
fn encode(step: &Step, arena: &Arena, shape_of: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<(Record, usize)> {
    let u = |x: usize| x as u32;
    Ok(match step {
        Step::FoldBn { kernel, bias, bn, out_kernel, out_bias } => {
            let k = shape_of(kernel)?;
            let o = k[0];
            let row: usize = k.iter().skip(1).product();
            let mut r = vec![
                arena.at(kernel)?,
                arena.at_opt(bias.as_ref())?,
                arena.at(&bn.gamma)?,
                arena.at(&bn.beta)?,
                arena.at(&bn.mean)?,
                arena.at(&bn.var)?,
                arena.at(out_kernel)?,
                arena.at(out_bias)?,
                u(o),
                u(row),
                bn.eps.to_bits(),
            ];
            r.resize(FOLD_BN_STRIDE, 0);
            ((r, vec![]), o * row + o)
        }
        Step::BnToConv { bn, channels, out_kernel, out_bias } => {
            let mut r = vec![
                2,
                u(*channels),
                1,
                1,
                1,
                arena.at(out_kernel)?,
                arena.at(out_bias)?,
                arena.at(&bn.gamma)?,
                arena.at(&bn.beta)?,
                arena.at(&bn.mean)?,
                arena.at(&bn.var)?,
                bn.eps.to_bits(),
            ];
            r.resize(FILL_STRIDE, 0);
            ((r, vec![]), 2 * channels)
        }
        Step::Dirac { channels, groups, kernel, out_kernel } => {
            if kernel[0] % 2 == 0 || kernel[1] % 2 == 0 || *groups == 0 || channels % groups != 0 {
                return Err(Error::tensor(out_kernel, format!("dirac needs an odd kernel and groups dividing channels, got {:?} / {}", kernel, groups)));
            }
            let per = channels / groups;
            let mut r = vec![0, u(*channels), u(per), u(kernel[0]), u(kernel[1]), arena.at(out_kernel)?, NONE];
            r.resize(FILL_STRIDE, 0);
            ((r, vec![]), channels * per * kernel[0] * kernel[1])
        }
        Step::AvgPoolKernel { channels, kernel, out_kernel } => {
            let mut r = vec![1, u(*channels), 1, u(kernel[0]), u(kernel[1]), arena.at(out_kernel)?, NONE];
            r.resize(FILL_STRIDE, 0);
            ((r, vec![]), channels * kernel[0] * kernel[1])
        }
        Step::Place { out_shape, groups, in_channels, sources, out_kernel, out_bias } => {
            let [o, per, kh, kw] = dims4(out_shape);
            // Source records go in a side list; `src0` (field 8) is set by `Batch`.
            let mut srcs = vec![];
            for s in sources {
                let [so, _, sh, sw] = dims4(&shape_of(&s.kernel)?);
                let mut q = vec![
                    arena.at(&s.kernel)?,
                    arena.at_opt(s.bias.as_ref())?,
                    u(so),
                    u(s.groups),
                    u(sh),
                    u(sw),
                    u(s.offset[0]),
                    u(s.offset[1]),
                    u(s.step[0]),
                    u(s.step[1]),
                    u(s.out_offset),
                ];
                q.resize(PLACE_SRC_STRIDE, 0);
                srcs.extend(q);
            }
            let mut r =
                vec![arena.at(out_kernel)?, arena.at_opt(out_bias.as_ref())?, u(o), u(per), u(kh), u(kw), u(*groups), u(*in_channels), 0, u(sources.len())];
            r.resize(PLACE_STRIDE, 0);
            ((r, srcs), o * per * kh * kw + o)
        }
        Step::Compose { first, second, in_channels, out_shape, groups, out_kernel, out_bias } => {
            let [m, ca, ah, aw] = dims4(&shape_of(&first.kernel)?);
            let [o, mb, bh, bw] = dims4(&shape_of(&second.kernel)?);
            let mut r = vec![
                arena.at(&first.kernel)?,
                arena.at_opt(first.bias.as_ref())?,
                u(first.groups),
                u(m),
                u(ca),
                u(ah),
                u(aw),
                arena.at(&second.kernel)?,
                arena.at_opt(second.bias.as_ref())?,
                u(second.groups),
                u(o),
                u(mb),
                u(bh),
                u(bw),
                u(*in_channels),
                u(*groups),
                arena.at(out_kernel)?,
                arena.at_opt(out_bias.as_ref())?,
            ];
            r.resize(COMPOSE_STRIDE, 0);
            let n: usize = out_shape.iter().product();
            ((r, vec![]), n + o)
        }
    })
}
