//! The runner for graphs the f64 reference cannot run: ONNX models with attention,
//! GELU as Erf, Reshape/Transpose, layer scales, Gather... are run by tract-onnx, an
//! established ONNX inference engine in pure Rust (no system library, no Python), so
//! `verify` and `fuse --verify` check every model end to end, opaque ops included.
//!
//! Models run from tract's typed form, without its graph optimiser: its declutter pass
//! fails on LeViT ("Invalid axis") and, worse, computes `c - conv(x)` as if it were
//! `conv(x) - c` when it folds the Sub into the conv (found by
//! tests/data/forms/scale_div_const_minus.onnx, where ONNX Runtime and the un-optimised
//! form agree). A verifier must not run a rewriter it cannot trust; the typed form
//! runs each ONNX op as written, and for one run it is as fast (optimising costs more
//! than it saves: EfficientViT-M0 0.28 s typed vs 1.07 s optimised).

use std::collections::HashMap;
use std::path::Path;

use tract_onnx::prelude::{tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoTValue, Tensor as TractTensor, TypedSimplePlan};
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::{Error, Result};
use crate::graph::ValueInfo;
use crate::tensor::Tensor;

type Plan = TypedSimplePlan;

/// An ONNX model loaded into tract, ready to run on inputs of fixed shapes.
pub struct TractModel {
    plan: std::sync::Arc<Plan>,
    inputs: Vec<(String, DatumType)>,
    outputs: Vec<String>,
    /// Its half-precision values and types were widened to float32 (`widen.rs`).
    pub widened: bool,
}

/// Runs `f`, turning a panic inside tract into an error. tract indexes maps with names
/// a corrupt file need not define, and repfuse must not panic on any input file. The
/// panic message is silenced for this thread only (other threads' panics still print).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::sync::{Arc, Mutex};
    static HOOK: Mutex<()> = Mutex::new(());
    let lock = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let prev: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> = Arc::from(std::panic::take_hook());
    let me = std::thread::current().id();
    let chained = prev.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            chained(info)
        }
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(Box::new(move |info| prev(info)));
    drop(lock);
    r.unwrap_or_else(|_| Err(engine_err(what, "the engine failed on this model (it panicked)")))
}

type ConstsAndShapes = (HashMap<String, ConstInts>, HashMap<String, Vec<usize>>);

fn engine_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unsupported { node: what.to_string(), why: format!("the ONNX engine (tract) cannot run this model: {:#}", e) }
}

/// An ONNX dimension with a fixed size (not a symbol, not unknown).
fn is_fixed(d: &tract_onnx::pb::tensor_shape_proto::Dimension) -> bool {
    matches!(d.value, Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0)
}

/// A parsed model, its outlets by ONNX name, its output names, and whether half
/// precision was widened to float32.
type Parsed = (tract_onnx::prelude::InferenceModel, HashMap<String, tract_onnx::prelude::OutletId>, Vec<String>, bool);

/// Parses `bytes` with the graph inputs fixed to `inputs`' shapes; `widen`: half
/// precision becomes float32 first (to run, not to analyse: the reader's constant
/// folding must see the file's own types).
fn parse(bytes: &[u8], dir: Option<&Path>, inputs: &[ValueInfo], widen: bool) -> Result<Parsed> {
    let mut proto = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).map_err(|e| engine_err("model", e))?;
    let widened = widen && crate::io::onnx::widen::widen_half_floats(&mut proto, dir);
    // A graph input with a symbolic dimension is fixed to `inputs`' concrete shape
    // below. Exporters declare the intermediate and output shapes with the same
    // symbol (torch's dynamo exporter: value_info `["batch", 36, 28, 28]`), which
    // the engine would hold against the fixed input ("cannot unify batch with 1")
    // or keep symbolic past the ops it cannot follow otherwise (a Resize sized by
    // `Shape`, in GhostNetV3): such a model's declarations are left out.
    let symbolic = proto.graph.as_ref().is_some_and(|g| {
        g.input.iter().any(|i| match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t.shape.as_ref().is_some_and(|s| s.dim.iter().any(|d| !is_fixed(d))),
            None => false,
        })
    });
    // (Declared output shapes the engine ignores by default.)
    let onnx = tract_onnx::onnx().with_ignore_value_info(symbolic);
    let out_names: Vec<String> = proto.graph.as_ref().map(|g| g.output.iter().map(|o| o.name.clone()).collect()).unwrap_or_default();
    let in_types: HashMap<String, i32> = proto
        .graph
        .as_ref()
        .map(|g| {
            g.input
                .iter()
                .filter_map(|i| match i.r#type.as_ref()?.value.as_ref()? {
                    tract_onnx::pb::type_proto::Value::TensorType(t) => Some((i.name.clone(), t.elem_type)),
                })
                .collect()
        })
        .unwrap_or_default();
    let parsed = onnx.parse(&proto, dir.and_then(|d| d.to_str())).map_err(|e| engine_err("model", e))?;
    let mut model = parsed.model;
    let names: Vec<String> = model.input_outlets().map_err(|e| engine_err("inputs", e))?.iter().map(|o| model.node(o.node).name.clone()).collect();
    for (k, name) in names.iter().enumerate() {
        let v = inputs.iter().find(|v| v.name == *name).ok_or_else(|| Error::tensor(name, "the ONNX engine sees an input the graph does not declare"))?;
        // ONNX elem types: 1 float, 10 float16, 16 bfloat16.
        let dt = match in_types.get(name) {
            Some(10) => DatumType::F16,
            _ => DatumType::F32,
        };
        model = model.with_input_fact(k, InferenceFact::dt_shape(dt, v.shape.clone())).map_err(|e| engine_err(name, e))?;
    }
    Ok((model, parsed.outlets_by_name, out_names, widened))
}

impl TractModel {
    /// Loads ONNX `bytes` (external data resolved in `dir`) with the graph inputs
    /// fixed to `inputs`' shapes.
    pub fn load(bytes: &[u8], dir: Option<&Path>, inputs: &[ValueInfo]) -> Result<TractModel> {
        guarded("model", || Self::load_unguarded(bytes, dir, inputs))
    }

    fn load_unguarded(bytes: &[u8], dir: Option<&Path>, inputs: &[ValueInfo]) -> Result<TractModel> {
        let (model, _, outputs, widened) = parse(bytes, dir, inputs, true)?;
        let input_names: Vec<(String, DatumType)> = model
            .input_outlets()
            .map_err(|e| engine_err("inputs", e))?
            .iter()
            .map(|o| {
                let n = model.node(o.node).name.clone();
                let dt = model.outlet_fact(*o).ok().and_then(|f| f.datum_type.concretize()).unwrap_or(DatumType::F32);
                (n, dt)
            })
            .collect();
        let typed = model.into_typed().map_err(|e| engine_err("model", e))?;
        let plan = Plan::new(typed).map_err(|e| engine_err("model", e))?;
        Ok(TractModel { plan, inputs: input_names, outputs, widened })
    }

    /// Runs the model; returns every graph output by name, as f32.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        guarded("run", || self.run_unguarded(inputs))
    }

    fn run_unguarded(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let mut feed = tvec![];
        for (name, dt) in &self.inputs {
            let t = inputs.get(name).ok_or_else(|| Error::tensor(name, "graph input not supplied"))?;
            let x = TractTensor::from_shape::<f32>(t.shape(), t.data()).map_err(|e| engine_err(name, e))?;
            let x = x.cast_to_dt(*dt).map_err(|e| engine_err(name, e))?.into_owned();
            feed.push(x.into_tvalue());
        }
        let out = self.plan.run(feed).map_err(|e| engine_err("run", e))?;
        let mut res: HashMap<String, Tensor> = HashMap::new();
        for (name, v) in self.outputs.iter().zip(out.iter()) {
            let f = v.cast_to::<f32>().map_err(|e| engine_err(name, e))?;
            let data: Vec<f32> = f.to_plain_array_view::<f32>().map_err(|e| engine_err(name, e))?.iter().copied().collect();
            res.insert(name.clone(), Tensor::new(name, v.shape().to_vec(), data)?);
        }
        Ok(res)
    }
}

/// A tensor the ONNX engine proved constant for fixed input shapes.
pub struct ConstInts {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, widened to i64 (integer tensors).
    pub values: Vec<i64>,
    /// Its values (float32 tensors).
    pub floats: Vec<f32>,
    /// The ONNX element type it had (1 float, 6 int32, 7 int64).
    pub onnx_type: i32,
}

/// Float constants larger than this are not folded (a transposed weight is better
/// left to the rules than duplicated).
const MAX_FOLDED_FLOATS: usize = 1 << 16;

/// Every integer (and small float32) tensor of an ONNX model whose value tract's
/// analysis proves constant when the graph inputs have `inputs`' shapes: the results
/// of shape arithmetic (Shape, Gather, Concat, Unsqueeze... on static shapes) and of
/// arithmetic on initializers (a gate `sigmoid(alpha)`), by ONNX name.
/// With them, the shape of every tensor the analysis could infer.
pub fn constant_tensors_and_shapes(bytes: &[u8], dir: Option<&Path>, inputs: &[ValueInfo]) -> Result<ConstsAndShapes> {
    // First on the model with the float weights whose values cannot matter declared
    // as inputs of their shape (`io::onnx::shape_analysis_view`: the engine no longer
    // copies them; on LeViT-128S that was most of `repfuse fuse`'s time and memory);
    // on the model as it is when the engine cannot analyse that view, an error or a
    // panic alike (two guarded calls: the guard's lock does not nest).
    if let Ok((view, promoted)) = crate::io::onnx::shape_analysis_view(bytes, MAX_FOLDED_FLOATS) {
        if !promoted.is_empty() {
            let all: Vec<ValueInfo> = inputs.iter().cloned().chain(promoted).collect();
            match guarded("shape analysis", || analyse(&view, dir, &all, false)) {
                Ok(found) => return Ok(found),
                Err(e) => tracing::debug!(error = %e, "shape analysis of the weightless view failed; analysing the whole model"),
            }
        }
    }
    let as_is = guarded("shape analysis", || analyse(bytes, dir, inputs, false));
    // tract 0.23 has no bfloat16 type ("Unknown DatumType Bfloat16"), so it could not
    // analyse any bfloat16 model (LeViT-128S: every region past its attention had
    // unknown shapes, and no `reshape_as` was lifted); widened to float32 it can.
    // Shapes and integer constants do not depend on the float type; float constants
    // are then left out (their values would be the widened ones, not the file's).
    match as_is {
        Err(e) => guarded("shape analysis", || analyse(bytes, dir, inputs, true)).map_err(|_| e),
        found => found,
    }
}

/// Constants and shapes tract's analysis proves for the model in `bytes`; `widen`:
/// of the model with half precision widened to float32 (no float constants then).
fn analyse(bytes: &[u8], dir: Option<&Path>, inputs: &[ValueInfo], widen: bool) -> Result<ConstsAndShapes> {
    use tract_onnx::prelude::InferenceModelExt as _;
    let (mut model, by_name, _, widened) = parse(bytes, dir, inputs, widen)?;
    if widen && !widened {
        return Err(Error::Graph("no half precision to widen".into()));
    }
    model.analyse(false).map_err(|e| engine_err("shape analysis", e))?;
    let mut out = HashMap::new();
    let mut shapes = HashMap::new();
    for (name, outlet) in by_name {
        let Ok(f) = model.outlet_fact(outlet) else { continue };
        if let Ok(Some(s)) = f.shape.as_concrete_finite() {
            shapes.insert(name.clone(), s.to_vec());
        }
        let Some(k) = f.value.concretize() else { continue };
        if k.datum_type() == DatumType::F32 && (widened || k.len() > MAX_FOLDED_FLOATS) {
            continue;
        }
        if k.datum_type() == DatumType::F32 {
            if let Ok(v) = k.to_plain_array_view::<f32>() {
                out.insert(name, ConstInts { shape: k.shape().to_vec(), values: vec![], floats: v.iter().copied().collect(), onnx_type: 1 });
            }
            continue;
        }
        let (values, onnx_type): (Vec<i64>, i32) = match k.datum_type() {
            DatumType::I64 => match k.to_plain_array_view::<i64>() {
                Ok(v) => (v.iter().copied().collect(), 7),
                Err(_) => continue,
            },
            DatumType::I32 => match k.to_plain_array_view::<i32>() {
                Ok(v) => (v.iter().map(|&x| x as i64).collect(), 6),
                Err(_) => continue,
            },
            // tract keeps what Shape computes as dimensions; concrete ones are int64
            // in ONNX.
            DatumType::TDim => match k.to_plain_array_view::<tract_onnx::prelude::TDim>() {
                Ok(v) => match v.iter().map(|d| d.to_i64().ok()).collect::<Option<Vec<i64>>>() {
                    Some(v) => (v, 7),
                    None => continue,
                },
                Err(_) => continue,
            },
            _ => continue,
        };
        out.insert(name, ConstInts { shape: k.shape().to_vec(), values, floats: vec![], onnx_type });
    }
    Ok((out, shapes))
}
