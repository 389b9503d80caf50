//! ONNX TensorProto <-> f32 data, for float32, float16 and bfloat16 initializers,
//! inline (raw_data or typed fields) or in external data files.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::TensorProto;

use crate::error::{Error, Result};
use crate::tensor::checked_numel;

/// Float element types repfuse reads and writes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FloatType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE half float.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
}

impl FloatType {
    /// The float type of an ONNX `TensorProto.data_type`; `None` for non-float types.
    pub fn from_onnx(dt: i32) -> Option<FloatType> {
        match dt {
            x if x == DataType::FLOAT as i32 => Some(FloatType::F32),
            x if x == DataType::FLOAT16 as i32 => Some(FloatType::F16),
            x if x == DataType::BFLOAT16 as i32 => Some(FloatType::BF16),
            _ => None,
        }
    }
    /// The ONNX `DataType` to write tensors of this type with.
    pub fn onnx(self) -> DataType {
        match self {
            FloatType::F32 => DataType::FLOAT,
            FloatType::F16 => DataType::FLOAT16,
            FloatType::BF16 => DataType::BFLOAT16,
        }
    }
    /// The value a tensor of this type stores for `v` (round to nearest): what a
    /// deploy model written in this type will actually compute with.
    pub fn round(self, v: f32) -> f32 {
        match self {
            FloatType::F32 => v,
            FloatType::F16 => half::f16::from_f32(v).to_f32(),
            FloatType::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            _ => 2,
        }
    }
}

/// Reads external data files once each, relative to the model's folder.
pub struct ExternalData {
    dir: PathBuf,
    files: HashMap<String, Vec<u8>>,
}

impl ExternalData {
    /// External data of the model at `model_path`, resolved against its folder; nothing is read yet.
    pub fn new(model_path: &Path) -> Self {
        Self::in_dir(model_path.parent().unwrap_or(Path::new("")))
    }

    /// External data of a model in `dir`; nothing is read yet.
    pub fn in_dir(dir: &Path) -> Self {
        ExternalData { dir: dir.to_path_buf(), files: HashMap::new() }
    }

    fn bytes(&mut self, t: &TensorProto) -> Result<&[u8]> {
        self.bytes_of(&t.name, |k| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone()))
    }

    /// The bytes of tensor `name`, whose external-data entry `key` is `get(key)`
    /// (any protobuf binding's tensor: tract's too).
    pub fn bytes_of(&mut self, name: &str, get: impl Fn(&str) -> Option<String>) -> Result<&[u8]> {
        let location = get("location").ok_or_else(|| Error::tensor(name, "external data without a `location`"))?;
        let rel = Path::new(&location);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::tensor(name, format!("external data location `{}` leaves the model's folder", location)));
        }
        let parse = |k: &str| -> Result<Option<usize>> {
            get(k).map(|v| v.parse::<usize>().map_err(|_| Error::tensor(name, format!("external data `{}` is not a number: {}", k, v)))).transpose()
        };
        let (offset, length) = (parse("offset")?.unwrap_or(0), parse("length")?);
        if !self.files.contains_key(&location) {
            let path = self.dir.join(rel);
            let data = std::fs::read(&path).map_err(|e| Error::File { path: path.clone(), why: format!("external data of tensor `{}`: {}", name, e) })?;
            self.files.insert(location.clone(), data);
        }
        let data = &self.files[&location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        };
        match end {
            Some(end) if end <= data.len() && offset <= end => Ok(&data[offset..end]),
            _ => {
                Err(Error::tensor(name, format!("external data range offset {} length {:?} is outside `{}` ({} bytes)", offset, length, location, data.len())))
            }
        }
    }
}

/// A tensor's dims as `usize`; `Error::Tensor` on a negative dimension.
pub fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| Error::tensor(&t.name, format!("negative dimension {} in {:?}", d, t.dims)))).collect()
}

/// Decodes a float initializer to f32 values, checking the byte count first.
pub fn decode(t: &TensorProto, ext: &mut ExternalData) -> Result<(FloatType, Vec<usize>, Vec<f32>)> {
    decode_with(t, None, ext)
}

/// `decode` of a tensor whose `raw_data` was left in the file (`raw`, see
/// `wire::strip_initializer_data`): the weights are decoded from the mapped file.
pub fn decode_with(t: &TensorProto, raw: Option<&[u8]>, ext: &mut ExternalData) -> Result<(FloatType, Vec<usize>, Vec<f32>)> {
    let (ft, shape, n) = float_header(t)?;
    // Checked before allocating: a header that claims 2^60 values with 40 stored
    // bytes is an error, not an allocation failure.
    let stored = stored(t, raw, ext, ft, &shape, n)?;
    let mut data = vec![0f32; n];
    fill(t, ft, stored, &mut data, &mut |_| {});
    Ok((ft, shape, data))
}

/// A float initializer's type, shape and element count, checked (no data read).
pub fn float_header(t: &TensorProto) -> Result<(FloatType, Vec<usize>, usize)> {
    let ft =
        FloatType::from_onnx(t.data_type).ok_or_else(|| Error::tensor(&t.name, format!("data type {} is not a float type repfuse can fuse", t.data_type)))?;
    let shape = dims(t)?;
    let n = checked_numel(&shape).ok_or_else(|| Error::tensor(&t.name, format!("dimensions {:?} overflow", shape)))?;
    Ok((ft, shape, n))
}

/// Decodes a float initializer's values into `out`, which holds exactly its
/// element count (see `float_header`); checks the stored byte or value count.
/// `read(bytes)` is told, as it goes, how many of `raw`'s bytes have been decoded.
pub fn decode_into(t: &TensorProto, raw: Option<&[u8]>, ext: &mut ExternalData, out: &mut [f32], read: &mut dyn FnMut(usize)) -> Result<()> {
    let (ft, shape, n) = float_header(t)?;
    if out.len() != n {
        return Err(Error::tensor(&t.name, format!("internal error: {} slots for {} values", out.len(), n)));
    }
    let stored = stored(t, raw, ext, ft, &shape, n)?;
    fill(t, ft, stored, out, read);
    Ok(())
}

/// Where an initializer's values are: little-endian bytes (`raw_data`, in the
/// mapped file or external data) or the typed value fields.
enum Stored<'a> {
    Raw(&'a [u8]),
    Fields,
}

/// Finds the stored values and checks they are exactly `n`.
fn stored<'a>(t: &'a TensorProto, raw: Option<&'a [u8]>, ext: &'a mut ExternalData, ft: FloatType, shape: &[usize], n: usize) -> Result<Stored<'a>> {
    let raw: Option<&[u8]> = if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
        Some(ext.bytes(t)?)
    } else if raw.is_some() {
        raw
    } else if !t.raw_data.is_empty() {
        Some(&t.raw_data)
    } else {
        None
    };
    match raw {
        Some(raw) => {
            let want = n.checked_mul(ft.size()).ok_or_else(|| Error::tensor(&t.name, "byte count overflows"))?;
            if raw.len() != want {
                return Err(Error::tensor(&t.name, format!("holds {} bytes, shape {:?} of {:?} needs {}", raw.len(), shape, ft, want)));
            }
            Ok(Stored::Raw(raw))
        }
        None => {
            let count = if ft == FloatType::F32 { t.float_data.len() } else { t.int32_data.len() };
            if count != n {
                return Err(Error::tensor(&t.name, format!("holds {} values, shape {:?} needs {}", count, shape, n)));
            }
            Ok(Stored::Fields)
        }
    }
}

/// Converts checked stored values into `out` (as many as `stored` holds).
/// Values decoded between two `read` reports: a caller that gives each decoded
/// range of a mapped file back holds at most about this much of a large tensor's
/// file bytes beside its decoded values (MobileOne-S0 has 4 MiB kernels).
const FILL_BLOCK: usize = 1 << 18;

fn fill(t: &TensorProto, ft: FloatType, stored: Stored, out: &mut [f32], read: &mut dyn FnMut(usize)) {
    match stored {
        Stored::Raw(raw) => {
            let size = ft.size();
            for (k, (out, raw)) in out.chunks_mut(FILL_BLOCK).zip(raw.chunks(FILL_BLOCK * size)).enumerate() {
                fill_raw(ft, raw, out);
                read(k * FILL_BLOCK * size + raw.len());
            }
        }
        Stored::Fields => match ft {
            FloatType::F32 => out.copy_from_slice(&t.float_data),
            FloatType::F16 => out.iter_mut().zip(&t.int32_data).for_each(|(o, &v)| *o = half::f16::from_bits(v as u16).to_f32()),
            FloatType::BF16 => out.iter_mut().zip(&t.int32_data).for_each(|(o, &v)| *o = half::bf16::from_bits(v as u16).to_f32()),
        },
    }
}

/// Little-endian `ft` values to f32.
fn fill_raw(ft: FloatType, raw: &[u8], out: &mut [f32]) {
    match ft {
        // A plain copy: raw_data is little-endian f32, at any alignment.
        FloatType::F32 if cfg!(target_endian = "little") => bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(raw),
        FloatType::F32 => out.iter_mut().zip(raw.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        FloatType::F16 => out.iter_mut().zip(raw.chunks_exact(2)).for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        FloatType::BF16 => out.iter_mut().zip(raw.chunks_exact(2)).for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
    }
}

/// An initializer without its data: name, dims and element type `ft`.
pub fn header(name: &str, shape: &[usize], ft: FloatType) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = shape.iter().map(|&d| d as i64).collect();
    t.data_type = ft.onnx() as i32;
    t
}

/// Bytes `write_floats` writes for `n` values of type `ft`.
pub fn float_bytes(n: usize, ft: FloatType) -> usize {
    n * ft.size()
}

/// Writes f32 values as little-endian `ft` (ONNX `raw_data`), without a copy for
/// float32 on little-endian machines.
pub fn write_floats(w: &mut dyn std::io::Write, data: &[f32], ft: FloatType) -> std::io::Result<()> {
    if ft == FloatType::F32 && cfg!(target_endian = "little") {
        return w.write_all(bytemuck::cast_slice(data));
    }
    let mut buf = Vec::with_capacity(float_bytes(data.len().min(1 << 14), ft));
    for chunk in data.chunks(1 << 14) {
        buf.clear();
        match ft {
            FloatType::F32 => chunk.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            FloatType::F16 => chunk.iter().for_each(|v| buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            FloatType::BF16 => chunk.iter().for_each(|v| buf.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Encodes f32 values as an inline initializer of type `ft`.
pub fn encode(name: &str, shape: &[usize], data: &[f32], ft: FloatType) -> TensorProto {
    let mut t = header(name, shape, ft);
    t.raw_data = Vec::with_capacity(float_bytes(data.len(), ft));
    write_floats(&mut t.raw_data, data, ft).expect("writing to a Vec cannot fail");
    t
}
