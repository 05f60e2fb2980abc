//! Strict weight loading: `.safetensors` and PyTorch `.bin` (zip, or legacy pre-1.6 through
//! `legacy_pth`), cast to the run dtype, with a key check.
//!
//! The reference loads its 3D UNet with `strict=False`, so a wrong key is silently random-initialised.
//! Here every tensor a network asks for must exist with the expected shape, and
//! every tensor in the file must have been asked for (or be on a short list of known-unused buffers).
//! A violation is an [`EngineError::Weights`] naming the key and the file.
//!
//! Design: [`StrictWeights`] indexes a file's tensors (names, shapes, on-disk dtypes) without reading
//! their data, then hands out a [`candle_nn::VarBuilder`] whose backend loads each requested tensor
//! lazily (so peak memory stays near one copy of the weights), casts it to the run dtype and moves it
//! to the device, while it records the request. [`StrictWeights::finish`] then compares the requested
//! keys with the file's keys.
//!
//! The module also holds the small helpers every component loader shares: locating a component's
//! weights file, reading and checking a `config.json`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::error::{EngineError, Result};

/// Weight file names tried in a component folder, in order: diffusers and transformers prefer
/// safetensors (the reference's 3D loaders try `.bin` first, but a folder holding both
/// has the same tensors in each). A `*.safetensors.index.json` names the shards of a sharded
/// checkpoint.
pub const WEIGHT_FILE_NAMES: [&str; 6] = [
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
];

/// Finds the weights file of a component folder (`unet/`, `vae/`, …).
pub fn find_weights_file(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(EngineError::missing(
            dir,
            "the component folder is absent; it should hold config.json and a weights file",
        ));
    }
    for name in WEIGHT_FILE_NAMES {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(EngineError::missing(
        dir.join(WEIGHT_FILE_NAMES[0]),
        format!(
            "folder {} has no weights file; expected one of {}",
            dir.display(),
            WEIGHT_FILE_NAMES.join(", ")
        ),
    ))
}

/// The shard files named by a `*.safetensors.index.json` (`weight_map` values), next to it.
fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>> {
    let json: serde_json::Value = read_json(index_path)?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(EngineError::weights(
            index_path,
            "the index has no \"weight_map\" object",
        ));
    };
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let f = dir.join(n);
        if !f.is_file() {
            return Err(EngineError::missing(
                &f,
                format!("{} names this shard", index_path.display()),
            ));
        }
        files.push(f);
    }
    if files.is_empty() {
        return Err(EngineError::weights(
            index_path,
            "the index names no shard files",
        ));
    }
    Ok(files)
}

/// Reads a JSON file into `T`. A missing file or bad JSON is a named error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| EngineError::config(path, e.to_string()))
}

/// Reads a text file, with a `Missing` error that names it when absent.
pub fn read_text(path: &Path) -> Result<String> {
    if !path.is_file() {
        let parent = path.parent().unwrap_or(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(EngineError::missing(
            path,
            format!("folder {} has no {name}", parent.display()),
        ));
    }
    std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks a diffusers/transformers config's class against the expected ones.
///
/// diffusers writes `_class_name` (e.g. `AutoencoderKL`), transformers writes `model_type`
/// (e.g. `clip_vision_model`) and `architectures`. When the config names a class, it must be one of
/// `expected`; a config that names none passes (hand-written configs), and the shape check of the
/// weights still catches a mismatch.
pub fn check_config_class(path: &Path, json: &serde_json::Value, expected: &[&str]) -> Result<()> {
    let mut found = Vec::new();
    if let Some(s) = json.get("_class_name").and_then(|v| v.as_str()) {
        found.push(s.to_string());
    }
    if let Some(s) = json.get("model_type").and_then(|v| v.as_str()) {
        found.push(s.to_string());
    }
    if let Some(a) = json.get("architectures").and_then(|v| v.as_array()) {
        found.extend(a.iter().filter_map(|v| v.as_str()).map(str::to_string));
    }
    if found.is_empty() || found.iter().any(|f| expected.contains(&f.as_str())) {
        return Ok(());
    }
    Err(EngineError::config(
        path,
        format!(
            "this is a config for {}, not for {}; point this component at the right folder",
            found.join(" / "),
            expected.join(" or ")
        ),
    ))
}

/// Reads `dir/config.json` as `T` after checking its class (see [`check_config_class`]).
pub fn read_component_config<T: DeserializeOwned>(dir: &Path, expected: &[&str]) -> Result<T> {
    let path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(EngineError::missing(dir, "the component folder is absent"));
    }
    let text = read_text(&path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::config(&path, e.to_string()))?;
    check_config_class(&path, &json, expected)?;
    serde_json::from_value(json).map_err(|e| EngineError::config(&path, e.to_string()))
}

/// One tensor's entry in a weights file's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Dimensions on disk.
    pub shape: Vec<usize>,
    /// dtype on disk, as candle names it (`f32`, `f16`, `bf16`, …).
    pub dtype: String,
}

enum Source {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
    /// PyTorch < 1.6 `torch.save` (non-zip), e.g. the BiSeNet `79999_iter.pth`.
    LegacyPth(super::legacy_pth::LegacyPth),
}

struct Inner {
    path: PathBuf,
    source: Source,
    index: BTreeMap<String, TensorEntry>,
    requested: Mutex<BTreeSet<String>>,
    /// The first key problem met while building (missing key or wrong shape), reported by
    /// [`StrictWeights::map_build_error`] instead of candle's generic message.
    problem: Mutex<Option<String>>,
}

/// A weights file opened for strict loading. Cheap to clone (shared).
#[derive(Clone)]
pub struct StrictWeights {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StrictWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrictWeights")
            .field("path", &self.inner.path)
            .field("tensors", &self.inner.index.len())
            .finish()
    }
}

/// What [`StrictWeights::finish`] found: all keys used, plus the known-unused ones it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The weights file.
    pub path: PathBuf,
    /// Number of tensors the network took.
    pub used: usize,
    /// Number of scalar parameters the network took.
    pub parameters: usize,
    /// Keys present in the file that were skipped on purpose (known-unused buffers).
    pub ignored: Vec<String>,
    /// On-disk dtypes of the used tensors (sorted, unique).
    pub dtypes: Vec<String>,
}

/// Reads every entry of a PyTorch zip archive to its end, so the archive reader compares each
/// entry's CRC-32 with the one recorded in the archive. candle's pickle reader reads exactly the
/// bytes a tensor needs and never reaches the check, so a flipped byte inside tensor data would
/// otherwise load silently. Costs one sequential read of the file. Legacy (non-zip) pickles have no
/// checksums and pass unchecked.
fn verify_zip_checksums(path: &Path) -> std::result::Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = match zip::ZipArchive::new(std::io::BufReader::new(file)) {
        Ok(a) => a,
        // Not a zip: the pickle reader accepted a legacy format, which carries no checksum.
        Err(_) => return Ok(()),
    };
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| format!("entry '{name}' fails its CRC-32 check: {e}"))?;
    }
    Ok(())
}

fn candle_err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl StrictWeights {
    /// Opens `path` (`.safetensors` or PyTorch `.bin`/`.pt`/`.pth`) and indexes its tensors.
    ///
    /// Truncated or corrupt files give an [`EngineError::Weights`] naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(EngineError::missing(path, "the weights file is absent"));
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let is_index = path.to_string_lossy().ends_with(".safetensors.index.json");
        let kind = if is_index {
            "safetensors".to_string()
        } else {
            ext.clone()
        };
        let corrupt = |e: String| {
            EngineError::weights(
                path,
                format!(
                    "cannot be read as {kind} ({e}); the file is truncated or corrupt, download \
                     or save it again"
                ),
            )
        };
        let (source, index) = if ext == "safetensors" || is_index {
            let files = if is_index {
                shard_files(path)?
            } else {
                vec![path.to_path_buf()]
            };
            // SAFETY: the files are mapped read-only; they must not be modified while the model
            // loads, which is the same contract every safetensors loader has. The maps are dropped
            // once the network holds its own copies of the tensors.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
                .map_err(|e| corrupt(e.to_string()))?;
            let mut index = BTreeMap::new();
            for (name, view) in st.tensors() {
                let dtype = match DType::try_from(view.dtype()) {
                    Ok(d) => d.as_str().to_string(),
                    Err(_) => format!("{:?}", view.dtype()),
                };
                index.insert(
                    name,
                    TensorEntry {
                        shape: view.shape().to_vec(),
                        dtype,
                    },
                );
            }
            (Source::Safetensors(st), index)
        } else if (ext == "bin" || ext == "pt" || ext == "pth" || ext == "ckpt")
            && super::legacy_pth::is_legacy(path)
        {
            // As below, a panic in candle's pickle machine must not reach the host.
            let opened = std::panic::catch_unwind(|| super::legacy_pth::LegacyPth::open(path))
                .map_err(|_| corrupt("the pickle reader failed".to_string()))?;
            let legacy = opened.map_err(|e| corrupt(e.to_string()))?;
            let index = legacy
                .entries()
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        TensorEntry {
                            shape: e.shape.clone(),
                            dtype: e.dtype.as_str().to_string(),
                        },
                    )
                })
                .collect();
            (Source::LegacyPth(legacy), index)
        } else if ext == "bin" || ext == "pt" || ext == "pth" || ext == "ckpt" {
            // candle's pickle reader is defensive, but a panic there must not reach the host.
            let opened =
                std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, None))
                    .map_err(|_| corrupt("the pickle reader failed".to_string()))?;
            let pth = opened.map_err(|e| corrupt(e.to_string()))?;
            verify_zip_checksums(path).map_err(corrupt)?;
            let index = pth
                .tensor_infos()
                .iter()
                .map(|(name, ti)| {
                    (
                        name.clone(),
                        TensorEntry {
                            shape: ti.layout.shape().dims().to_vec(),
                            dtype: ti.dtype.as_str().to_string(),
                        },
                    )
                })
                .collect();
            (Source::Pth(pth), index)
        } else {
            return Err(EngineError::weights(
                path,
                "unknown weights format; expected .safetensors (or its .index.json) or a \
                 PyTorch .bin",
            ));
        };
        if index.is_empty() {
            return Err(EngineError::weights(path, "the file holds no tensors"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                source,
                index,
                requested: Mutex::new(BTreeSet::new()),
                problem: Mutex::new(None),
            }),
        })
    }

    /// Opens the weights file of a component folder (see [`find_weights_file`]).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open(&find_weights_file(dir)?)
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The file's index: key → shape and on-disk dtype.
    pub fn index(&self) -> &BTreeMap<String, TensorEntry> {
        &self.inner.index
    }

    /// True when the file holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.inner.index.contains_key(key)
    }

    /// Number of scalar parameters in the file.
    pub fn parameter_count(&self) -> usize {
        self.inner
            .index
            .values()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// A `VarBuilder` over this file for `dtype` on `device`. Every `get` is recorded.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend {
                inner: self.inner.clone(),
                dry_run: false,
            }),
            dtype,
            device.clone(),
        )
    }

    /// A `VarBuilder` that checks keys and shapes like [`Self::var_builder`] but reads no data: every
    /// tensor is a broadcast zero. Building a network over it and calling [`Self::finish`] checks a
    /// checkpoint against a config in milliseconds and without memory (used by `inspect`).
    pub fn dry_run_var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend {
                inner: self.inner.clone(),
                dry_run: true,
            }),
            dtype,
            Device::Cpu,
        )
    }

    /// Forgets the keys requested so far (before a second build over the same file).
    pub fn reset(&self) {
        if let Ok(mut r) = self.inner.requested.lock() {
            r.clear();
        }
        if let Ok(mut p) = self.inner.problem.lock() {
            *p = None;
        }
    }

    /// Loads one tensor in its on-disk dtype on `device`, without recording it.
    pub fn load_raw(&self, key: &str, device: &Device) -> Result<Tensor> {
        self.inner
            .load(key, device)
            .map_err(|e| EngineError::weights(&self.inner.path, format!("key '{key}': {e}")))
    }

    /// Turns an error from building a network into the named key problem when one was recorded.
    pub fn map_build_error(&self, err: candle_core::Error) -> EngineError {
        match self.inner.problem.lock() {
            Ok(p) => match p.as_ref() {
                Some(msg) => EngineError::weights(&self.inner.path, msg.clone()),
                None => EngineError::weights(&self.inner.path, err.to_string()),
            },
            Err(_) => EngineError::weights(&self.inner.path, err.to_string()),
        }
    }

    /// Compares requested keys with the file's keys.
    ///
    /// `ignorable` lists key predicates for tensors that may be present and unused (e.g. the
    /// `position_ids` buffer older transformers versions saved). Any other unrequested key is an
    /// error naming it.
    pub fn finish(&self, ignorable: &[&dyn Fn(&str) -> bool]) -> Result<LoadReport> {
        let requested = self
            .inner
            .requested
            .lock()
            .map_err(|_| EngineError::weights(&self.inner.path, "internal lock poisoned"))?;
        let mut unexpected = Vec::new();
        let mut ignored = Vec::new();
        for key in self.inner.index.keys() {
            if requested.contains(key) {
                continue;
            }
            if ignorable.iter().any(|f| f(key)) {
                ignored.push(key.clone());
            } else {
                unexpected.push(key.clone());
            }
        }
        if let Some(first) = unexpected.first() {
            let shape = self
                .inner
                .index
                .get(first)
                .map(|e| format!("{:?}", e.shape))
                .unwrap_or_default();
            let more = if unexpected.len() > 1 {
                format!(
                    " ({} unexpected keys in all: {})",
                    unexpected.len(),
                    unexpected
                        .iter()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            };
            return Err(EngineError::weights(
                &self.inner.path,
                format!(
                    "unexpected key '{first}' with shape {shape}{more}: the network has no such \
                     parameter; the file belongs to a different architecture or config.json \
                     does not match it"
                ),
            ));
        }
        let mut dtypes = BTreeSet::new();
        let mut parameters = 0usize;
        for key in requested.iter() {
            if let Some(e) = self.inner.index.get(key) {
                dtypes.insert(e.dtype.clone());
                parameters += e.shape.iter().product::<usize>();
            }
        }
        Ok(LoadReport {
            path: self.inner.path.clone(),
            used: requested.len(),
            parameters,
            ignored,
            dtypes: dtypes.into_iter().collect(),
        })
    }

    /// Builds a network with `build` and runs the strict check: the usual way to load.
    ///
    /// `build` may return candle's or the engine's error; a candle error caused by a missing key or a
    /// wrong shape comes back as the [`EngineError::Weights`] naming that key and this file.
    pub fn build<T, E: Into<EngineError>>(
        &self,
        dtype: DType,
        device: &Device,
        ignorable: &[&dyn Fn(&str) -> bool],
        build: impl FnOnce(VarBuilder<'static>) -> std::result::Result<T, E>,
    ) -> Result<(T, LoadReport)> {
        let vb = self.var_builder(dtype, device);
        let net = build(vb).map_err(|e| match e.into() {
            EngineError::Candle(c) => self.map_build_error(c),
            other => match self.recorded_problem() {
                Some(msg) => EngineError::weights(&self.inner.path, msg),
                None => other,
            },
        })?;
        let report = self.finish(ignorable)?;
        Ok((net, report))
    }

    fn recorded_problem(&self) -> Option<String> {
        self.inner.problem.lock().ok().and_then(|p| p.clone())
    }
}

impl StrictWeights {
    /// Builds a network over [`StrictWeights::dry_run_var_builder`] and runs the key check.
    pub fn build_dry<T, E: Into<EngineError>>(
        &self,
        dtype: DType,
        ignorable: &[&dyn Fn(&str) -> bool],
        build: impl FnOnce(VarBuilder<'static>) -> std::result::Result<T, E>,
    ) -> Result<()> {
        self.reset();
        let vb = self.dry_run_var_builder(dtype);
        let r = build(vb).map(|_| ()).map_err(|e| match e.into() {
            EngineError::Candle(c) => self.map_build_error(c),
            other => other,
        });
        let out = r.and_then(|_| self.finish(ignorable).map(|_| ()));
        self.reset();
        out
    }
}

impl Inner {
    fn load(&self, key: &str, device: &Device) -> candle_core::Result<Tensor> {
        match &self.source {
            Source::Safetensors(st) => st.load(key, device),
            // As in `open`, a panic in the pickle reader becomes an error.
            Source::Pth(pth) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pth.get(key)))
                    .map_err(|_| candle_err(format!("the pickle reader failed on '{key}'")))??
                {
                    Some(t) => t.to_device(device),
                    None => Err(candle_err(format!("no tensor '{key}'"))),
                }
            }
            Source::LegacyPth(legacy) => legacy.load(key, device),
        }
    }

    fn record_problem(&self, msg: &str) {
        if let Ok(mut p) = self.problem.lock() {
            if p.is_none() {
                *p = Some(msg.to_string());
            }
        }
    }

    fn record_request(&self, key: &str) {
        if let Ok(mut r) = self.requested.lock() {
            r.insert(key.to_string());
        }
    }
}

struct Backend {
    inner: Arc<Inner>,
    /// Return broadcast zeros instead of reading data (key/shape check only).
    dry_run: bool,
}

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.inner.record_request(name);
        let Some(entry) = self.inner.index.get(name) else {
            let msg = format!(
                "missing key '{name}' (the network needs it with shape {:?}); the file was saved \
                 from a different architecture or config.json does not match it",
                shape.dims()
            );
            self.inner.record_problem(&msg);
            return Err(candle_err(format!("{}: {msg}", self.inner.path.display())));
        };
        if entry.shape.as_slice() != shape.dims() {
            let msg = format!(
                "shape mismatch for key '{name}': the file has {:?}, the network expects {:?}; \
                 config.json does not match these weights",
                entry.shape,
                shape.dims()
            );
            self.inner.record_problem(&msg);
            return Err(candle_err(format!("{}: {msg}", self.inner.path.display())));
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.record_request(name);
        if !self.inner.index.contains_key(name) {
            let msg = format!("missing key '{name}'");
            self.inner.record_problem(&msg);
            return Err(candle_err(format!("{}: {msg}", self.inner.path.display())));
        }
        if self.dry_run {
            let shape = self
                .inner
                .index
                .get(name)
                .map(|e| e.shape.clone())
                .unwrap_or_default();
            return Tensor::zeros((), dtype, dev)?.broadcast_as(shape);
        }
        let t = self.inner.load(name, dev)?;
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.index.contains_key(name)
    }
}

/// What [`cast_folder`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CastReport {
    /// `.safetensors` files rewritten.
    pub files: usize,
    /// Floating-point tensors cast (integer tensors keep their dtype).
    pub tensors: usize,
    /// Bytes of the rewritten weight files before the cast.
    pub bytes_before: u64,
    /// Bytes of the rewritten weight files after the cast.
    pub bytes_after: u64,
}

/// Copies the folder tree `input` to `output` with the floating-point tensors of every
/// `.safetensors` file cast to `dtype` (e.g. a model folder stored in f16 to halve its size; the
/// loaders cast back to the run dtype). Other files are copied as they are; symbolic links are
/// followed. The tree is written to `output.partial` and renamed at the end, so a failed run
/// leaves no half-written folder. `output` must not exist.
pub fn cast_folder(input: &Path, output: &Path, dtype: DType) -> Result<CastReport> {
    if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
        return Err(EngineError::Input(format!(
            "weights can be cast to f16, bf16, f32 or f64, not {dtype:?}"
        )));
    }
    if !input.is_dir() {
        return Err(EngineError::missing(input, "the folder to cast is absent"));
    }
    if output.exists() {
        return Err(EngineError::Input(format!(
            "{} already exists; remove it or choose another output folder",
            output.display()
        )));
    }
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    let mut report = CastReport::default();
    let mut stack = vec![(input.to_path_buf(), partial.clone())];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).map_err(io(&to))?;
        let mut entries = std::fs::read_dir(&from)
            .map_err(io(&from))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io(&from))?;
        entries.sort();
        for src in entries {
            let dst = to.join(src.file_name().unwrap_or_default());
            if src.is_dir() {
                stack.push((src, dst));
            } else if src.extension().is_some_and(|e| e == "safetensors") {
                let tensors = candle_core::safetensors::load(&src, &Device::Cpu)
                    .map_err(|e| EngineError::weights(&src, e.to_string()))?;
                let cast = tensors
                    .into_iter()
                    .map(|(k, t)| {
                        if t.dtype().is_float() && t.dtype() != dtype {
                            report.tensors += 1;
                            Ok((k, t.to_dtype(dtype)?))
                        } else {
                            Ok((k, t))
                        }
                    })
                    .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()?;
                candle_core::safetensors::save(&cast, &dst)
                    .map_err(|e| EngineError::weights(&dst, e.to_string()))?;
                report.files += 1;
                report.bytes_before += std::fs::metadata(&src).map_err(io(&src))?.len();
                report.bytes_after += std::fs::metadata(&dst).map_err(io(&dst))?.len();
            } else {
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
    }
    std::fs::rename(&partial, output).map_err(io(output))?;
    Ok(report)
}
