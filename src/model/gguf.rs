//! GGUF files: metadata, tensor index, and dequantization to f32.
//!
//! Written by hand: the format is small and stable (a header, key/value metadata, a tensor
//! index, aligned data), and the crates that read it pull in whole inference stacks. We
//! dequantize the block formats SmolLM2, Llama and Qwen GGUFs use (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) following ggml's reference layouts. The file is read
//! into memory once: every tensor is dequantized at load time anyway.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
    #[error("not a GGUF file (magic {0:#010x})")]
    Magic(u32),
    #[error("unsupported GGUF version {0} (1..=3 are known)")]
    Version(u32),
    #[error("truncated GGUF: {0}")]
    Truncated(String),
    #[error(
        "tensor `{name}` has ggml type {ty}, which mpo cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType { name: String, ty: u32 },
    #[error("no tensor `{0}` in the GGUF file")]
    MissingTensor(String),
    #[error("metadata `{0}` is missing or has the wrong type")]
    Metadata(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::U64(v) => Some(*v),
            MetaValue::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::F64(v) => Some(*v),
            MetaValue::U64(v) => Some(*v as f64),
            MetaValue::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// One tensor's index entry. `dims` are in ggml order: `dims[0]` is the contiguous one.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

impl TensorInfo {
    /// Elements, `None` when the dims multiply past what memory can address (a corrupt index).
    pub fn numel(&self) -> Option<usize> {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).and_then(|n| usize::try_from(n).ok())
    }
}

/// A parsed GGUF file with its bytes.
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    index_at: usize,
    n_tensors: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| GgufError::Truncated(format!("{n} bytes at offset {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U64(self.u8()? as u64),
            1 => MetaValue::I64(self.u8()? as i8 as i64),
            2 => MetaValue::U64(self.u16()? as u64),
            3 => MetaValue::I64(self.u16()? as i16 as i64),
            4 => MetaValue::U64(self.u32()? as u64),
            5 => MetaValue::I64(self.u32()? as i32 as i64),
            6 => MetaValue::F64(f32::from_bits(self.u32()?) as f64),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(GgufError::Truncated("arrays nested too deeply".into()));
                }
                let ity = self.u32()?;
                let n = self.u64()? as usize;
                // Bound by what the file could hold, so a corrupt count cannot exhaust memory.
                if n > self.b.len() - self.pos {
                    return Err(GgufError::Truncated(format!("array of {n} items")));
                }
                let mut v = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    v.push(self.value(ity, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(self.u64()? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64()?)),
            other => return Err(GgufError::Truncated(format!("unknown metadata type {other}"))),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let data = std::fs::read(path).map_err(|e| GgufError::Io { path: path.display().to_string(), message: e.to_string() })?;
        Gguf::parse(data)
    }

    /// The header and metadata only (no tensor index, no data), reading no more of the file
    /// than they take: what `mpo check` needs to know a model's context and tokenizer.
    pub fn open_metadata(path: &Path) -> Result<Gguf, GgufError> {
        use std::io::Read as _;
        let io = |e: std::io::Error| GgufError::Io { path: path.display().to_string(), message: e.to_string() };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut data = Vec::new();
        let mut want = 1 << 20;
        loop {
            let got = (&mut f).take((want - data.len()) as u64).read_to_end(&mut data).map_err(io)?;
            match Gguf::parse_header(&data) {
                Ok(h) => {
                    return Ok(Gguf {
                        version: h.version,
                        metadata: h.metadata,
                        tensors: BTreeMap::new(),
                        data: Vec::new(),
                        data_start: 0,
                    });
                }
                // More of the file may complete it; at its end the error stands.
                Err(GgufError::Truncated(_)) if got > 0 => want *= 4,
                Err(e) => return Err(e),
            }
        }
    }

    /// Magic, version, metadata; with where the tensor index starts and its length.
    fn parse_header(data: &[u8]) -> Result<Header, GgufError> {
        let mut r = Reader { b: data, pos: 0 };
        let magic = r.u32()?;
        if magic != 0x4655_4747 {
            return Err(GgufError::Magic(magic));
        }
        let version = r.u32()?;
        if !(1..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64()? as usize;
        let n_kv = r.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let k = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata.insert(k, v);
        }
        Ok(Header { version, metadata, index_at: r.pos, n_tensors })
    }

    pub fn parse(data: Vec<u8>) -> Result<Gguf, GgufError> {
        let Header { version, metadata, index_at, n_tensors } = Gguf::parse_header(&data)?;
        let mut r = Reader { b: &data, pos: index_at };
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()? as usize;
            if nd > 8 {
                return Err(GgufError::Truncated(format!("tensor `{name}` with {nd} dims")));
            }
            let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let ty = r.u32()?;
            let offset = r.u64()?;
            tensors.insert(name, TensorInfo { dims, ty, offset });
        }
        let align = metadata.get("general.alignment").and_then(MetaValue::as_u64).unwrap_or(32).max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        Ok(Gguf { version, metadata, tensors, data, data_start })
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.meta(key).and_then(MetaValue::as_u64).ok_or_else(|| GgufError::Metadata(key.into()))
    }

    pub fn meta_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.meta(key).and_then(MetaValue::as_f64).ok_or_else(|| GgufError::Metadata(key.into()))
    }

    pub fn meta_str(&self, key: &str) -> Result<&str, GgufError> {
        self.meta(key).and_then(MetaValue::as_str).ok_or_else(|| GgufError::Metadata(key.into()))
    }

    /// The tensor's stored bytes as `(ggml type, bytes, shape)`, the shape row-major with
    /// `dims[0]` fastest (so a ggml `[in, out]` matrix is PyTorch's `[out, in]`).
    pub fn tensor_raw(&self, name: &str) -> Result<(u32, &[u8], Vec<usize>), GgufError> {
        let info = self.tensors.get(name).ok_or_else(|| GgufError::MissingTensor(name.into()))?;
        let bad = |m: String| GgufError::Truncated(format!("tensor `{name}`: {m}"));
        let n = info.numel().ok_or_else(|| bad(format!("dims {:?} are impossibly large", info.dims)))?;
        let (block, bytes) = block_size(info.ty).ok_or_else(|| GgufError::UnsupportedType { name: name.into(), ty: info.ty })?;
        if n % block != 0 {
            return Err(bad(format!("{n} elements, not a multiple of its block {block}")));
        }
        let len = (n / block).checked_mul(bytes).ok_or_else(|| bad(format!("{n} elements are impossibly many")))?;
        let range = usize::try_from(info.offset)
            .ok()
            .and_then(|o| self.data_start.checked_add(o))
            .and_then(|start| Some(start..start.checked_add(len)?))
            .ok_or_else(|| bad(format!("offset {} is past any file", info.offset)))?;
        let raw = self
            .data
            .get(range)
            .ok_or_else(|| bad(format!("its data (offset {}, {len} bytes) is past the end of the file", info.offset)))?;
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        Ok((info.ty, raw, shape))
    }

    /// The tensor dequantized to f32, in row-major order with `dims[0]` fastest (so a ggml
    /// `[in, out]` matrix comes out as PyTorch's `[out, in]`).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), GgufError> {
        let (ty, raw, shape) = self.tensor_raw(name)?;
        let mut out = vec![0f32; shape.iter().product()];
        dequantize(ty, raw, &mut out);
        Ok((out, shape))
    }
}

impl Gguf {
    /// Write a copy with every tensor dequantized to F32 (same names, dims and metadata;
    /// `general.file_type` set to 0 = all F32). Used to check the model code against
    /// llama.cpp without quantization noise.
    pub fn write_f32(&self, path: &Path) -> Result<(), GgufError> {
        let io = |e: std::io::Error| GgufError::Io { path: path.display().to_string(), message: e.to_string() };
        let mut metadata = self.metadata.clone();
        if let Some(t) = metadata.get_mut("general.file_type") {
            *t = MetaValue::U64(0);
        }
        let mut tensors = Vec::new();
        for (name, info) in &self.tensors {
            tensors.push((name.clone(), info.dims.clone(), self.tensor_f32(name)?.0));
        }
        crate::fsx::write_atomic(path, &encode_f32(&metadata, &tensors)).map_err(io)
    }
}

/// A GGUF v3 file of `metadata` and F32 `tensors` (name, ggml dims, data), 32-byte aligned.
pub fn encode_f32(metadata: &BTreeMap<String, MetaValue>, tensors: &[(String, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    let typed: Vec<_> =
        tensors.iter().map(|(n, d, v)| (n.clone(), d.clone(), 0, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    encode(metadata, &typed)
}

/// A GGUF v3 file of `metadata` and `tensors` (name, ggml dims, ggml type, stored bytes),
/// 32-byte aligned.
pub fn encode(metadata: &BTreeMap<String, MetaValue>, tensors: &[(String, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let s = |out: &mut Vec<u8>, x: &str| {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    };
    out.extend(0x4655_4747u32.to_le_bytes());
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        s(&mut out, k);
        write_value(&mut out, v);
    }
    let mut offset = 0u64;
    for (name, dims, ty, v) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += v.len().div_ceil(32) as u64 * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for (_, _, _, v) in tensors {
        let start = out.len();
        out.extend(v);
        while !(out.len() - start).is_multiple_of(32) {
            out.push(0);
        }
    }
    out
}

/// Metadata values are written with their widest type (u64, i64, f64) except strings, bools
/// and arrays; llama.cpp reads keys by value, which accepts the wider integer types.
fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U64(x) => {
            if let Ok(x32) = u32::try_from(*x) {
                out.extend(4u32.to_le_bytes());
                out.extend(x32.to_le_bytes());
            } else {
                out.extend(10u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
        }
        MetaValue::I64(x) => {
            out.extend(5u32.to_le_bytes());
            out.extend((*x as i32).to_le_bytes());
        }
        MetaValue::F64(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend((*x as f32).to_le_bytes());
        }
        MetaValue::Bool(b) => {
            out.extend(7u32.to_le_bytes());
            out.push(*b as u8);
        }
        MetaValue::Str(st) => {
            out.extend(8u32.to_le_bytes());
            out.extend((st.len() as u64).to_le_bytes());
            out.extend(st.as_bytes());
        }
        MetaValue::Array(items) => {
            out.extend(9u32.to_le_bytes());
            let ty = match items.first() {
                Some(MetaValue::Str(_)) => 8u32,
                Some(MetaValue::I64(_)) => 5,
                Some(MetaValue::F64(_)) => 6,
                Some(MetaValue::Bool(_)) => 7,
                _ => 4,
            };
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for it in items {
                let mut tmp = Vec::new();
                write_value(&mut tmp, it);
                out.extend(&tmp[4..]); // element without its type tag
            }
        }
    }
}

/// (elements per block, bytes per block) of a ggml type.
pub fn block_size(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        30 => (1, 2),     // BF16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        _ => return None,
    })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize whole blocks of type `ty` from `raw` into `out`.
pub fn dequantize(ty: u32, raw: &[u8], out: &mut [f32]) {
    match ty {
        0 => out.iter_mut().zip(raw.chunks_exact(4)).for_each(|(o, c)| *o = f32::from_le_bytes(c.try_into().expect("4"))),
        1 => out.iter_mut().zip(raw.chunks_exact(2)).for_each(|(o, c)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32()),
        30 => out.iter_mut().zip(raw.chunks_exact(2)).for_each(|(o, c)| *o = bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        2 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        3 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        6 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(22)) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    o[j] = (((b[6 + j] & 0x0f) | h0) as i32 - 16) as f32 * d;
                    o[j + 16] = (((b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        7 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(24)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    o[j] = ((b[8 + j] & 0x0f) | h0) as f32 * d + m;
                    o[j + 16] = ((b[8 + j] >> 4) | h1) as f32 * d + m;
                }
            }
        }
        8 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    o[j] = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        12 => {
            for (o, b) in out.chunks_exact_mut(256).zip(raw.chunks_exact(144)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                let mut is = 0;
                for (chunk, q) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
                    let (sc1, m1) = scale_min_k4(is, scales);
                    let (sc2, m2) = scale_min_k4(is + 1, scales);
                    let (d1, mm1, d2, mm2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        chunk[l] = d1 * (q[l] & 0x0f) as f32 - mm1;
                        chunk[l + 32] = d2 * (q[l] >> 4) as f32 - mm2;
                    }
                    is += 2;
                }
            }
        }
        13 => {
            for (o, b) in out.chunks_exact_mut(256).zip(raw.chunks_exact(176)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                let mut is = 0;
                let (mut u1, mut u2) = (1u8, 2u8);
                for (chunk, q) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
                    let (sc1, m1) = scale_min_k4(is, scales);
                    let (sc2, m2) = scale_min_k4(is + 1, scales);
                    let (d1, mm1, d2, mm2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        chunk[l] = d1 * ((q[l] & 0x0f) + h1) as f32 - mm1;
                        chunk[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - mm2;
                    }
                    is += 2;
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
        }
        14 => {
            for (o, b) in out.chunks_exact_mut(256).zip(raw.chunks_exact(210)) {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let o = &mut o[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        o[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        o[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        o[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        o[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
        _ => unreachable!("block_size() rejects unknown types before dequantize is called"),
    }
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min of sub-block `j` packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_block() {
        // d = 0.5; byte j holds element j (low nibble) and j + 16 (high nibble).
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(2, &b, &mut out);
        assert_eq!(out[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(out[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(out[16], 3.5); // high nibble of byte 0 is 15
        assert_eq!(out[31], -4.0);
    }

    #[test]
    fn q4_1_and_q8_0_blocks() {
        let mut b = h(2.0).to_vec();
        b.extend(h(-1.0));
        b.extend([0x21u8; 16]);
        let mut out = [0f32; 32];
        dequantize(3, &b, &mut out);
        assert_eq!((out[0], out[16]), (1.0, 3.0)); // 1*2-1, 2*2-1
        let mut b = h(0.25).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        dequantize(8, &b, &mut out);
        assert_eq!((out[0], out[31]), (-4.0, 3.75));
    }

    #[test]
    fn q4_k_block() {
        // scales: sub-blocks 0..3 scale = j+1, min = 1; sub-blocks 4..7 scale 2 (low nibbles), min 0.
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = (j + 1) as u8;
            scales[j + 4] = 1;
        }
        scales[8..12].fill(0x02);
        b.extend(scales);
        b.extend([0x31u8; 128]);
        let mut out = [0f32; 256];
        dequantize(12, &b, &mut out);
        // sub-block 0: d*1*1 - 0.5*1 = 0.5; sub-block 1 (high nibble 3): d*2*3 - 0.5 = 5.5
        assert_eq!(out[0], 0.5);
        assert_eq!(out[32], 5.5);
        // sub-block 4: scale 2, min 0: 2*1 = 2
        assert_eq!(out[128], 2.0);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        // ql low nibble 5, qh bits 0 -> q = 5 - 32 = -27 for element 0; scale[0] = 2; d = 0.5
        b[0] = 0x05;
        b[192] = 2;
        b[208..210].copy_from_slice(&h(0.5));
        let mut out = [0f32; 256];
        dequantize(14, &b, &mut out);
        assert_eq!(out[0], 0.5 * 2.0 * -27.0);
        assert_eq!(out[1], 0.5 * 2.0 * -32.0);
    }

    #[test]
    fn parses_a_tiny_file() {
        let mut f = Vec::new();
        f.extend(0x4655_4747u32.to_le_bytes());
        f.extend(3u32.to_le_bytes());
        f.extend(1u64.to_le_bytes()); // tensors
        f.extend(2u64.to_le_bytes()); // kv
        let s = |f: &mut Vec<u8>, x: &str| {
            f.extend((x.len() as u64).to_le_bytes());
            f.extend(x.as_bytes());
        };
        s(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "llama.block_count");
        f.extend(4u32.to_le_bytes());
        f.extend(2u32.to_le_bytes());
        s(&mut f, "w");
        f.extend(2u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        f.extend(0u32.to_le_bytes()); // F32
        f.extend(0u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        for i in 0..6 {
            f.extend((i as f32).to_le_bytes());
        }
        let g = Gguf::parse(f).unwrap();
        assert_eq!(g.meta_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.meta_u64("llama.block_count").unwrap(), 2);
        let (v, shape) = g.tensor_f32("w").unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(Gguf::parse(vec![1, 2, 3]).is_err());
        // an F32 copy reads back the same
        let p = std::env::temp_dir().join(format!("mpo-gguf-{}.gguf", std::process::id()));
        g.write_f32(&p).unwrap();
        let h = Gguf::open(&p).unwrap();
        assert_eq!(h.metadata, g.metadata);
        assert_eq!(h.tensor_f32("w").unwrap(), (v, shape));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_tensor_too_large_to_address_is_an_error() {
        // 2^31 x 2^31 f32 elements: the count fits a usize, its bytes do not (found by the
        // mutation fuzz test in tests/it/model.rs)
        let mut f = Vec::new();
        f.extend(0x4655_4747u32.to_le_bytes());
        f.extend(3u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.push(b'w');
        f.extend(2u32.to_le_bytes());
        f.extend((1u64 << 31).to_le_bytes());
        f.extend((1u64 << 31).to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        let g = Gguf::parse(f).unwrap();
        assert!(matches!(g.tensor_f32("w"), Err(GgufError::Truncated(m)) if m.contains("impossibly many")));
    }
}
