//! One wgpu device for the process' work: adapter choice (WGPU_BACKEND,
//! WGPU_ADAPTER_NAME, WGPU_POWER_PREF as wgpu's own helpers read them), the adapter's
//! limits requested and recorded, a pipeline cache, one readback path, and every
//! `device.poll` bounded by a timeout (lavapipe can hang).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shaders::{self, KernelId};
use crate::error::{Error, Result};

/// How long a single wait on the GPU may take before we call it hung.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a binding slot holds, for explicit bind-group layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// Binding kinds of each kernel, in binding order (exhaustive: a new kernel does not
/// compile without its layout).
fn layout_of(k: KernelId) -> &'static [Bind] {
    use Bind::*;
    match k {
        KernelId::Fill => &[ReadWrite, Read],
        KernelId::FoldBn | KernelId::Compose => &[ReadWrite, Read, ReadWrite],
        KernelId::Place => &[ReadWrite, Read, Read, ReadWrite],
        KernelId::Conv2d | KernelId::Conv2dTiled | KernelId::Conv2dBlocked | KernelId::Linear | KernelId::Elementwise => {
            &[Uniform, Read, Read, Read, ReadWrite]
        }
        KernelId::Pool => &[Uniform, Read, ReadWrite],
        KernelId::Copy => &[Read, ReadWrite],
    }
}

/// The conv forward kernel for convs with several output channels per group; the
/// others (depthwise, tiny) always take the one-output-per-invocation kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ConvKernel {
    /// `conv2d_tiled.wgsl`: workgroup-memory tiles and barriers, for hardware GPUs.
    Tiled,
    /// `conv2d_blocked.wgsl`: register blocks, no barriers, for CPU adapters.
    Blocked,
}

impl ConvKernel {
    /// `REPFUSE_CONV_KERNEL` (`tiled` or `blocked`) when set, so both can be measured
    /// on one adapter; otherwise blocked on a CPU adapter, tiled on a GPU.
    fn for_adapter(info: &wgpu::AdapterInfo) -> Result<Self> {
        match std::env::var("REPFUSE_CONV_KERNEL").ok().as_deref() {
            Some("tiled") => Ok(ConvKernel::Tiled),
            Some("blocked") => Ok(ConvKernel::Blocked),
            Some(other) => Err(Error::Gpu(format!("REPFUSE_CONV_KERNEL is `{}`; expected `tiled` or `blocked`", other))),
            None if info.device_type == wgpu::DeviceType::Cpu => Ok(ConvKernel::Blocked),
            None => Ok(ConvKernel::Tiled),
        }
    }
}

pub struct Kernel {
    /// Which kernel (labels its bind groups).
    pub id: KernelId,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// An open wgpu device with its kernel cache; shared by plan execution and forward passes.
pub struct GpuContext {
    /// The logical device; buffers and pipelines are created on it.
    pub device: wgpu::Device,
    /// The device's queue; every submission goes through it.
    pub queue: wgpu::Queue,
    /// Name, backend and type of the adapter (software adapters steer `Backend::Auto` to the CPU).
    pub info: wgpu::AdapterInfo,
    /// The adapter's limits, checked before every allocation.
    pub limits: wgpu::Limits,
    /// Timestamp queries are supported, so compute time can be measured apart from transfers.
    pub timestamps: bool,
    /// Which kernel runs convs with several output channels per group.
    pub conv_kernel: ConvKernel,
    /// How `place` cuts its work (see `shaders::PlaceShape`, whose constructors keep
    /// it valid: the dispatch divides by it).
    place: shaders::PlaceShape,
    submissions: AtomicUsize,
    kernels: Mutex<HashMap<KernelId, Arc<Kernel>>>,
    /// Validation/out-of-memory errors and device loss, recorded instead of wgpu's
    /// default panic, and returned as `Error::Gpu` by the next readback.
    errors: Arc<Mutex<Vec<String>>>,
}

impl GpuContext {
    /// Opens the adapter the environment asks for (or the default one).
    pub fn new() -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(pick_adapter(&instance))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let features = if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("repfuse"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("requesting a device from {}: {}", info.name, e)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("device lost ({:?}): {}", reason, msg));
            }
        });
        let conv_kernel = ConvKernel::for_adapter(&info)?;
        let place = shaders::PlaceShape::for_adapter(info.device_type == wgpu::DeviceType::Cpu);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            timestamps,
            conv_kernel,
            place,
            submissions: AtomicUsize::new(0),
            kernels: Mutex::new(HashMap::new()),
            errors,
        })
    }

    /// This context with `kernel` running the convs (tests and benchmarks measure
    /// both kernels on one adapter).
    pub fn with_conv_kernel(mut self, kernel: ConvKernel) -> Self {
        self.conv_kernel = kernel;
        self
    }

    /// This context with `place` cut as `shape` (tests cover the other adapters'
    /// setting, slices split into many pieces, and teams of several sizes).
    pub fn with_place_shape(mut self, shape: shaders::PlaceShape) -> Self {
        self.place = shape;
        self.kernels.get_mut().map(|k| k.remove(&KernelId::Place)).ok();
        self
    }

    /// How `place` cuts its work on this context.
    pub fn place_shape(&self) -> shaders::PlaceShape {
        self.place
    }

    /// The first GPU error recorded since the last call, as an `Error`.
    pub fn take_error(&self) -> Result<()> {
        let first = {
            let mut v = self.errors.lock().map_err(|_| Error::Gpu("error log poisoned".into()))?;
            let first = v.first().cloned();
            v.clear();
            first
        };
        match first {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// A CPU-emulated adapter (lavapipe, llvmpipe, WARP, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Queue submissions made so far (batching is tested by counting them).
    pub fn submissions(&self) -> usize {
        self.submissions.load(Ordering::Relaxed)
    }

    /// The cached pipeline of a kernel, built on first use.
    pub fn kernel(&self, id: KernelId) -> Result<Arc<Kernel>> {
        let mut cache = self.kernels.lock().map_err(|_| Error::Gpu("pipeline cache poisoned".into()))?;
        if let Some(k) = cache.get(&id) {
            return Ok(k.clone());
        }
        let (name, source) = (id.name(), id.source());
        shaders::validate(name, source)?;
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = layout_of(id)
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Bind::Uniform => wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
                    Bind::Read => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Bind::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(name), entries: &entries });
        let pl =
            self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(name), bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
        let overrides = id.overrides(self.place);
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &overrides, ..Default::default() },
            cache: None,
        });
        let k = Arc::new(Kernel { id, pipeline, layout });
        cache.insert(id, k.clone());
        Ok(k)
    }

    /// Binds `buffers` to `kernel`'s bindings 0, 1, ... in order.
    pub fn bind_group(&self, kernel: &Kernel, buffers: &[wgpu::BindingResource]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> =
            buffers.iter().enumerate().map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() }).collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.id.name()), layout: &kernel.layout, entries: &entries })
    }

    /// A storage buffer holding `data` (at least 4 bytes: empty bindings are invalid).
    pub fn storage(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        self.init_buffer(label, bytemuck::cast_slice(data), wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC)
    }

    /// A buffer holding `bytes` (a multiple of 4 long), uploaded through the queue.
    /// Not `create_buffer_init`: that panics when the device is lost, where this
    /// records an error that the next readback returns.
    /// Empty data gets 4 zero bytes: a zero-sized binding is invalid.
    fn init_buffer(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let bytes: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        let size = (bytes.len() as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT).max(wgpu::COPY_BUFFER_ALIGNMENT);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&b, 0, bytes);
        b
    }

    /// A read-only table of u32 records (job descriptors).
    pub fn table(&self, label: &str, data: &[u32]) -> wgpu::Buffer {
        self.init_buffer(label, bytemuck::cast_slice(data), wgpu::BufferUsages::STORAGE)
    }

    /// A uniform buffer holding `value` (a kernel's parameter struct).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.init_buffer(label, bytemuck::bytes_of(value), wgpu::BufferUsages::UNIFORM)
    }

    /// An uninitialised storage buffer of `len` f32, checked against the limits first.
    pub fn empty(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        let size =
            (len.max(1) as u64).checked_mul(4).ok_or_else(|| Error::Limit { what: "buffer size".into(), need: u64::MAX, have: self.limits.max_buffer_size })?;
        self.check_binding(size)?;
        if size > self.limits.max_buffer_size {
            return Err(Error::Limit { what: "max_buffer_size".into(), need: size, have: self.limits.max_buffer_size });
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// `Error::Limit` when a storage binding of `bytes` exceeds the adapter's limit.
    pub fn check_binding(&self, bytes: u64) -> Result<()> {
        let have = self.limits.max_storage_buffer_binding_size;
        if bytes > have {
            return Err(Error::Limit { what: "max_storage_buffer_binding_size".into(), need: bytes, have });
        }
        Ok(())
    }

    /// Submits `encoder` after appending a copy of each range of `src` into its own
    /// staging buffer, waits (with a timeout) and returns the f32 contents of each
    /// range. This is the one readback path: the work and its download share one
    /// submission.
    pub fn submit_and_read(&self, mut encoder: wgpu::CommandEncoder, src: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<f32>>> {
        let staging: Vec<wgpu::Buffer> = src
            .iter()
            .map(|(buf, off, len)| {
                let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: (len * 4).max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if *len > 0 {
                    encoder.copy_buffer_to_buffer(buf, off * 4, &s, 0, len * 4);
                }
                s
            })
            .collect();
        // Errors from building the work (e.g. an allocation the device refused) stop
        // here, before anything waits on it.
        self.take_error()?;
        let index = self.queue.submit([encoder.finish()]);
        self.submissions.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, s) in staging.iter().enumerate() {
            let tx = tx.clone();
            s.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send((i, r));
            });
        }
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: Some(POLL_TIMEOUT) })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {}", e)))?;
        self.take_error()?;
        for _ in 0..staging.len() {
            let (_, r) = rx.recv_timeout(POLL_TIMEOUT).map_err(|_| Error::Gpu("readback map did not complete".into()))?;
            r.map_err(|e| Error::Gpu(format!("mapping the readback buffer: {}", e)))?;
        }
        let mut out = Vec::with_capacity(src.len());
        for (s, (_, _, len)) in staging.iter().zip(src) {
            let view = s.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading the readback buffer: {:?}", e)))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            out.push(all[..*len as usize].to_vec());
            drop(view);
            s.unmap();
        }
        Ok(out)
    }
}

async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want = want.to_lowercase();
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want))
            .ok_or_else(|| Error::NoAdapter(format!("WGPU_ADAPTER_NAME={} matches none of {:?}", want, names)));
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(format!("{} (install a Vulkan driver, e.g. mesa-vulkan-drivers for lavapipe)", e)))
}

/// Grid for `n` elements with a grid-stride loop: x <= 65535 workgroups of 256, the
/// rest folded into y (lavapipe allows 65535 per dimension).
pub fn grid(n: usize) -> (u32, u32) {
    let groups = n.div_ceil(256).max(1);
    let x = groups.min(65535);
    let y = groups.div_ceil(x).min(65535);
    (x as u32, y as u32)
}
