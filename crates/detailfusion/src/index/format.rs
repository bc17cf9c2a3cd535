//! The index file: one safetensors file whose header metadata identifies it.
//!
//! ```text
//! u64 LE header length n | n bytes of JSON header (space padded to a multiple of 8) | data
//! header = {"__metadata__": {"format": "detailfusion-index", "version": "1", ...},
//!           "tokens":       {"dtype": "F32"|"F16", "shape": [N, Q, P], "data_offsets": [..]},
//!           "gm_tokens":    (per-branch galleries only, same as tokens),
//!           "name_offsets": {"dtype": "I64", "shape": [N + 1], ...},
//!           "names":        {"dtype": "U8", "shape": [bytes], ...}}
//! ```
//!
//! Tensors are written in that order, `tokens` first, so that it starts 8-byte aligned in a
//! mapping. Names are the UTF-8 relative paths concatenated, image `i` spanning
//! `names[name_offsets[i]..name_offsets[i + 1]]`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::error::{IndexError, Result};

/// The `format` metadata value of an index file.
pub const FORMAT_NAME: &str = "detailfusion-index";
/// The `version` metadata value this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// safetensors' own limit on the header size.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a file being written.
pub(crate) struct TensorOut<'a> {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub data: DataOut<'a>,
}

/// The data of a tensor being written (written little-endian).
pub(crate) enum DataOut<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    I64(&'a [i64]),
    U8(&'a [u8]),
}

impl DataOut<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            DataOut::F32(_) => "F32",
            DataOut::F16(_) => "F16",
            DataOut::I64(_) => "I64",
            DataOut::U8(_) => "U8",
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            DataOut::F32(s) => s.len() * 4,
            DataOut::F16(s) => s.len() * 2,
            DataOut::I64(s) => s.len() * 8,
            DataOut::U8(s) => s.len(),
        }
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        const CHUNK: usize = 1 << 14;
        let mut buf = Vec::with_capacity(CHUNK * 8);
        macro_rules! put {
            ($s:expr) => {
                for c in $s.chunks(CHUNK) {
                    buf.clear();
                    for v in c {
                        buf.extend_from_slice(&v.to_le_bytes());
                    }
                    w.write_all(&buf)?;
                }
            };
        }
        match self {
            DataOut::F32(s) => put!(s),
            DataOut::F16(s) => put!(s),
            DataOut::I64(s) => put!(s),
            DataOut::U8(s) => w.write_all(s)?,
        }
        Ok(())
    }
}

/// Writes a safetensors file with `metadata`, tensors in the order given, to a temporary file
/// renamed over `path` (readers holding a mapping of the old file keep it intact).
pub(crate) fn write_file(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[TensorOut],
) -> Result<()> {
    let mut header = String::from("{\"__metadata__\":");
    header.push_str(
        &serde_json::to_string(metadata)
            .map_err(std::io::Error::other)
            .map_err(io(path))?,
    );
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.byte_len();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(t.name).unwrap_or_default(),
            t.data.dtype(),
            serde_json::to_string(&t.shape).unwrap_or_default(),
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut tmp = PathBuf::from(path);
    let mut file_name = path.file_name().map(|f| f.to_os_string()).unwrap_or_default();
    file_name.push(format!(".tmp{}", std::process::id()));
    tmp.set_file_name(file_name);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for t in tensors {
            t.data.write(&mut w)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(IndexError::Io { path: tmp, source: e });
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A tensor entry of a parsed header.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub begin: usize,
    pub end: usize,
}

/// A parsed, checked header.
#[derive(Debug)]
pub(crate) struct Header {
    pub metadata: HashMap<String, String>,
    pub tensors: HashMap<String, TensorInfo>,
}

impl Header {
    pub fn meta(&self, path: &Path, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| IndexError::corrupt(path, key, "missing from the header metadata"))
    }

    pub fn meta_usize(&self, path: &Path, key: &str) -> Result<usize> {
        let v = self.meta(path, key)?;
        v.parse()
            .map_err(|_| IndexError::corrupt(path, key, format!("`{v}` is not a count")))
    }
}

/// Reads and checks the header of an index file: that it is a safetensors file, that its
/// metadata says `detailfusion-index` version 1, and that the file holds all the data the header
/// describes.
pub(crate) fn read_header(path: &Path) -> Result<Header> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    let not_index = |message: String| IndexError::Format {
        path: path.to_path_buf(),
        message,
    };
    if file_len < 8 {
        return Err(not_index(format!(
            "{file_len} bytes is too short for a safetensors header"
        )));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io(path))?;
    let n = u64::from_le_bytes(len);
    if !(2..=MAX_HEADER).contains(&n) {
        return Err(not_index("no safetensors header (another file format?)".into()));
    }
    let available = (file_len - 8).min(n);
    let mut bytes = vec![0u8; available as usize];
    file.read_exact(&mut bytes).map_err(io(path))?;
    let looks_like_index = bytes.first() == Some(&b'{')
        && bytes
            .windows(FORMAT_NAME.len())
            .any(|w| w == FORMAT_NAME.as_bytes());
    if available < n {
        return Err(if looks_like_index {
            IndexError::corrupt(
                path,
                "header",
                format!(
                    "file truncated: {file_len} bytes, the header alone needs {}",
                    8 + n
                ),
            )
        } else {
            not_index("no safetensors header (another file format?)".into())
        });
    }
    let bad_header = |message: String| {
        if looks_like_index {
            IndexError::corrupt(path, "header", message)
        } else {
            not_index(message)
        }
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| bad_header(format!("header is not UTF-8: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad_header(format!("header is not valid JSON: {e}")))?;
    let Some(obj) = json.as_object() else {
        return Err(bad_header("header is not a JSON object".into()));
    };
    let metadata: HashMap<String, String> = match obj.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| bad_header(format!("`__metadata__` is not a string map: {e}")))?,
        None => HashMap::new(),
    };
    match metadata.get("format") {
        Some(f) if f == FORMAT_NAME => {}
        Some(f) => return Err(not_index(format!("metadata `format` is `{f}`"))),
        None => {
            return Err(not_index(
                "safetensors file without `format` metadata (a model checkpoint?)".into(),
            ))
        }
    }
    match metadata.get("version") {
        Some(v) if v == &FORMAT_VERSION.to_string() => {}
        found => {
            return Err(IndexError::Version {
                path: path.to_path_buf(),
                found: found.cloned().unwrap_or_else(|| "(none)".into()),
                supported: FORMAT_VERSION,
            })
        }
    }
    let mut tensors = HashMap::new();
    let mut spans = Vec::new();
    for (name, v) in obj.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let corrupt = |m: &str| IndexError::corrupt(path, name, m);
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| corrupt("no dtype"))?
            .to_string();
        let shape: Vec<usize> =
            serde_json::from_value(v["shape"].clone()).map_err(|_| corrupt("bad shape"))?;
        let offs: [usize; 2] =
            serde_json::from_value(v["data_offsets"].clone()).map_err(|_| corrupt("bad data_offsets"))?;
        let size = match dtype.as_str() {
            "F32" => 4,
            "F16" => 2,
            "I64" => 8,
            "U8" => 1,
            other => return Err(corrupt(&format!("unexpected dtype {other}"))),
        };
        let want = shape
            .iter()
            .try_fold(size, |a: usize, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt("shape overflows"))?;
        if offs[1] < offs[0] || offs[1] - offs[0] != want {
            return Err(corrupt("data_offsets do not match the shape"));
        }
        spans.push((offs[0], offs[1], name.clone()));
        tensors.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                begin: offs[0],
                end: offs[1],
            },
        );
    }
    spans.sort();
    let mut at = 0;
    for (b, e, name) in &spans {
        if *b != at {
            return Err(IndexError::corrupt(
                path,
                name,
                "tensor data overlaps or leaves a hole",
            ));
        }
        at = *e;
    }
    let need = 8 + n + at as u64;
    if file_len < need {
        return Err(IndexError::corrupt(
            path,
            spans.last().map(|s| s.2.as_str()).unwrap_or("data"),
            format!("file truncated: {file_len} bytes, the header describes {need}"),
        ));
    }
    if file_len > need {
        return Err(IndexError::corrupt(
            path,
            "data",
            format!("{} bytes after the last tensor", file_len - need),
        ));
    }
    Ok(Header { metadata, tensors })
}

// ---------------------------------------------------------------------------------------------
// Hashes.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, as 16 hex digits.
pub(crate) fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    format!("{h:016x}")
}

/// A fast checksum of data sections: FNV-style over 64-bit little-endian words in four
/// interleaved lanes, folded with the length.
#[derive(Clone)]
pub(crate) struct Checksum {
    lanes: [u64; 4],
    pending: Vec<u8>,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self {
            lanes: [FNV_OFFSET, FNV_OFFSET ^ 1, FNV_OFFSET ^ 2, FNV_OFFSET ^ 3],
            pending: Vec::new(),
            len: 0,
        }
    }
}

impl Checksum {
    fn block(&mut self, block: &[u8]) {
        for (l, w) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            *l = (*l ^ w).wrapping_mul(FNV_PRIME);
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (32 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == 32 {
                let p = std::mem::take(&mut self.pending);
                self.block(&p);
            }
        }
        let mut chunks = bytes.chunks_exact(32);
        for c in chunks.by_ref() {
            self.block(c);
        }
        self.pending.extend_from_slice(chunks.remainder());
    }

    pub fn hex(mut self) -> String {
        let mut tail = std::mem::take(&mut self.pending);
        tail.resize(32, 0);
        self.block(&tail);
        let mut h = FNV_OFFSET ^ self.len;
        for l in self.lanes {
            h = (h ^ l).wrapping_mul(FNV_PRIME);
        }
        format!("{h:016x}")
    }
}
