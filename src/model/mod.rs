//! Models on burn: the Llama-family transformer, its weights, tokenizer and chat template,
//! generation, LoRA adapters, and the compute backends.
//!
//! [`load`] turns a resolved model reference into a ready [`LoadedModel`] on any backend;
//! [`dispatch`] runs a generic job on the backend a spec names.

pub mod adapter;
pub mod batch;
pub mod constrain;
pub mod fetch;
#[cfg(all(test, feature = "cpu"))]
mod flex_ops;
pub mod folder;
pub mod generate;
pub mod gguf;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod kernels;
pub mod llama;
pub mod memory;
pub mod quant;
pub mod registry;
pub mod tokenizer;
pub mod weights;

use burn::prelude::*;

pub use llama::{Llama, LoraConfig};
use registry::ModelRef;
use tokenizer::Tok;
use weights::{GgufWeights, LlamaConfig, SafetensorsWeights};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("`{path}`: {message}")]
    Config { path: String, message: String },
}

/// What wgpu needs, said when it finds no adapter.
const WGPU_NEEDS: &str = "wgpu needs a GPU with Vulkan, Metal or DirectX 12 drivers (on Linux: the Vulkan loader libvulkan1 and the vendor's ICD; without a GPU, Mesa's software driver: `apt-get install mesa-vulkan-drivers libvulkan1`, or `scripts/setup_vulkan.sh`); `runtime.backend: cpu` runs anywhere";

/// Why a compute backend could not be used. The messages end with their fix as they are
/// printed today (after `; ` or on a `\n = help: ` line); [`DeviceError::help`] gives the fix
/// alone, for a caller that prints the help line itself (it would show twice beside `Display`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("backend `{}` is not compiled into this mpo; {}", .0.as_str(), .0.build_hint())]
    NotCompiled(crate::spec::BackendKind),
    #[error("the kernel check runs on a GPU backend compiled into this mpo (`wgpu`, `cuda`), not `{}`", .0.as_str())]
    NoKernelCheck(crate::spec::BackendKind),
    #[error("the wgpu backend found no adapter for device {index}: {cause}\n = help: {WGPU_NEEDS}")]
    NoAdapter { index: usize, cause: Panicked },
    #[error("the {backend} backend opened device {index}, but 1+1+1+1 did not come back as 4; the driver is not usable")]
    Unusable { backend: &'static str, index: usize },
    #[error(
        "the {backend} backend could not open device {index}: {cause}\n = help: {backend} needs {needs}; `runtime.backend: cpu` runs anywhere"
    )]
    Open { backend: &'static str, index: usize, cause: Panicked, needs: &'static str },
}

impl DeviceError {
    pub fn help(&self) -> Option<String> {
        match self {
            DeviceError::NotCompiled(b) => Some(b.build_hint()),
            DeviceError::NoKernelCheck(_) => None,
            DeviceError::NoAdapter { .. } => Some(WGPU_NEEDS.into()),
            DeviceError::Unusable { .. } => Some("`runtime.backend: cpu` runs anywhere".into()),
            DeviceError::Open { backend, needs, .. } => Some(format!("{backend} needs {needs}; `runtime.backend: cpu` runs anywhere")),
        }
    }
}

/// A panic caught while opening a device: its first message, at most 200 characters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// A model ready to run: network, tokenizer, config.
pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub tok: Tok,
    pub config: LlamaConfig,
}

impl<B: Backend> LoadedModel<B> {
    /// Keep the quantized blocks for decode steps only if `quantized` (`runtime.quantized_decode`).
    pub fn quantized_decode(mut self, quantized: bool) -> Self {
        if !quantized {
            self.model = self.model.without_quant();
        }
        self
    }

    /// The policy's arithmetic (`runtime.precision`; [`Llama::with_precision`]).
    pub fn precision(mut self, precision: crate::spec::Precision) -> Self {
        self.model = self.model.with_precision(precision);
        self
    }
}

/// Load `mref` onto `device`, fetching a known model into the cache if it is missing. `lora`
/// adds fresh adapters drawn from `seed`. On the CPU backend a GGUF's Q4_1 / Q8_0 blocks are
/// kept for decode steps ([`quant`]; [`LoadedModel::quantized_decode`] drops them). The model takes prompts up to its own context length
/// (`max_position_embeddings`); `mpo check` verifies that a spec's prompts fit.
pub fn load<B: Backend>(
    mref: &ModelRef,
    lora: Option<&LoraConfig>,
    seed: u64,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<LoadedModel<B>, ModelError> {
    match mref {
        ModelRef::Known { name, .. } => {
            let path = fetch::fetch(name, log)?;
            load_gguf(&path, lora, seed, device)
        }
        ModelRef::Gguf { path, .. } => load_gguf(path, lora, seed, device),
        ModelRef::Random { .. } => {
            let tok = Tok::tiny();
            let config = LlamaConfig::tiny(tok.vocab_size());
            let src = weights::RandomWeights { config: config.clone(), seed: 7 };
            let model = Llama::load(&config, &src, lora, config.max_position_embeddings, seed, device)?;
            Ok(LoadedModel { model, tok, config })
        }
        ModelRef::HfDir { path, .. } => {
            let cfg_path = path.join("config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| ModelError::Config { path: cfg_path.display().to_string(), message: e.to_string() })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Config { path: cfg_path.display().to_string(), message: e.to_string() })?;
            let config = LlamaConfig::from_hf(&v).map_err(|e| e.at(cfg_path.display().to_string()))?;
            let src = SafetensorsWeights::open(path)?;
            let tok = Tok::from_hf_dir(path)?;
            fits(&tok, &config, &path.display().to_string())?;
            let model = Llama::load(&config, &src, lora, config.max_position_embeddings, seed, device)?;
            Ok(LoadedModel { model, tok, config })
        }
    }
}

fn load_gguf<B: Backend>(
    path: &std::path::Path,
    lora: Option<&LoraConfig>,
    seed: u64,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    let g = gguf::Gguf::open(path)?;
    let config = LlamaConfig::from_gguf(&g)?;
    let tok = Tok::from_gguf(&g)?;
    fits(&tok, &config, &path.display().to_string())?;
    let src = GgufWeights::new(&g, config.clone());
    let mut model = Llama::load(&config, &src, lora, config.max_position_embeddings, seed, device)?;
    if on_host::<B>() {
        model.attach_quant(&config, &src)?;
    }
    Ok(LoadedModel { model, tok, config })
}

/// Whether `B` computes on the host (burn-flex, with or without autodiff): the one backend
/// whose decode steps read GGUF blocks ([`quant`]); a GPU keeps its f32 weights resident.
pub fn on_host<B: Backend>() -> bool {
    #[cfg(feature = "cpu")]
    {
        use std::any::TypeId;
        let t = TypeId::of::<B>();
        t == TypeId::of::<burn::backend::Flex>() || t == TypeId::of::<burn::backend::Autodiff<burn::backend::Flex>>()
    }
    #[cfg(not(feature = "cpu"))]
    false
}

/// The positions a model takes (prompt + response), read as cheaply as possible: the registry
/// for known names, `config.json` for a Hugging Face directory, the GGUF header for a file.
pub fn context_length(mref: &ModelRef) -> Result<usize, ModelError> {
    match mref {
        ModelRef::Known { name, .. } => registry::known(name)
            .map(|k| k.context_length)
            .ok_or_else(|| ModelError::Config { path: name.clone(), message: "not a known model".into() }),
        ModelRef::Random { .. } => Ok(LlamaConfig::tiny(Tok::tiny().vocab_size()).max_position_embeddings),
        ModelRef::Gguf { path, .. } => {
            let g = gguf::Gguf::open_metadata(path)?;
            let arch = g.meta_str("general.architecture")?.to_string();
            Ok(g.meta_u64(&format!("{arch}.context_length")).unwrap_or(4096) as usize)
        }
        ModelRef::HfDir { path, .. } => {
            let p = path.join("config.json");
            let text =
                std::fs::read_to_string(&p).map_err(|e| ModelError::Config { path: p.display().to_string(), message: e.to_string() })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config { path: p.display().to_string(), message: e.to_string() })?;
            Ok(v.get("max_position_embeddings").and_then(|x| x.as_u64()).unwrap_or(4096) as usize)
        }
    }
}

/// The model's architecture without its weights: the registry's for a known name, the
/// GGUF header, or `config.json` (`None`: not readable without the file).
pub fn config(mref: &ModelRef) -> Result<Option<LlamaConfig>, ModelError> {
    Ok(match mref {
        ModelRef::Known { name, .. } => {
            registry::known(name).and_then(|k| LlamaConfig::from_hf(&serde_json::from_str(k.config).ok()?).ok())
        }
        ModelRef::Random { .. } => Some(LlamaConfig::tiny(Tok::tiny().vocab_size())),
        ModelRef::Gguf { path, .. } => Some(LlamaConfig::from_gguf(&gguf::Gguf::open_metadata(path)?)?),
        ModelRef::HfDir { path, .. } => {
            Some(folder::config_of_dir(path).map_err(|e| ModelError::Config { path: path.display().to_string(), message: e.to_string() })?)
        }
    })
}

/// The model's tokenizer without its weights, when it is at hand (a known model not fetched
/// yet has none: `None`).
pub fn tokenizer(mref: &ModelRef) -> Result<Option<Tok>, ModelError> {
    Ok(match mref {
        ModelRef::Known { name, .. } => {
            let Some(k) = registry::known(name) else { return Ok(None) };
            let p = fetch::model_path(k);
            if !p.is_file() {
                return Ok(None);
            }
            Some(Tok::from_gguf(&gguf::Gguf::open_metadata(&p)?)?)
        }
        ModelRef::Random { .. } => Some(Tok::tiny()),
        ModelRef::Gguf { path, .. } => Some(Tok::from_gguf(&gguf::Gguf::open_metadata(path)?)?),
        ModelRef::HfDir { path, .. } => Some(Tok::from_hf_dir(path)?),
    })
}

/// Every token id the tokenizer can produce has a row in the model's embedding.
fn fits(tok: &Tok, config: &LlamaConfig, path: &str) -> Result<(), ModelError> {
    if tok.vocab_size() > config.vocab_size {
        return Err(ModelError::Config {
            path: path.into(),
            message: format!("the tokenizer has {} tokens but the model only {} embeddings", tok.vocab_size(), config.vocab_size),
        });
    }
    Ok(())
}

/// A job generic over the backend; [`dispatch`] runs it on the one a spec names.
pub trait BackendJob {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> Self::Output;
}

/// Point cubecl's compiled-kernel and autotune caches at `<cache>/cubecl`, so only the first
/// run on a machine pays for kernel compilation and autotuning (minutes on CUDA). A cache the
/// user configured in `cubecl.toml` / `burn.toml` is left alone. Idempotent.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn configure_kernel_cache() {
    use cubecl_common::config::RuntimeConfig as _;
    use cubecl_runtime::config::{CubeClRuntimeConfig, cache::CacheConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
        let dir = fetch::cache_dir().join("cubecl");
        if matches!(cfg.autotune.cache, CacheConfig::Target) {
            cfg.autotune.cache = CacheConfig::File(dir.join("autotune"));
        }
        if cfg.compilation.cache.is_none() {
            cfg.compilation.cache = Some(CacheConfig::File(dir.join("kernels")));
        }
        // `set` panics if something already read the config; nothing has before a dispatch.
        let _ = std::panic::catch_unwind(|| CubeClRuntimeConfig::set(cfg));
    });
}

/// Run `job` on `backend` (device `index` for GPUs). A backend that is not compiled in, or a
/// GPU that cannot be opened (no driver, no device), is an error that says so.
pub fn dispatch<J: BackendJob>(backend: crate::spec::BackendKind, index: usize, job: J) -> Result<J::Output, DeviceError> {
    use crate::spec::BackendKind as Bk;
    let _ = index;
    match backend {
        #[cfg(feature = "cpu")]
        Bk::Cpu => Ok(job.run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default(), "cpu")),
        #[cfg(feature = "wgpu")]
        Bk::Wgpu => Ok(job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(open_wgpu(index)?, "wgpu")),
        #[cfg(feature = "cuda")]
        Bk::Cuda => Ok(job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(open_cuda(index)?, "cuda")),
        #[allow(unreachable_patterns)]
        other => Err(DeviceError::NotCompiled(other)),
    }
}

/// Open wgpu device `index` (0: the adapter wgpu ranks best, a discrete GPU where there is
/// one) and check that it computes.
#[cfg(feature = "wgpu")]
pub(crate) fn open_wgpu(index: usize) -> Result<burn::backend::wgpu::WgpuDevice, DeviceError> {
    use burn::backend::wgpu::WgpuDevice;
    configure_kernel_cache();
    let device = if index == 0 { WgpuDevice::DefaultDevice } else { WgpuDevice::DiscreteGpu(index) };
    wgpu_adapter(&device, index)?;
    probe::<burn::backend::Wgpu>(
        &device,
        "wgpu",
        index,
        "a GPU with Vulkan, Metal or DirectX 12 drivers (on Linux: the Vulkan loader libvulkan1 and the vendor's ICD)",
    )?;
    Ok(device)
}

/// Open CUDA device `index` and check that it computes.
#[cfg(feature = "cuda")]
pub(crate) fn open_cuda(index: usize) -> Result<burn::backend::cuda::CudaDevice, DeviceError> {
    configure_kernel_cache();
    let device = burn::backend::cuda::CudaDevice::new(index);
    probe::<burn::backend::Cuda>(&device, "cuda", index, "an NVIDIA GPU with its driver (libcuda) and NVRTC on the library path")?;
    Ok(device)
}

/// The device a GPU backend computes on, as its driver names it: written to `manifest.json`
/// and said at run start, so a result from a software rasterizer (lavapipe, SwiftShader) is
/// never mistaken for one from a GPU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adapter {
    pub name: String,
    /// The graphics API the backend drives it through (`Vulkan`, `Metal`, `Dx12`, ...).
    pub api: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver_info: String,
    /// wgpu's device type: `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub kind: String,
    /// Rendered on the CPU (wgpu's `Cpu` device type: lavapipe/llvmpipe, SwiftShader, WARP).
    pub software: bool,
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.software { "software, on the CPU" } else { "hardware" };
        write!(f, "{} ({}, driver {}", self.name, self.api, self.driver)?;
        if !self.driver_info.is_empty() {
            write!(f, " {}", self.driver_info)?;
        }
        write!(f, "; {how})")
    }
}

#[cfg(feature = "wgpu")]
static ADAPTERS: std::sync::Mutex<Vec<(usize, Adapter)>> = std::sync::Mutex::new(Vec::new());

/// The adapter `dispatch` opened for `backend` device `index` in this process (GPU backends
/// that name one: wgpu), if any.
pub fn adapter(backend: crate::spec::BackendKind, index: usize) -> Option<Adapter> {
    #[cfg(feature = "wgpu")]
    if backend == crate::spec::BackendKind::Wgpu {
        let opened = ADAPTERS.lock().unwrap_or_else(|e| e.into_inner());
        return opened.iter().find(|(i, _)| *i == index).map(|(_, a)| a.clone());
    }
    let _ = (backend, index);
    None
}

/// Open wgpu device `index` once per process through `init_setup`, the one way burn hands out
/// the adapter it picked (a second setup of the same device would panic in cubecl).
#[cfg(feature = "wgpu")]
fn wgpu_adapter(device: &burn::backend::wgpu::WgpuDevice, index: usize) -> Result<(), DeviceError> {
    use burn::backend::wgpu::{RuntimeOptions, graphics::AutoGraphicsApi, init_setup};
    let mut opened = ADAPTERS.lock().unwrap_or_else(|e| e.into_inner());
    if opened.iter().any(|(i, _)| *i == index) {
        return Ok(());
    }
    let setup = quietly(|| init_setup::<AutoGraphicsApi>(device, RuntimeOptions::default()))
        .map_err(|cause| DeviceError::NoAdapter { index, cause })?;
    let info = setup.adapter.get_info();
    let kind = format!("{:?}", info.device_type);
    opened.push((
        index,
        Adapter {
            name: info.name,
            api: format!("{:?}", info.backend),
            driver: info.driver,
            driver_info: info.driver_info,
            software: kind == "Cpu",
            kind,
        },
    ));
    Ok(())
}

/// Run `f`, turning a panic into its message without printing it (cubecl panics, sometimes on
/// its device thread, when a driver or device is missing; the first message is the cause).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    use std::sync::{Arc, Mutex};
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = messages.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let m = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(m.unwrap_or_else(|| "unknown panic".into()));
    }));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    out.map_err(|_| {
        let m = messages.lock().unwrap_or_else(|e| e.into_inner());
        let first = m.first().map(String::as_str).unwrap_or("no message");
        let short: String = first.chars().take(200).collect();
        Panicked(if short.len() < first.len() { format!("{short}...") } else { short })
    })
}

/// Open `device` with one tiny computation. cubecl panics (on its device thread) when a
/// driver or device is missing; this turns that into an error naming the cause.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe<B: Backend>(device: &B::Device, backend: &'static str, index: usize, needs: &'static str) -> Result<(), DeviceError> {
    let ok = quietly(|| {
        let t = Tensor::<B, 1>::ones([4], device).sum();
        t.into_data().convert::<f32>().to_vec::<f32>().map(|v| v.first().copied() == Some(4.0)).unwrap_or(false)
    });
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(DeviceError::Unusable { backend, index }),
        Err(cause) => Err(DeviceError::Open { backend, index, cause, needs }),
    }
}
