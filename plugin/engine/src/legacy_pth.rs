//! Reader for PyTorch's legacy `torch.save` format (PyTorch < 1.6, or
//! `_use_new_zipfile_serialization=False`), which candle's zip-only `.pth` reader cannot open.
//! The published BiSeNet face-parsing checkpoint `79999_iter.pth` (2019) is such a file.
//!
//! The legacy file is five pickles back to back, then the raw storages:
//! 1. the magic number `0x1950a86a20f9469cfc6c` (a protocol-2 `LONG1`);
//! 2. the format version, 1001;
//! 3. a dict of system info (`little_endian`, type sizes);
//! 4. the saved object (here a state_dict) whose tensors are `_rebuild_tensor_v2` calls on
//!    persistent ids `('storage', <dtype>Storage, key, location, numel, view)`;
//! 5. the list of storage keys in the order their data follows;
//!
//! then, per key, a little-endian `i64` element count and the storage's bytes.
//!
//! [`LegacyPth::open`] parses the pickles with candle's pickle machine and records where each
//! storage's bytes start, without reading them; [`LegacyPth::load`] reads one tensor on demand.
//! Only contiguous tensors are supported (every state_dict tensor of a saved module is).
use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{bail, DType, Device, Result, Tensor};

/// The first pickle of every legacy file: PROTO 2, LONG1 of 10 bytes (the magic number), STOP.
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];
/// The legacy format version (`PROTOCOL_VERSION` in `torch/serialization.py`).
const PROTOCOL_VERSION: i64 = 1001;

/// One tensor of a legacy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    /// dtype of its storage.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Byte offset of its first element in the file.
    start: u64,
}

/// An indexed legacy `.pth` file (module docs).
#[derive(Debug, Clone)]
pub struct LegacyPth {
    path: PathBuf,
    entries: HashMap<String, LegacyEntry>,
}

/// True when `path` starts like a legacy `torch.save` file.
pub fn is_legacy(path: &Path) -> bool {
    let mut head = [0u8; MAGIC_PICKLE.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| head == MAGIC_PICKLE)
        .unwrap_or(false)
}

fn read_pickle<R: std::io::BufRead>(r: &mut R) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

fn storage_key(info_path: &str) -> &str {
    // candle names a storage "<dir>/<key>"; the legacy format has no dir.
    info_path.rsplit('/').next().unwrap_or(info_path)
}

impl LegacyPth {
    /// Parses the pickles of `path` and indexes its tensors (no tensor data is read).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let mut r = BufReader::new(file);
        let mut magic = [0u8; MAGIC_PICKLE.len()];
        r.read_exact(&mut magic)?;
        if magic != MAGIC_PICKLE {
            bail!("not a legacy PyTorch file (no magic number)")
        }
        let version = read_pickle(&mut r)?
            .int_or_long()
            .map_err(|o| candle_core::Error::Msg(format!("bad version record {o:?}")))?;
        if version != PROTOCOL_VERSION {
            bail!("legacy format version {version}, expected {PROTOCOL_VERSION}")
        }
        let sys_info = read_pickle(&mut r)?;
        let little_endian = match &sys_info {
            Object::Dict(kv) => kv.iter().any(|(k, v)| {
                *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(true)
            }),
            _ => false,
        };
        if !little_endian {
            bail!("the file was saved on a big-endian machine or lacks its system info")
        }
        let root = read_pickle(&mut r)?;
        let Object::Dict(items) = root else {
            bail!("the saved object is not a state_dict (a dict of tensors)")
        };
        let mut infos = Vec::with_capacity(items.len());
        for (name, value) in items {
            if let Some(info) = value.into_tensor_info(name, Path::new(""))? {
                infos.push(info);
            }
        }
        let keys = match read_pickle(&mut r)? {
            Object::List(keys) => keys
                .into_iter()
                .map(|k| k.unicode())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|o| candle_core::Error::Msg(format!("bad storage key {o:?}")))?,
            other => bail!("expected the list of storage keys, found {other:?}"),
        };
        // The storages' dtypes, from the tensors that view them.
        let mut dtypes: HashMap<&str, DType> = HashMap::new();
        for info in &infos {
            dtypes.insert(storage_key(&info.path), info.dtype);
        }
        // Walk the data section: per storage, an i64 element count then its bytes.
        let mut storages: HashMap<String, (u64, u64)> = HashMap::new();
        for key in &keys {
            let mut n = [0u8; 8];
            r.read_exact(&mut n)?;
            let numel = u64::try_from(i64::from_le_bytes(n))
                .map_err(|_| candle_core::Error::Msg(format!("storage {key}: negative size")))?;
            let start = r.stream_position()?;
            let size = dtypes.get(key.as_str()).map_or(0, |d| d.size_in_bytes()) as u64;
            let bytes = numel
                .checked_mul(size)
                .filter(|b| start.saturating_add(*b) <= len)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("storage {key} runs past the end of the file"))
                })?;
            let skip = i64::try_from(bytes)
                .map_err(|_| candle_core::Error::Msg(format!("storage {key} is too large")))?;
            r.seek_relative(skip)?;
            storages.insert(key.clone(), (start, bytes));
        }
        let mut entries = HashMap::with_capacity(infos.len());
        for info in infos {
            let key = storage_key(&info.path);
            let Some(&(start, bytes)) = storages.get(key) else {
                bail!(
                    "tensor {} views storage {key}, which holds no data",
                    info.name
                )
            };
            if !info.layout.is_contiguous() {
                bail!("tensor {} is not contiguous in its storage", info.name)
            }
            // Sizes come from the (possibly corrupt) file: checked arithmetic, never a panic.
            let offset = info.layout.start_offset() as u64;
            let end = info
                .layout
                .shape()
                .dims()
                .iter()
                .try_fold(info.dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
                .and_then(|need| offset.checked_add(need as u64));
            if end.is_none_or(|end| end > bytes) {
                bail!("tensor {} runs past the end of storage {key}", info.name)
            }
            entries.insert(
                info.name.clone(),
                LegacyEntry {
                    dtype: info.dtype,
                    shape: info.layout.shape().dims().to_vec(),
                    start: start + offset,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The tensors: name → dtype and shape.
    pub fn entries(&self) -> &HashMap<String, LegacyEntry> {
        &self.entries
    }

    /// Reads one tensor onto `device` in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let Some(e) = self.entries.get(name) else {
            bail!("no tensor '{name}'")
        };
        // `open` checked that the tensor fits its storage, so this product cannot overflow.
        let len = e
            .shape
            .iter()
            .try_fold(e.dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor '{name}' is too large")))?;
        let mut bytes = vec![0u8; len];
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(e.start))?;
        f.read_exact(&mut bytes)?;
        Tensor::from_raw_buffer(&bytes, e.dtype, e.shape.as_slice(), &Device::Cpu)?
            .to_device(device)
    }
}
