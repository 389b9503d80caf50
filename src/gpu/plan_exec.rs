//! Runs a FusionPlan on the GPU in one batch: every source tensor uploaded once into
//! one arena, one dispatch per (dependency level, primitive) driven by a descriptor
//! table of jobs, one submission, one download of every computed tensor. The number
//! of submissions does not depend on the network's depth.

use std::collections::{BTreeMap, HashMap};

use super::context::GpuContext;
use super::shaders::KernelId;
use super::split;
use crate::error::{Error, Result};
use crate::plan::{FusionPlan, Step};
use crate::tensor::Tensor;
use crate::weights::Weights;

use super::records::{ComposeJob, FillJob, FoldBnJob, PlaceJob, PlaceSourceJob, NONE};

/// Where each tensor lives in the arena (in f32 elements).
struct Arena {
    offset: HashMap<String, usize>,
    len: usize,
}

impl Arena {
    fn place(&mut self, name: &str, numel: usize) {
        // 64-element alignment keeps every tensor on a 256-byte boundary (a binding
        // offset needs it; place.wgsl reads sources as vec4s where they are 16-byte aligned).
        self.offset.insert(name.to_string(), self.len);
        self.len += split::padded(numel);
    }
    fn at(&self, name: &str) -> Result<u32> {
        let off = self.offset.get(name).ok_or_else(|| Error::tensor(name, "not in the GPU arena"))?;
        u32::try_from(*off).map_err(|_| Error::Limit { what: "arena offset (u32 elements)".into(), need: *off as u64, have: u32::MAX as u64 })
    }
    fn at_opt(&self, name: Option<&String>) -> Result<u32> {
        name.map_or(Ok(NONE), |n| self.at(n))
    }
}

/// A kernel's shape as OIHW (a Linear weight is `[O, I, 1, 1]`, a bias `[O, 1, 1, 1]`).
fn dims4(shape: &[usize]) -> Result<[usize; 4]> {
    match *shape {
        [o, i, h, w] => Ok([o, i, h, w]),
        [o, i] => Ok([o, i, 1, 1]),
        [o] => Ok([o, 1, 1, 1]),
        _ => Err(Error::Graph(format!("internal error: a plan kernel of shape {:?} (rank 1, 2 or 4 expected)", shape))),
    }
}

/// Arena bytes per queue submission (see `execute_plan_gpu_timed`).
const SUBMISSION_BYTES: u64 = 1 << 30;

/// Workgroups per job along x on a software adapter (lavapipe, llvmpipe, WARP).
const SOFTWARE_WORKGROUPS: usize = 32;

/// One step's job record (and, for `place`, its source records).
enum Job {
    FoldBn(FoldBnJob),
    Fill(FillJob),
    Place(PlaceJob, Vec<PlaceSourceJob>),
    Compose(ComposeJob),
}

/// Records of one (level, primitive) dispatch: the job table and the largest job.
#[derive(Default)]
struct Batch {
    /// The job records, as the shader's `jobs` array reads them.
    records: Vec<u32>,
    /// `place` source records (its `source_words`, six vec4s each), indexed by `first_source`.
    sources: Vec<PlaceSourceJob>,
    jobs: u32,
    max_elems: usize,
    /// Bytes the batch's steps read and write.
    bytes: u64,
    /// Floating-point operations of its steps (`KernelTime::flops`).
    flops: u64,
}

impl Batch {
    fn push(&mut self, job: Job, elems: usize) {
        match job {
            Job::FoldBn(j) => self.records.extend_from_slice(bytemuck::cast_slice(&[j])),
            Job::Fill(j) => self.records.extend_from_slice(bytemuck::cast_slice(&[j])),
            Job::Compose(j) => self.records.extend_from_slice(bytemuck::cast_slice(&[j])),
            Job::Place(mut j, srcs) => {
                j.first_source = self.sources.len() as u32;
                self.records.extend_from_slice(bytemuck::cast_slice(&[j]));
                self.sources.extend(srcs);
            }
        }
        self.jobs += 1;
        self.max_elems = self.max_elems.max(elems);
    }
}

/// Splits the plan's steps into independent groups: steps connected through a
/// tensor (one fused region) land in the same group.
fn components(plan: &FusionPlan) -> Vec<usize> {
    let n = plan.steps.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, s) in plan.steps.iter().enumerate() {
        for t in s.inputs().into_iter().chain(s.outputs()) {
            match owner.get(t) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
                None => {
                    owner.insert(t, i);
                }
            }
        }
    }
    (0..n).map(|i| find(&mut parent, i)).collect()
}

/// The regions of `components`' output in order of first step, and each one's steps
/// in plan order.
fn regions(comp: &[usize]) -> (Vec<usize>, HashMap<usize, Vec<usize>>) {
    let mut order: Vec<usize> = vec![];
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &c) in comp.iter().enumerate() {
        members
            .entry(c)
            .or_insert_with(|| {
                order.push(c);
                vec![]
            })
            .push(i);
    }
    (order, members)
}

/// Every tensor the `steps` of one region read or write, each once.
fn region_tensors<'p>(plan: &'p FusionPlan, steps: &[usize]) -> Vec<&'p str> {
    let mut tensors: Vec<&str> = vec![];
    for &i in steps {
        for t in plan.steps[i].inputs().into_iter().chain(plan.steps[i].outputs()) {
            if !tensors.contains(&t) {
                tensors.push(t);
            }
        }
    }
    tensors
}

/// Arena elements a region's tensors take in a window.
fn region_need(tensors: &[&str], numel_of: &dyn Fn(&str) -> Result<usize>) -> Result<usize> {
    tensors.iter().try_fold(0usize, |sum, t| Ok(sum + split::padded(numel_of(t)?)))
}

/// Largest window, in f32 elements: one storage binding (and one buffer).
fn window_limit(ctx: &GpuContext) -> usize {
    (ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size) / 4).min(u32::MAX as u64) as usize
}

/// A window with its dispatches by (dependency level, kernel).
type WindowJobs = (Window, BTreeMap<(usize, KernelId), Batch>);

/// One arena buffer, at most one storage binding large, holding whole components.
struct Window {
    arena: Arena,
    steps: Vec<usize>,
    /// Computed tensors, in arena order, and where that region starts.
    computed: Vec<(String, Vec<usize>)>,
    computed_start: usize,
    /// Elements the window will hold once its computed tensors are placed.
    planned: usize,
}

/// Executes `plan` on the GPU; returns every computed tensor by name.
///
/// Independent fused regions are packed into windows of at most one storage binding
/// (`max_storage_buffer_binding_size`, 128 MiB on lavapipe), each its own buffer, so
/// models of any size fuse; windows share a submission up to 1 GiB of arenas.
pub fn execute_plan_gpu(ctx: &GpuContext, plan: &FusionPlan, weights: &Weights) -> Result<HashMap<String, Tensor>> {
    execute_plan_gpu_timed(ctx, plan, weights).map(|(out, _)| out)
}

/// Where the time of one GPU plan execution went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuTiming {
    /// Upload, compute, download and host work, as the caller sees it.
    pub wall_ms: f64,
    /// The compute passes alone, from timestamp queries (None where the adapter has
    /// no TIMESTAMP_QUERY).
    pub compute_ms: Option<f64>,
    /// Per kernel: its passes' time (timestamps) and the bytes its jobs read and
    /// write; empty without timestamps.
    pub kernels: Vec<KernelTime>,
}

/// One kernel's share of a plan execution.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    /// The kernel (`place`, `fold_bn`, ...).
    pub kernel: &'static str,
    /// Its compute passes, summed, from timestamps.
    pub ms: f64,
    /// Bytes its jobs read (sources) and write (results), each counted once.
    pub bytes: u64,
    /// Dispatches (one per dependency level it appears in).
    pub dispatches: usize,
    /// Floating-point operations of a compute-bound kernel (`compose`: 2 per
    /// multiply-add of its composed kernels and biases), so its GFLOP/s can be put
    /// beside the conv forward's; 0 for the kernels bound by memory traffic.
    pub flops: u64,
}

/// `execute_plan_gpu`, also returning wall and timestamp-measured compute time.
pub fn execute_plan_gpu_timed(ctx: &GpuContext, plan: &FusionPlan, weights: &Weights) -> Result<(HashMap<String, Tensor>, GpuTiming)> {
    execute_plan_gpu_bounded(ctx, plan, weights, SUBMISSION_BYTES)
}

/// `execute_plan_gpu_timed` with at most `submission_bytes` of arena windows per
/// queue submission (at least one window each): for callers that bound device and
/// staging memory more tightly than the default 1 GiB.
pub fn execute_plan_gpu_bounded(ctx: &GpuContext, plan: &FusionPlan, weights: &Weights, submission_bytes: u64) -> Result<(HashMap<String, Tensor>, GpuTiming)> {
    let started = std::time::Instant::now();
    plan.check_sources(weights)?;
    let (source_plan, split) = (plan, cut_oversized_regions(ctx, plan, weights)?);
    let (plan, weights) = match &split {
        Some(s) => (&s.plan, &s.weights),
        None => (plan, weights),
    };
    let out_shapes = plan.output_shapes(weights)?;
    let shape_of = |n: &str| -> Result<Vec<usize>> { out_shapes.get(n).cloned().map_or_else(|| Ok(weights.get(n)?.shape().to_vec()), Ok) };
    let windows = pack_windows(ctx, plan, &out_shapes, &shape_of)?;
    let batches = batch_jobs(plan, &windows, &shape_of)?;
    tracing::debug!(windows = windows.len(), steps = plan.steps.len(), "GPU plan");
    // Windows go in submissions of at most SUBMISSION_BYTES of arena each (one, for
    // any model that size): device buffers, their upload staging and the readback
    // are then bounded by the submission, not the model (a 1e9-parameter model's
    // 7.6 GB of arenas in one submission exhausted a 24 GB host on lavapipe).
    let mut groups: Vec<Vec<WindowJobs>> = vec![];
    let mut group_bytes = 0u64;
    for (w, b) in windows.into_iter().zip(batches) {
        let bytes = w.arena.len as u64 * 4;
        if groups.is_empty() || group_bytes + bytes > submission_bytes {
            groups.push(vec![]);
            group_bytes = 0;
        }
        group_bytes += bytes;
        groups.last_mut().expect("pushed").push((w, b));
    }
    let mut out = HashMap::new();
    let mut compute_ms: Option<f64> = Some(0.0);
    let mut kernels: Vec<KernelTime> = vec![];
    for group in groups {
        let (ms, ks) = run_submission(ctx, weights, &out_shapes, group, &mut out)?;
        compute_ms = compute_ms.zip(ms).map(|(a, b)| a + b);
        for k in ks {
            match kernels.iter_mut().find(|x| x.kernel == k.kernel) {
                Some(x) => {
                    x.ms += k.ms;
                    x.bytes += k.bytes;
                    x.flops += k.flops;
                    x.dispatches += k.dispatches;
                }
                None => kernels.push(k),
            }
        }
    }
    if let Some(s) = &split {
        s.join(&mut out)?;
    }
    source_plan.check_outputs(&out)?;
    Ok((out, GpuTiming { wall_ms: started.elapsed().as_secs_f64() * 1e3, compute_ms, kernels }))
}

/// The plan with its merges over one window cut by output channel (`split`), or
/// `None` when every region fits.
fn cut_oversized_regions(ctx: &GpuContext, plan: &FusionPlan, weights: &Weights) -> Result<Option<split::Split>> {
    let out_shapes = plan.output_shapes(weights)?;
    let numel_of = |n: &str| -> Result<usize> { out_shapes.get(n).map_or_else(|| weights.get(n).map(|t| t.numel()), |s| Ok(s.iter().product())) };
    let comp = components(plan);
    let (_, members) = regions(&comp);
    let mut need = HashMap::with_capacity(members.len());
    for (c, steps) in &members {
        need.insert(*c, region_need(&region_tensors(plan, steps), &numel_of)?);
    }
    let cut = split::split_oversized(plan, weights, &comp, &need, window_limit(ctx))?;
    if let Some(s) = &cut {
        tracing::info!(steps = plan.steps.len(), cut_steps = s.plan.steps.len(), "GPU plan: merges over one storage binding cut by output channel");
    }
    Ok(cut)
}

/// Uploads, computes and reads back one submission's windows, adding their computed
/// tensors to `out`; returns the compute time and per-kernel times from timestamps.
fn run_submission(
    ctx: &GpuContext,
    weights: &Weights,
    out_shapes: &BTreeMap<String, Vec<usize>>,
    group: Vec<WindowJobs>,
    out: &mut HashMap<String, Tensor>,
) -> Result<(Option<f64>, Vec<KernelTime>)> {
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("plan") });
    let dispatches: usize = group.iter().map(|(_, b)| b.len()).sum();
    let timer = Timer::new(ctx, dispatches);
    let mut buffers = Vec::with_capacity(group.len());
    let mut timed: Vec<(KernelId, u64, u64)> = vec![];
    let mut windows = Vec::with_capacity(group.len());
    for (wi, (w, batches)) in group.into_iter().enumerate() {
        let buf = ctx.empty(&format!("arena{}", wi), w.arena.len)?;
        for (t, &off) in &w.arena.offset {
            if !out_shapes.contains_key(t) {
                ctx.queue.write_buffer(&buf, off as u64 * 4, bytemuck::cast_slice(weights.get(t)?.data()));
            }
        }
        for ((_, kernel), b) in batches {
            let timestamp_writes = timer.writes(timed.len());
            timed.push((kernel, b.bytes, b.flops));
            record_dispatch(ctx, &mut encoder, &buf, kernel, &b, timestamp_writes)?;
        }
        buffers.push(buf);
        windows.push(w);
    }
    let mut ranges: Vec<(&wgpu::Buffer, u64, u64)> =
        windows.iter().zip(&buffers).map(|(w, b)| (b, w.computed_start as u64, (w.arena.len - w.computed_start) as u64)).collect();
    let resolved = timer.resolve(ctx, &mut encoder);
    if let Some((b, words)) = &resolved {
        // u64 ticks, read back through the f32 path as two words each.
        ranges.push((b, 0, *words));
    }
    let mut data = ctx.submit_and_read(encoder, &ranges)?;
    drop(buffers);
    let ticks: Option<Vec<u64>> = resolved.map(|_| bytemuck::cast_slice(&data.pop().expect("pushed the timestamp range")).to_vec());
    let times = timer.times(ctx, ticks.as_deref(), &timed);
    for (w, all) in windows.into_iter().zip(data) {
        for (name, shape) in w.computed {
            let off = w.arena.offset[&name] - w.computed_start;
            let n: usize = shape.iter().product();
            out.insert(name, Tensor::from_parts(shape, all[off..off + n].to_vec()));
        }
    }
    Ok(times)
}

/// Packs the plan's independent regions (`components`) into windows of at most one
/// storage binding each: sources first, computed tensors after, so each window
/// downloads one range.
fn pack_windows(
    ctx: &GpuContext,
    plan: &FusionPlan,
    out_shapes: &BTreeMap<String, Vec<usize>>,
    shape_of: &dyn Fn(&str) -> Result<Vec<usize>>,
) -> Result<Vec<Window>> {
    let numel_of = |n: &str| -> Result<usize> { Ok(shape_of(n)?.iter().product()) };
    let (order, members) = regions(&components(plan));
    let limit = window_limit(ctx);
    let mut windows: Vec<Window> = vec![];
    for c in order {
        let steps = &members[&c];
        let tensors = region_tensors(plan, steps);
        let need = region_need(&tensors, &numel_of)?;
        if need > limit {
            let what = format!(
                "max_storage_buffer_binding_size (the fused region writing `{}`, which cannot be cut by output channel)",
                plan.steps[steps[0]].outputs()[0]
            );
            return Err(Error::Limit { what, need: need as u64 * 4, have: limit as u64 * 4 });
        }
        if windows.last().is_none_or(|w| w.planned + need > limit) {
            windows.push(Window { arena: Arena { offset: HashMap::new(), len: 0 }, steps: vec![], computed: vec![], computed_start: 0, planned: 0 });
        }
        let w = windows.last_mut().expect("pushed");
        w.planned += need;
        w.steps.extend(steps);
        for t in tensors.iter().filter(|t| !out_shapes.contains_key(**t)) {
            w.arena.place(t, numel_of(t)?);
        }
        for t in tensors.iter().filter(|t| out_shapes.contains_key(**t)) {
            w.computed.push((t.to_string(), out_shapes[*t].clone()));
        }
    }
    for w in &mut windows {
        w.computed_start = w.arena.len;
        for (t, shape) in &w.computed {
            w.arena.place(t, shape.iter().product());
        }
    }
    Ok(windows)
}

/// Per window, its steps' job records by (dependency level, kernel), in level order:
/// one dispatch each.
fn batch_jobs(plan: &FusionPlan, windows: &[Window], shape_of: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<Vec<BTreeMap<(usize, KernelId), Batch>>> {
    let levels = plan.levels();
    let mut out = Vec::with_capacity(windows.len());
    for w in windows {
        let mut batches: BTreeMap<(usize, KernelId), Batch> = BTreeMap::new();
        for &i in &w.steps {
            let step = &plan.steps[i];
            let kernel = kernel_of(step);
            let (job, elems) = encode(step, &w.arena, shape_of)?;
            let mut bytes = 0usize;
            for t in step.inputs().into_iter().chain(step.outputs()) {
                bytes += shape_of(t)?.iter().product::<usize>() * 4;
            }
            let b = batches.entry((levels[i], kernel)).or_default();
            b.push(job, elems);
            b.bytes += bytes as u64;
            b.flops += compose_flops(step, shape_of)?;
        }
        out.push(batches);
    }
    Ok(out)
}

/// Records one batch as one dispatch in its own compute pass over arena `buf`.
fn record_dispatch(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    buf: &wgpu::Buffer,
    kernel: KernelId,
    b: &Batch,
    timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
) -> Result<()> {
    if b.jobs > 65535 {
        return Err(Error::Limit { what: "jobs per dispatch".into(), need: b.jobs as u64, have: 65535 });
    }
    let k = ctx.kernel(kernel)?;
    // Every kernel strides over what a smaller grid leaves. A software adapter runs
    // each workgroup on a CPU thread: a few dozen per job keep its cores busy, and
    // each one more only costs start-up (measured on lavapipe: RepVGG-A0's plan
    // 1036 -> 638 ms, MobileOne-S0's 283 -> 183 ms).
    let cap = if ctx.is_software() { SOFTWARE_WORKGROUPS } else { 65535 };
    // A team of `lanes` `place` invocations writes a slice of up to `run` elements
    // (place.wgsl's RUN and LANES, set per adapter); the other kernels one element per
    // invocation per pass.
    let place = ctx.place_shape();
    let invocations = if kernel == KernelId::Place { (b.max_elems * place.lanes).div_ceil(place.run) } else { b.max_elems };
    let x = invocations.div_ceil(256).clamp(1, cap) as u32;
    let table = ctx.table(kernel.name(), &b.records);
    let sources = (kernel == KernelId::Place).then(|| ctx.table("place sources", bytemuck::cast_slice(&b.sources)));
    let mut bindings = vec![buf.as_entire_binding(), table.as_entire_binding()];
    bindings.extend(sources.as_ref().map(|t| t.as_entire_binding()));
    if matches!(kernel, KernelId::Place | KernelId::Compose | KernelId::FoldBn) {
        // The kernel's vec4 view of the same arena: read at sources, written only
        // where an invocation owns whole vec4s of an output that no scalar access
        // touches in the dispatch (see place.wgsl's note at `sources4`).
        bindings.push(buf.as_entire_binding());
    }
    let bg = ctx.bind_group(&k, &bindings);
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.name()), timestamp_writes });
    pass.set_pipeline(&k.pipeline);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(x, b.jobs, 1);
    Ok(())
}

/// Bit s set when source s (of the first 32) has the destination's window with
/// contiguous channels (place.wgsl's `same_window`): the only sources its register
/// sum can take, so it reads no other record while looking for them (RepVGG's 1x1
/// and identity sources, MobileOne's 1x1 scale branch).
fn same_window_mask(sources: &[PlaceSourceJob], kh: usize, kw: usize) -> u32 {
    let same = |s: &PlaceSourceJob| (s.kh as usize, s.kw as usize) == (kh, kw) && (s.offset_h, s.offset_w, s.step_h, s.step_w, s.in_stride) == (0, 0, 1, 1, 1);
    sources.iter().take(32).enumerate().filter(|(_, s)| same(s)).fold(0, |m, (i, _)| m | 1 << i)
}

/// The 1x1 sources (contiguous channels) that `place.wgsl`'s `sum_groups` adds in its
/// register sum: four channels of a kernel of `taps` elements are `taps` vec4s, and
/// with taps % 4 == 1 and the source's tap p % 4 == 0 channel j's tap is lane j of
/// one of them (an odd square kernel's centre). Not into a 1x1 kernel: there a
/// group is one vec4, and the per-group set-up made MobileOne-S0's pointwise place
/// slower on lavapipe (6.4-7.3 -> 8.5-9.0 ms); its 1x1 sources of a whole row are
/// summed as they are. Only the first 32 sources have a bit.
fn centre_mask(sources: &[PlaceSourceJob], kh: usize, kw: usize) -> u32 {
    let taps = kh * kw;
    let fits = |s: &PlaceSourceJob| {
        let (h, w) = (s.offset_h as usize, s.offset_w as usize);
        (s.kh, s.kw, s.in_stride) == (1, 1, 1) && h < kh && w < kw && taps > 1 && taps % 4 == 1 && (h * kw + w).is_multiple_of(4)
    };
    sources.iter().take(32).enumerate().filter(|(_, s)| fits(s)).fold(0, |m, (i, _)| m | 1 << i)
}

/// Timestamp queries around the plan's dispatches: a pair per dispatch, so each
/// kernel's time is known (and the plan's: the first start to the last end). A
/// query set holds at most 4096 queries (wgpu); plans with more dispatches are timed
/// as a whole only.
struct Timer {
    queries: Option<wgpu::QuerySet>,
    per_pass: bool,
    dispatches: usize,
    /// Queries in the set: a pair per dispatch, or one pair for the whole plan.
    count: u32,
}

impl Timer {
    fn new(ctx: &GpuContext, dispatches: usize) -> Timer {
        let per_pass = 2 * dispatches.max(1) <= 4096;
        let count = if per_pass { 2 * dispatches.max(1) as u32 } else { 2 };
        let queries =
            ctx.timestamps.then(|| ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("plan time"), ty: wgpu::QueryType::Timestamp, count }));
        Timer { queries, per_pass, dispatches, count }
    }

    /// The timestamp writes of dispatch `q`.
    fn writes(&self, q: usize) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let qs = self.queries.as_ref()?;
        Some(if self.per_pass {
            wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(2 * q as u32),
                end_of_pass_write_index: Some(2 * q as u32 + 1),
            }
        } else {
            wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: (q == 0).then_some(0),
                end_of_pass_write_index: (q + 1 == self.dispatches).then_some(1),
            }
        })
    }

    /// Resolves the queries into a buffer to read back (and its length in f32 words).
    fn resolve(&self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) -> Option<(wgpu::Buffer, u64)> {
        let q = self.queries.as_ref()?;
        let n = self.count;
        let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("plan time"),
            size: n as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        encoder.resolve_query_set(q, 0..n, &b, 0);
        Some((b, 2 * n as u64))
    }

    /// Plan compute time and per-kernel times from the resolved `ticks`.
    fn times(&self, ctx: &GpuContext, ticks: Option<&[u64]>, timed: &[(KernelId, u64, u64)]) -> (Option<f64>, Vec<KernelTime>) {
        let Some(ticks) = ticks else { return (None, vec![]) };
        if timed.is_empty() {
            return (Some(0.0), vec![]);
        }
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 * ctx.queue.get_timestamp_period() as f64 / 1e6;
        if !self.per_pass {
            return (Some(ms(ticks[0], ticks[1])), vec![]);
        }
        let mut kernels: Vec<KernelTime> = vec![];
        for (k, (kernel, bytes, flops)) in timed.iter().enumerate() {
            let t = ms(ticks[2 * k], ticks[2 * k + 1]);
            match kernels.iter_mut().find(|x| x.kernel == kernel.name()) {
                Some(x) => {
                    x.ms += t;
                    x.bytes += bytes;
                    x.flops += flops;
                    x.dispatches += 1;
                }
                None => kernels.push(KernelTime { kernel: kernel.name(), ms: t, bytes: *bytes, dispatches: 1, flops: *flops }),
            }
        }
        (Some(ms(ticks[0], ticks[2 * timed.len() - 1])), kernels)
    }
}

/// The kernel that runs a step.
fn kernel_of(step: &Step) -> KernelId {
    match step {
        Step::FoldBn { .. } => KernelId::FoldBn,
        Step::BnToConv { .. } | Step::Dirac { .. } | Step::AvgPoolKernel { .. } => KernelId::Fill,
        Step::Place { .. } => KernelId::Place,
        Step::Compose { .. } => KernelId::Compose,
    }
}

/// Encodes one step as its job record, and the number of elements it writes.
fn encode(step: &Step, arena: &Arena, shape_of: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<(Job, usize)> {
    let u = |x: usize| x as u32;
    Ok(match step {
        Step::FoldBn { kernel, bias, bn, out_kernel, out_bias } => {
            let k = shape_of(kernel)?;
            let o = k[0];
            let row: usize = k.iter().skip(1).product();
            let job = FoldBnJob {
                kernel: arena.at(kernel)?,
                bias: arena.at_opt(bias.as_ref())?,
                gamma: arena.at(&bn.gamma)?,
                beta: arena.at(&bn.beta)?,
                mean: arena.at(&bn.mean)?,
                variance: arena.at(&bn.var)?,
                out_kernel: arena.at(out_kernel)?,
                out_bias: arena.at(out_bias)?,
                out_channels: u(o),
                row: u(row),
                eps: bn.eps,
            };
            // fold_bn.wgsl takes rows a whole number of vec4s long four elements at a
            // time, other rows up to its ROW_PER_INVOCATION (64) whole, longer ones
            // element by element.
            let invocations = if row.is_multiple_of(4) {
                o * row / 4 + o
            } else if row <= 64 {
                o
            } else {
                o * row + o
            };
            (Job::FoldBn(job), invocations)
        }
        Step::BnToConv { bn, channels, out_kernel, out_bias } => {
            let job = FillJob {
                mode: 2,
                channels: u(*channels),
                per: 1,
                kh: 1,
                kw: 1,
                out_kernel: arena.at(out_kernel)?,
                out_bias: arena.at(out_bias)?,
                gamma: arena.at(&bn.gamma)?,
                beta: arena.at(&bn.beta)?,
                mean: arena.at(&bn.mean)?,
                variance: arena.at(&bn.var)?,
                eps: bn.eps,
            };
            (Job::Fill(job), 2 * channels)
        }
        Step::Dirac { channels, groups, kernel, out_kernel } => {
            if kernel[0] % 2 == 0 || kernel[1] % 2 == 0 || *groups == 0 || !channels.is_multiple_of(*groups) {
                return Err(Error::tensor(out_kernel, format!("dirac needs an odd kernel and groups dividing channels, got {:?} / {}", kernel, groups)));
            }
            let per = channels / groups;
            let job = FillJob {
                mode: 0,
                channels: u(*channels),
                per: u(per),
                kh: u(kernel[0]),
                kw: u(kernel[1]),
                out_kernel: arena.at(out_kernel)?,
                out_bias: NONE,
                ..fill_no_bn()
            };
            (Job::Fill(job), channels * per * kernel[0] * kernel[1])
        }
        Step::AvgPoolKernel { channels, kernel, out_kernel } => {
            let job = FillJob {
                mode: 1,
                channels: u(*channels),
                per: 1,
                kh: u(kernel[0]),
                kw: u(kernel[1]),
                out_kernel: arena.at(out_kernel)?,
                out_bias: NONE,
                ..fill_no_bn()
            };
            (Job::Fill(job), channels * kernel[0] * kernel[1])
        }
        Step::Place { out_shape, groups, in_channels, sources, out_kernel, out_bias } => {
            let [o, per, kh, kw] = dims4(out_shape)?;
            let mut srcs = Vec::with_capacity(sources.len());
            for s in sources {
                let [so, si, sh, sw] = dims4(&shape_of(&s.kernel)?)?;
                let m = s.map;
                let (gamma, beta, mean, variance, eps) = match &s.bn {
                    Some(bn) => (arena.at(&bn.gamma)?, arena.at(&bn.beta)?, arena.at(&bn.mean)?, arena.at(&bn.var)?, bn.eps),
                    None => (NONE, NONE, NONE, NONE, 0.0),
                };
                srcs.push(PlaceSourceJob {
                    kernel: arena.at(&s.kernel)?,
                    bias: arena.at_opt(s.bias.as_ref())?,
                    out_channels: u(so),
                    groups: u(s.groups),
                    kh: u(sh),
                    kw: u(sw),
                    offset_h: u(s.offset[0]),
                    offset_w: u(s.offset[1]),
                    step_h: u(s.step[0]),
                    step_w: u(s.step[1]),
                    out_offset: u(s.out_offset),
                    out_stride: u(m.out_stride),
                    in_offset: u(m.in_offset),
                    in_stride: u(m.in_stride),
                    scale: m.scale,
                    in_per_group: u(si),
                    gamma,
                    beta,
                    mean,
                    variance,
                    eps,
                    ..Default::default()
                });
            }
            let job = PlaceJob {
                out_kernel: arena.at(out_kernel)?,
                out_bias: arena.at_opt(out_bias.as_ref())?,
                out_channels: u(o),
                per: u(per),
                kh: u(kh),
                kw: u(kw),
                groups: u(*groups),
                in_channels: u(*in_channels),
                // Set by `Batch::push`, where the batch's source list is known.
                first_source: 0,
                sources: u(sources.len()),
                summable: same_window_mask(&srcs, kh, kw),
                centre: centre_mask(&srcs, kh, kw),
            };
            (Job::Place(job, srcs), o * per * kh * kw + o)
        }
        Step::Compose { first, second, in_channels, out_shape, groups, out_kernel, out_bias } => {
            let [m, ca, ah, aw] = dims4(&shape_of(&first.kernel)?)?;
            let [o, mb, bh, bw] = dims4(&shape_of(&second.kernel)?)?;
            let job = ComposeJob {
                first_kernel: arena.at(&first.kernel)?,
                first_bias: arena.at_opt(first.bias.as_ref())?,
                first_groups: u(first.groups),
                mid: u(m),
                first_per: u(ca),
                first_kh: u(ah),
                first_kw: u(aw),
                second_kernel: arena.at(&second.kernel)?,
                second_bias: arena.at_opt(second.bias.as_ref())?,
                second_groups: u(second.groups),
                out_channels: u(o),
                second_per: u(mb),
                second_kh: u(bh),
                second_kw: u(bw),
                in_channels: u(*in_channels),
                groups: u(*groups),
                out_kernel: arena.at(out_kernel)?,
                out_bias: arena.at_opt(out_bias.as_ref())?,
                tile: compose_tile(o, *groups, second.groups, *in_channels / (*groups).max(1), ca),
                diagonal: u32::from(compose_is_diagonal([m, ca, ah, aw], first.groups, [o, mb, bh, bw], second.groups, *in_channels, *groups)),
            };
            let n: usize = out_shape.iter().product();
            let per_invocation = if job.diagonal == 1 { 4 } else { (job.tile * job.tile) as usize };
            (Job::Compose(job), n / per_invocation + o)
        }
    })
}

/// The tile edge `compose.wgsl` works in: 4 when every 4x4 block of (output channel,
/// input channel) pairs lies in one group of the composed kernel, of the second conv
/// (by output channel) and of the first (by input channel), so the block shares one
/// range of mid channels; each mid then costs 8 loads for 16 products instead of 2
/// for 1 (a dense DBB 1x1->3x3 composition was 0.05 GB/s one element at a time).
/// Otherwise 1, one element at a time.
fn compose_tile(out_channels: usize, groups: usize, second_groups: usize, per: usize, first_per: usize) -> u32 {
    let whole = |n: usize| n.is_multiple_of(4);
    let blocks = groups > 0 && second_groups > 0 && whole(out_channels / groups) && whole(out_channels / second_groups);
    if blocks && whole(per) && whole(first_per) {
        4
    } else {
        1
    }
}

/// Whether `compose.wgsl` may take the composition as a diagonal: a 1x1 first kernel
/// with one mid channel per group reading one input channel (a batch norm folded
/// into the conv after it, RepViT's and LeViT's BN-then-1x1), composed into the
/// second kernel's own groups, so out[o, c, t] = second[o, c, t] * first[g * per + c]
/// with the composed and second kernels laid out alike; rows a whole number of vec4s
/// long, so four elements share a row. Element by element, with ~8 integer divisions
/// each, RepViT-M1's such compositions took most of its 51 ms `compose` on lavapipe.
fn compose_is_diagonal(first: [usize; 4], first_groups: usize, second: [usize; 4], second_groups: usize, in_channels: usize, groups: usize) -> bool {
    let [m, ca, ah, aw] = first;
    let [_, mb, bh, bw] = second;
    [m, ca, ah, aw] == [first_groups, 1, 1, 1]
        && m == in_channels
        && groups == second_groups
        && groups > 0
        && in_channels / groups == mb
        && (mb * bh * bw).is_multiple_of(4)
}

/// Floating-point operations of a `Compose` step as `compose.wgsl` does them (2 per
/// multiply-add: each composed value sums the mids that read its input channel and
/// feed its output channel, each bias the second kernel's taps times the first
/// bias); 0 for the other steps.
fn compose_flops(step: &Step, shape_of: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<u64> {
    let Step::Compose { first, second, in_channels, out_shape, groups, out_bias, .. } = step else { return Ok(0) };
    let [m, ca, ..] = dims4(&shape_of(&first.kernel)?)?;
    let [o_count, mb, bh, bw] = dims4(&shape_of(&second.kernel)?)?;
    let taps = out_shape.iter().skip(2).product::<usize>().max(1);
    let (groups, gb, ga) = ((*groups).max(1), second.groups.max(1), first.groups.max(1));
    let (per, mids_a) = (in_channels / groups, m / ga);
    let mut macs = 0u64;
    for o in 0..o_count {
        let g_b = o / (o_count / gb).max(1);
        let (lo_b, hi_b) = (g_b * mb, g_b * mb + mb);
        let first_c = (o / (o_count / groups).max(1)) * per;
        // The element's input channels, in runs that share one group of the first conv.
        let mut c = first_c;
        while c < first_c + per {
            let g_a = c / ca.max(1);
            let run_end = ((g_a + 1) * ca).min(first_c + per);
            let overlap = hi_b.min(g_a * mids_a + mids_a).saturating_sub(lo_b.max(g_a * mids_a));
            macs += ((run_end - c) * overlap * taps) as u64;
            c = run_end;
        }
    }
    if out_bias.is_some() && first.bias.is_some() {
        macs += (o_count * mb * bh * bw) as u64;
    }
    Ok(2 * macs)
}

/// A fill job's BN fields when it has no batch norm.
fn fill_no_bn() -> FillJob {
    FillJob { gamma: NONE, beta: NONE, mean: NONE, variance: NONE, ..FillJob::default() }
}

#[cfg(test)]
mod tests {
    /// The dispatch sizes `place` by the elements a team of invocations writes; those
    /// numbers are the shader's `RUN` and `LANES` (their defaults are the GPU shape,
    /// overridden per adapter), so the two must not drift apart.
    #[test]
    fn compose_flops_count_each_mid_that_links_an_input_to_an_output_channel() {
        use crate::plan::{ConvOperand, Step};
        // (first [M, C/ga, kh, kw], ga, second [O, M/gb, kh, kw], gb, in C, groups)
        let cases = [
            ([12, 8, 1, 1], 1, [8, 12, 3, 3], 1, 8, 1),
            ([16, 4, 1, 1], 2, [8, 8, 3, 3], 2, 8, 2),
            ([8, 1, 1, 1], 8, [4, 4, 1, 1], 2, 8, 1),
            ([12, 3, 3, 3], 2, [8, 12, 1, 1], 1, 6, 1),
        ];
        for (a, ga, b, gb, c_in, groups) in cases {
            let taps = if a[2] == 1 { b[2] * b[3] } else { a[2] * a[3] };
            let (o_count, m) = (b[0], a[0]);
            let per = c_in / groups;
            let step = Step::Compose {
                first: ConvOperand { kernel: "a".into(), bias: Some("ab".into()), groups: ga },
                second: ConvOperand { kernel: "b".into(), bias: None, groups: gb },
                in_channels: c_in,
                out_shape: vec![o_count, per, taps, 1],
                groups,
                out_kernel: "k".into(),
                out_bias: Some("kb".into()),
            };
            let shape_of = |n: &str| Ok(if n == "a" { a.to_vec() } else { b.to_vec() });
            // Brute force: a mid links (o, c) when it is among the second conv's
            // inputs of o's group and the first conv's outputs of c's group.
            let mut macs = 0;
            for o in 0..o_count {
                for cl in 0..per {
                    let c = (o / (o_count / groups)) * per + cl;
                    macs += (0..m).filter(|&mid| mid / (m / gb) == o / (o_count / gb) && mid / (m / ga) == c / (c_in / ga)).count() * taps;
                }
            }
            macs += o_count * b[1] * b[2] * b[3];
            assert_eq!(super::compose_flops(&step, &shape_of).unwrap(), 2 * macs as u64, "{:?} {:?}", a, b);
        }
    }

    #[test]
    fn compose_takes_a_diagonal_first_kernel_into_the_second_groups_only() {
        use super::compose_is_diagonal;
        // A batch norm (8 channels, 8 groups, one mid each) before a dense and before
        // a two-group 1x1, and before a 3x3 of rows 8 * 9 long.
        assert!(compose_is_diagonal([8, 1, 1, 1], 8, [16, 8, 1, 1], 1, 8, 1));
        assert!(compose_is_diagonal([8, 1, 1, 1], 8, [16, 4, 1, 1], 2, 8, 2));
        assert!(compose_is_diagonal([8, 1, 1, 1], 8, [16, 8, 3, 3], 1, 8, 1));
        // Not: two mids per group, a 3x3 first, composed groups unlike the second's,
        // rows of 6 (not whole vec4s).
        assert!(!compose_is_diagonal([8, 1, 1, 1], 4, [16, 8, 1, 1], 1, 8, 1));
        assert!(!compose_is_diagonal([8, 1, 3, 3], 8, [16, 8, 1, 1], 1, 8, 1));
        assert!(!compose_is_diagonal([8, 1, 1, 1], 8, [16, 8, 1, 1], 1, 8, 2));
        assert!(!compose_is_diagonal([6, 1, 1, 1], 6, [16, 6, 1, 1], 1, 6, 1));
    }

    #[test]
    fn compose_tiles_only_blocks_inside_one_group_of_every_conv() {
        use super::compose_tile;
        // Dense, and two groups of 4 channels each side: tiles.
        assert_eq!(compose_tile(8, 1, 1, 8, 12), 4);
        assert_eq!(compose_tile(8, 2, 2, 4, 4), 4);
        // 6 outputs per group, 6 inputs per group, a diagonal first conv (one input
        // channel per mid), 2 outputs per second-conv group: one element at a time.
        assert_eq!(compose_tile(12, 2, 1, 4, 4), 1);
        assert_eq!(compose_tile(8, 1, 1, 6, 6), 1);
        assert_eq!(compose_tile(8, 1, 1, 8, 1), 1);
        assert_eq!(compose_tile(8, 1, 4, 8, 8), 1);
    }

    #[test]
    fn place_shape_matches_the_shader() {
        use super::super::shaders::{validate, KernelId, PlaceShape, PLACE};
        let module = validate("place", PLACE).unwrap();
        let default = |name: &str| {
            let o = module.overrides.iter().find(|(_, o)| o.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("place.wgsl declares {}", name)).1;
            let naga::Expression::Literal(naga::Literal::U32(v)) = module.global_expressions[o.init.expect("a default")] else {
                panic!("{} is a u32 literal", name)
            };
            v as usize
        };
        let gpu = PlaceShape::for_adapter(false);
        assert_eq!((default("RUN"), default("LANES")), (gpu.run, gpu.lanes));
        assert_eq!(KernelId::Place.overrides(PlaceShape { run: 77, lanes: 4 }), vec![("RUN", 77.0), ("LANES", 4.0)]);
        assert!(PlaceShape::checked(64, 3).is_err() && PlaceShape::checked(0, 4).is_err() && PlaceShape::checked(64, 512).is_err());
    }

    /// Only sources with the destination's window, unshifted, undilated and with
    /// contiguous channels are offered to the register sum, and only the first 32.
    #[test]
    fn summable_sources_are_those_with_the_destination_window() {
        use super::{same_window_mask, PlaceSourceJob};
        let src = |kh, kw, offset_h, step_w, in_stride| PlaceSourceJob { kh, kw, offset_h, step_w, in_stride, step_h: 1, ..Default::default() };
        let plain = src(3, 3, 0, 1, 1);
        let sources = [plain, src(1, 1, 1, 1, 1), src(3, 3, 1, 1, 1), src(3, 3, 0, 2, 1), src(3, 3, 0, 1, 2), src(1, 3, 0, 1, 1), plain];
        assert_eq!(same_window_mask(&sources, 3, 3), 0b100_0001);
        assert_eq!(same_window_mask(&sources, 1, 1), 0);
        assert_eq!(same_window_mask(&vec![plain; 40], 3, 3), u32::MAX);
    }

    /// 1x1 sources at a tap that is lane j of a vec4 for each of four channels j
    /// (3x3 and 5x5 centres) are offered to `sum_groups`; off-centre taps, strided
    /// channels, wider sources, even windows and 1x1 destinations are not.
    #[test]
    fn centre_sources_are_1x1_at_a_tap_that_keeps_lanes() {
        use super::{centre_mask, PlaceSourceJob};
        let one = |offset_h, offset_w, in_stride| PlaceSourceJob { kh: 1, kw: 1, offset_h, offset_w, in_stride, step_h: 1, step_w: 1, ..Default::default() };
        let wide = PlaceSourceJob { kh: 3, kw: 3, in_stride: 1, step_h: 1, step_w: 1, ..Default::default() };
        let sources = [wide, one(1, 1, 1), one(0, 0, 1), one(1, 0, 1), one(1, 1, 2), one(2, 2, 1)];
        assert_eq!(centre_mask(&sources, 3, 3), 0b10_0110, "3x3: taps 4, 0 and 8; not tap 3");
        assert_eq!(centre_mask(&sources, 5, 5), 0b10_0100, "5x5: taps 0 and 12; not taps 6 and 5");
        assert_eq!(centre_mask(&[one(0, 0, 1)], 1, 1), 0);
        assert_eq!(centre_mask(&[one(1, 1, 1)], 2, 2), 0, "4 taps: lanes do not line up");
        assert_eq!(centre_mask(&vec![one(1, 1, 1); 40], 3, 3), u32::MAX);
    }
}
