//! Protobuf wire format, just enough to read and write ONNX weights without copying
//! them through protobuf messages.
//!
//! Reading: [`strip_initializer_data`] walks `ModelProto.graph.initializer[*].raw_data`
//! (fields 7, 5 and 9) and returns the model without those bytes (a few hundred KB
//! that the protobuf crate parses) plus where each initializer's bytes are in the
//! file, so the weights are decoded straight from the mapped file.
//!
//! Writing: the deploy model is the protobuf encoding of the model without its
//! weights, followed by the graph field (its nodes and the initializer headers) and
//! each initializer's bytes streamed from the computed tensors. Protobuf parsers
//! merge a message's fields in any order, so `graph` may come after the fields the
//! header holds.

use std::ops::Range;

/// `ModelProto.graph`.
pub(super) const MODEL_GRAPH: u32 = 7;
/// `GraphProto.initializer`.
pub(super) const GRAPH_INITIALIZER: u32 = 5;
/// `TensorProto.raw_data`.
const TENSOR_RAW_DATA: u32 = 9;
/// Wire type of length-delimited fields (strings, bytes, messages).
pub(super) const LEN: u32 = 2;

/// A model's bytes with the raw data of its graph's initializers left out.
pub struct Stripped {
    /// The model, parseable by protobuf, without initializer `raw_data`.
    pub bytes: Vec<u8>,
    /// Per initializer, in file order (the order protobuf parses them in): where its
    /// `raw_data` payload is in the original bytes, if it has one.
    pub raw: Vec<Option<Range<usize>>>,
}

/// A wire-format error: what was wrong and at which byte.
pub type WireError = String;

/// Reads the fields of one message in `b[pos..end]`.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b[..self.end].get(self.pos).ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    /// The next field: (number, wire type, start of its key, payload range).
    pub(super) fn field(&mut self) -> Result<(u32, u32, usize, Range<usize>), WireError> {
        let start = self.pos;
        let key = self.varint()?;
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u32);
        let from = self.pos;
        let len = match wire {
            0 => {
                self.varint()?;
                return Ok((number, wire, start, from..self.pos));
            }
            1 => 8,
            5 => 4,
            LEN => usize::try_from(self.varint()?).map_err(|_| format!("length overflows at byte {}", from))?,
            w => return Err(format!("wire type {} (groups or invalid) at byte {}", w, start)),
        };
        let from = self.pos;
        let to =
            from.checked_add(len).filter(|&t| t <= self.end).ok_or_else(|| format!("field {} at byte {} runs past the end of its message", number, start))?;
        self.pos = to;
        Ok((number, wire, start, from..to))
    }

    pub(super) fn done(&self) -> bool {
        self.pos >= self.end
    }
}

/// Appends `v` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends the key and length of a length-delimited field.
pub fn put_len_key(out: &mut Vec<u8>, field: u32, len: usize) {
    put_varint(out, u64::from(field << 3 | LEN));
    put_varint(out, len as u64);
}

/// Bytes of the key and length of a length-delimited `field` of `len` bytes.
pub fn len_key_size(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3 | LEN)) + varint_len(len as u64)
}

/// `bytes` without the raw data of the graph's initializers (see the module doc).
pub fn strip_initializer_data(bytes: &[u8]) -> Result<Stripped, WireError> {
    let mut raw = vec![];
    let bytes = rewrite_graph(bytes, |graph| strip_graph(bytes, graph, &mut raw))?;
    Ok(Stripped { bytes, raw })
}

/// The model in `bytes` with its `graph` field replaced by what `graph` makes of the
/// graph's payload range, every other field copied as it is.
pub(super) fn rewrite_graph(bytes: &[u8], mut graph: impl FnMut(Range<usize>) -> Result<Vec<u8>, WireError>) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(1 << 16);
    let mut r = Reader { b: bytes, pos: 0, end: bytes.len() };
    while !r.done() {
        let (number, wire, start, payload) = r.field()?;
        if number == MODEL_GRAPH && wire == LEN {
            let g = graph(payload)?;
            put_len_key(&mut out, MODEL_GRAPH, g.len());
            out.extend_from_slice(&g);
        } else {
            out.extend_from_slice(&bytes[start..r.pos]);
        }
    }
    Ok(out)
}

fn strip_graph(bytes: &[u8], range: Range<usize>, raw: &mut Vec<Option<Range<usize>>>) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(range.len().min(1 << 16));
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, start, payload) = r.field()?;
        if number == GRAPH_INITIALIZER && wire == LEN {
            let (tensor, data) = strip_tensor(bytes, payload)?;
            put_len_key(&mut out, GRAPH_INITIALIZER, tensor.len());
            out.extend_from_slice(&tensor);
            raw.push(data);
        } else {
            out.extend_from_slice(&bytes[start..r.pos]);
        }
    }
    Ok(out)
}

fn strip_tensor(bytes: &[u8], range: Range<usize>) -> Result<(Vec<u8>, Option<Range<usize>>), WireError> {
    let mut out = Vec::with_capacity(128);
    let mut data = None;
    let mut r = Reader { b: bytes, pos: range.start, end: range.end };
    while !r.done() {
        let (number, wire, start, payload) = r.field()?;
        if number == TENSOR_RAW_DATA && wire == LEN {
            // Protobuf keeps the last occurrence of a non-repeated field.
            data = Some(payload);
        } else {
            out.extend_from_slice(&bytes[start..r.pos]);
        }
    }
    Ok((out, data))
}

/// Field number of `ModelProto.graph`, `GraphProto.initializer` and
/// `TensorProto.raw_data`, for the streaming writer.
pub const FIELDS: (u32, u32, u32) = (MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA);

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{Message, ModelProto, TensorProto};

    fn model(raw: &[&[u8]]) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let mut g = onnx_protobuf::GraphProto::new();
        g.name = "g".into();
        for (i, r) in raw.iter().enumerate() {
            let mut t = TensorProto::new();
            t.name = format!("t{}", i);
            t.dims = vec![r.len() as i64];
            t.raw_data = r.to_vec();
            g.initializer.push(t);
        }
        m.graph = Some(g).into();
        m
    }

    #[test]
    fn stripping_keeps_everything_but_the_raw_data_and_says_where_it_was() {
        let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let m = model(&[b"abcd", &[], &big]);
        let bytes = m.write_to_bytes().unwrap();
        let s = strip_initializer_data(&bytes).unwrap();
        let parsed = ModelProto::parse_from_bytes(&s.bytes).unwrap();
        let g = parsed.graph.as_ref().unwrap();
        assert_eq!(g.initializer.len(), 3);
        assert!(g.initializer.iter().all(|t| t.raw_data.is_empty()));
        assert_eq!(g.initializer[2].dims, vec![1000]);
        assert_eq!(&bytes[s.raw[0].clone().unwrap()], b"abcd");
        assert!(s.raw[1].is_none(), "an empty bytes field is not encoded");
        assert_eq!(&bytes[s.raw[2].clone().unwrap()], &big[..]);
        assert!(s.bytes.len() < bytes.len() - 1000);
    }

    #[test]
    fn truncated_input_is_an_error_at_every_cut() {
        let bytes = model(&[b"abcdefgh", b"xyz"]).write_to_bytes().unwrap();
        for cut in 1..bytes.len() {
            // A cut between top-level fields is a shorter valid message; any cut
            // inside one must be reported, never read past the end.
            if let Ok(s) = strip_initializer_data(&bytes[..cut]) {
                assert!(s.raw.iter().flatten().all(|r| r.end <= cut));
            }
        }
        assert!(strip_initializer_data(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn varint_sizes_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = vec![];
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{}", v);
            let mut r = Reader { b: &out, pos: 0, end: out.len() };
            assert_eq!(r.varint().unwrap(), v);
        }
    }
}
