//! The file format of one shared-cache entry: a small self-describing header, then the raw
//! little-endian tensor data.
//!
//! Every process of a farm job reads what the others wrote, over NFS or SMB, from machines of
//! possibly different builds. So a file says what it holds, and a reader trusts nothing it cannot
//! check: a file that is truncated, corrupt, of another format version or for another key is
//! rejected and the value is recomputed, never used (issue 15, "Publishing").
//!
//! Layout, all integers little endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `MYAWIN\r\n` (the line ending catches text-mode copies) |
//! | 4 | format version, [`VERSION`] |
//! | 16 | the 128-bit content key |
//! | 1 | entry kind: 1 window noise predictions, 2 frame latents, 3 decoded frame |
//! | 1 | element dtype: 0 f32, 1 f16, 2 bf16, 3 f64, 4 u8, 5 u32, 6 i64 |
//! | 1 | tensor count `n` (2 for noise predictions: uncond then cond; else 1) |
//! | 1 | reserved, 0 |
//! | per tensor | rank `r` (1 byte, at most 8), then `r` dims (8 bytes each) |
//! | 8 | payload length in bytes |
//! | 4 | CRC-32 of the payload |
//! | 4 | CRC-32 of every header byte before this field |
//!
//! The payload is the tensors in order, each row-major, each element little endian. Floats are
//! stored by bit pattern, so reading back gives the same bits (NaN payloads and -0 included): a
//! frame's bytes do not depend on which process computed which window.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor, WithDType};
use half::{bf16, f16};

use super::super::cache::{Entry, Key};
use crate::{EngineError, Result};

/// The first bytes of every entry file.
pub const MAGIC: [u8; 8] = *b"MYAWIN\r\n";
/// The format version written and the only one read; a reader of another version recomputes.
pub const VERSION: u32 = 1;
/// Largest header: fixed fields plus two tensors of rank 8.
const MAX_HEADER: usize = 8 + 4 + 16 + 4 + 2 * (1 + 8 * 8) + 8 + 4 + 4;

/// What an entry holds, as written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// [`Entry::Eps`]: a window's uncond and cond noise predictions.
    Eps,
    /// [`Entry::Latent`]: one frame's latents after a step.
    Latent,
    /// [`Entry::Image`]: one decoded frame.
    Image,
}

impl EntryKind {
    /// The kind of `entry`.
    pub fn of(entry: &Entry) -> Self {
        match entry {
            Entry::Eps { .. } => Self::Eps,
            Entry::Latent(_) => Self::Latent,
            Entry::Image(_) => Self::Image,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Eps => 1,
            Self::Latent => 2,
            Self::Image => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Eps),
            2 => Some(Self::Latent),
            3 => Some(Self::Image),
            _ => None,
        }
    }

    fn tensors(self) -> usize {
        match self {
            Self::Eps => 2,
            Self::Latent | Self::Image => 1,
        }
    }
}

/// Why a file was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not an entry file of this engine (magic).
    Foreign,
    /// Another format version.
    Version,
    /// The header is cut short, inconsistent, or fails its checksum.
    Header,
    /// The header names another key than the file's name.
    Key,
    /// The header names another kind than the one asked for.
    Kind,
    /// The file is shorter or longer than its header says.
    Length,
    /// The payload fails its checksum.
    Checksum,
    /// The file exists but could not be read.
    Io,
}

/// A parsed, self-consistent header.
#[derive(Debug)]
pub struct Header {
    /// The entry's key.
    pub key: Key,
    /// What it holds.
    pub kind: EntryKind,
    dtype: DType,
    shapes: Vec<Vec<usize>>,
    payload_len: u64,
    payload_crc: u32,
    /// Header length in bytes.
    pub header_len: usize,
}

impl Header {
    /// Total file length the header promises.
    pub fn file_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

fn dtype_code(dtype: DType) -> Option<u8> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::F64 => 3,
        DType::U8 => 4,
        DType::U32 => 5,
        DType::I64 => 6,
        _ => return None,
    })
}

fn dtype_from_code(code: u8) -> Option<DType> {
    Some(match code {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::BF16,
        3 => DType::F64,
        4 => DType::U8,
        5 => DType::U32,
        6 => DType::I64,
        _ => return None,
    })
}

/// Element types stored by their little-endian bit pattern.
trait LeBytes: WithDType {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! le_bytes {
    ($($ty:ty),*) => {$(
        impl LeBytes for $ty {
            const SIZE: usize = std::mem::size_of::<$ty>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$ty>()];
                a.copy_from_slice(bytes);
                <$ty>::from_le_bytes(a)
            }
        }
    )*};
}
le_bytes!(f32, f64, u8, u32, i64);

macro_rules! le_bits {
    ($($ty:ty),*) => {$(
        impl LeBytes for $ty {
            const SIZE: usize = 2;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_bits().to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$ty>::from_bits(u16::from_le_bytes([bytes[0], bytes[1]]))
            }
        }
    )*};
}
le_bits!(f16, bf16);

fn put_tensor<T: LeBytes>(t: &Tensor, out: &mut Vec<u8>) -> Result<()> {
    for v in t.flatten_all()?.to_vec1::<T>()? {
        v.put(out);
    }
    Ok(())
}

fn get_tensor<T: LeBytes>(bytes: &[u8], shape: &[usize], device: &Device) -> Result<Tensor> {
    let data: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::get).collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

fn tensors(entry: &Entry) -> Vec<&Tensor> {
    match entry {
        Entry::Eps { uncond, cond } => vec![uncond, cond],
        Entry::Latent(t) | Entry::Image(t) => vec![t],
    }
}

/// The file bytes of `entry` under `key`; `None` when its dtype has no code here or its tensors
/// disagree on dtype (such values are simply not shared).
pub fn encode(key: Key, entry: &Entry) -> Result<Option<Vec<u8>>> {
    let ts = tensors(entry);
    let dtype = ts[0].dtype();
    let Some(code) = dtype_code(dtype) else {
        return Ok(None);
    };
    if ts.iter().any(|t| t.dtype() != dtype || t.rank() > 8) {
        return Ok(None);
    }
    let mut payload = Vec::with_capacity(ts.iter().map(|t| t.elem_count()).sum::<usize>() * 4);
    for t in &ts {
        match dtype {
            DType::F32 => put_tensor::<f32>(t, &mut payload)?,
            DType::F16 => put_tensor::<f16>(t, &mut payload)?,
            DType::BF16 => put_tensor::<bf16>(t, &mut payload)?,
            DType::F64 => put_tensor::<f64>(t, &mut payload)?,
            DType::U8 => put_tensor::<u8>(t, &mut payload)?,
            DType::U32 => put_tensor::<u32>(t, &mut payload)?,
            _ => put_tensor::<i64>(t, &mut payload)?,
        }
    }
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&[EntryKind::of(entry).code(), code, ts.len() as u8, 0]);
    for t in &ts {
        out.push(t.rank() as u8);
        for &d in t.dims() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
    }
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(Some(out))
}

/// A little-endian reader over a byte slice that fails with [`Reject::Header`] when cut short.
struct Cursor<'b>(&'b [u8], usize);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], Reject> {
        let end = self.1.checked_add(n).ok_or(Reject::Header)?;
        let s = self.0.get(self.1..end).ok_or(Reject::Header)?;
        self.1 = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, Reject> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> std::result::Result<u64, Reject> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parses and checks the header at the start of `bytes` (magic, version, header checksum, and
/// that the shapes and dtype account for exactly the payload length).
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, Reject> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(Reject::Foreign);
    }
    let mut c = Cursor(bytes, MAGIC.len());
    if c.u32()? != VERSION {
        return Err(Reject::Version);
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(c.take(16)?);
    let key = Key::from_le_bytes(key);
    let kind = EntryKind::from_code(c.u8()?).ok_or(Reject::Header)?;
    let dtype = dtype_from_code(c.u8()?).ok_or(Reject::Header)?;
    let count = c.u8()? as usize;
    if count != kind.tensors() || c.u8()? != 0 {
        return Err(Reject::Header);
    }
    let mut shapes = Vec::with_capacity(count);
    let mut elems: u64 = 0;
    for _ in 0..count {
        let rank = c.u8()? as usize;
        if rank > 8 {
            return Err(Reject::Header);
        }
        let mut shape = Vec::with_capacity(rank);
        let mut n: u64 = 1;
        for _ in 0..rank {
            let d = c.u64()?;
            n = n.checked_mul(d).ok_or(Reject::Header)?;
            shape.push(usize::try_from(d).map_err(|_| Reject::Header)?);
        }
        elems = elems.checked_add(n).ok_or(Reject::Header)?;
        shapes.push(shape);
    }
    let payload_len = c.u64()?;
    let payload_crc = c.u32()?;
    let covered = c.1;
    if c.u32()? != crc32fast::hash(&bytes[..covered]) {
        return Err(Reject::Header);
    }
    if elems.checked_mul(dtype.size_in_bytes() as u64) != Some(payload_len) {
        return Err(Reject::Header);
    }
    Ok(Header {
        key,
        kind,
        dtype,
        shapes,
        payload_len,
        payload_crc,
        header_len: c.1,
    })
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the file.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens `path` and checks its header against the file length. `Ok(None)` when there is no such
/// file (or its folder is missing or is not a folder).
pub fn inspect(path: &Path) -> std::result::Result<Option<(Header, File, Vec<u8>)>, Reject> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if absent(&e) => return Ok(None),
        Err(_) => return Err(Reject::Io),
    };
    let mut head = vec![0u8; MAX_HEADER];
    let n = read_up_to(&mut file, &mut head).map_err(|_| Reject::Io)?;
    head.truncate(n);
    let header = parse_header(&head)?;
    let len = file.metadata().map_err(|_| Reject::Io)?.len();
    if len != header.file_len() {
        return Err(Reject::Length);
    }
    Ok(Some((header, file, head)))
}

/// True for the errors that mean "there is no such file here".
pub fn absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::NotFound | K::NotADirectory)
}

/// The entry stored at `path` for `key` and `kind`, with its tensors on `device`. `Ok(None)` when
/// there is no file; `Err` when there is one that must not be used.
pub fn read(
    path: &Path,
    key: Key,
    kind: EntryKind,
    device: &Device,
) -> std::result::Result<Option<Entry>, Reject> {
    let Some((header, mut file, head)) = inspect(path)? else {
        return Ok(None);
    };
    if header.key != key {
        return Err(Reject::Key);
    }
    if header.kind != kind {
        return Err(Reject::Kind);
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    let start = head.len() - header.header_len;
    payload[..start].copy_from_slice(&head[header.header_len..]);
    let n = read_up_to(&mut file, &mut payload[start..]).map_err(|_| Reject::Io)?;
    if start + n != payload.len() {
        return Err(Reject::Length);
    }
    if crc32fast::hash(&payload) != header.payload_crc {
        return Err(Reject::Checksum);
    }
    decode_payload(&header, &payload, device)
        .map(Some)
        .map_err(|_| Reject::Header)
}

fn decode_payload(header: &Header, payload: &[u8], device: &Device) -> Result<Entry> {
    let size = header.dtype.size_in_bytes();
    let mut at = 0;
    let mut ts = Vec::with_capacity(header.shapes.len());
    for shape in &header.shapes {
        let len = shape.iter().product::<usize>() * size;
        let bytes = &payload[at..at + len];
        at += len;
        ts.push(match header.dtype {
            DType::F32 => get_tensor::<f32>(bytes, shape, device)?,
            DType::F16 => get_tensor::<f16>(bytes, shape, device)?,
            DType::BF16 => get_tensor::<bf16>(bytes, shape, device)?,
            DType::F64 => get_tensor::<f64>(bytes, shape, device)?,
            DType::U8 => get_tensor::<u8>(bytes, shape, device)?,
            DType::U32 => get_tensor::<u32>(bytes, shape, device)?,
            _ => get_tensor::<i64>(bytes, shape, device)?,
        });
    }
    let mut ts = ts.into_iter();
    match (header.kind, ts.next(), ts.next()) {
        (EntryKind::Eps, Some(uncond), Some(cond)) => Ok(Entry::Eps { uncond, cond }),
        (EntryKind::Latent, Some(t), None) => Ok(Entry::Latent(t)),
        (EntryKind::Image, Some(t), None) => Ok(Entry::Image(t)),
        _ => Err(EngineError::Internal(format!(
            "a {:?} entry header with {} tensors passed its checks",
            header.kind,
            header.shapes.len()
        ))),
    }
}
