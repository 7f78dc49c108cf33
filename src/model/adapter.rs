//! LoRA adapters (and the value head) saved to and loaded from safetensors.
//!
//! Only the trained tensors are written: `layers.<i>.<proj>.lora_a|lora_b`,
//! `lm_head.lora_a|lora_b`, `value_head`. The frozen base is identified by the plan, not
//! copied into every checkpoint.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::prelude::*;

use super::llama::{Llama, LoraLinear, PROJECTIONS};

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{context}: {message}")]
    Io { context: String, message: String },
    #[error("adapter file `{path}`: {message}")]
    Format { path: String, message: String },
}

fn projections<B: Backend>(m: &Llama<B>) -> Vec<(String, &LoraLinear<B>)> {
    let mut v = Vec::new();
    for (i, b) in m.blocks.iter().enumerate() {
        for (l, (site, _, _)) in b.projections().into_iter().zip(PROJECTIONS) {
            v.push((format!("layers.{i}.{site}"), l));
        }
    }
    v.push(("lm_head".into(), &m.lm_head));
    v
}

/// The trained tensors of `m` by name, as (shape, data).
pub fn trained_tensors<B: Backend>(m: &Llama<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let host = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<f32>) {
        let dims = t.dims().to_vec();
        (dims, t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default())
    };
    let mut out = Vec::new();
    for (name, l) in projections(m) {
        if let Some(lora) = &l.lora {
            let (s, d) = host(lora.a.val());
            out.push((format!("{name}.lora_a"), s, d));
            let (s, d) = host(lora.b.val());
            out.push((format!("{name}.lora_b"), s, d));
        }
    }
    if let Some(v) = &m.value_head {
        let (s, d) = host(v.val());
        out.push(("value_head".into(), s, d));
    }
    out
}

/// Write the adapter of `m` to `path` (atomically).
pub fn save<B: Backend>(m: &Llama<B>, path: &Path, metadata: HashMap<String, String>) -> Result<(), AdapterError> {
    let tensors = trained_tensors(m);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| AdapterError::Format { path: path.display().to_string(), message: e.to_string() })?;
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| AdapterError::Format { path: path.display().to_string(), message: e.to_string() })?;
    crate::fsx::write_atomic(path, &data)
        .map_err(|e| AdapterError::Io { context: format!("writing {}", path.display()), message: e.to_string() })
}

/// Load an adapter saved by [`save`] into `m`, which must have adapters of the same shapes.
pub fn load<B: Backend>(mut m: Llama<B>, path: &Path) -> Result<Llama<B>, AdapterError> {
    let bytes =
        std::fs::read(path).map_err(|e| AdapterError::Io { context: format!("reading {}", path.display()), message: e.to_string() })?;
    let fmt = |message: String| AdapterError::Format { path: path.display().to_string(), message };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
    let device = m.embed.val().device();
    let get = |name: &str, want: [usize; 2]| -> Result<Tensor<B, 2>, AdapterError> {
        let t = st.tensor(name).map_err(|_| fmt(format!("no tensor `{name}`")))?;
        if t.shape() != want {
            return Err(fmt(format!("`{name}` has shape {:?}, the model expects {want:?}", t.shape())));
        }
        let v = super::weights::to_f32(t.dtype(), t.data()).map_err(|e| fmt(e.to_string()))?;
        Ok(Tensor::from_data(TensorData::new(v, want), &device))
    };
    let set = |l: &mut LoraLinear<B>, name: &str| -> Result<(), AdapterError> {
        if let Some(lora) = l.lora.as_mut() {
            let (a, b) = (lora.a.val().dims(), lora.b.val().dims());
            // Keep the parameter ids: saved optimizer state refers to them.
            lora.a = Param::initialized(lora.a.id, get(&format!("{name}.lora_a"), [a[0], a[1]])?.require_grad());
            lora.b = Param::initialized(lora.b.id, get(&format!("{name}.lora_b"), [b[0], b[1]])?.require_grad());
        }
        Ok(())
    };
    for (i, b) in m.blocks.iter_mut().enumerate() {
        for (l, (site, _, _)) in b.projections_mut().into_iter().zip(PROJECTIONS) {
            set(l, &format!("layers.{i}.{site}"))?;
        }
    }
    set(&mut m.lm_head, "lm_head")?;
    if let Some(v) = m.value_head.as_mut() {
        let d = v.val().dims();
        *v = Param::initialized(v.id, get("value_head", [d[0], d[1]])?.require_grad());
    }
    Ok(m)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::model::LoraConfig;
    use crate::model::llama::tests::{TB, close, full_logits, tiny};
    use crate::spec::LoraTarget;

    #[test]
    fn adapters_round_trip_through_safetensors() {
        let cfg = LoraConfig { rank: 2, alpha: 4.0, targets: vec![LoraTarget::Q, LoraTarget::LmHead] };
        let dev = Default::default();
        let mut m = tiny(Some(&cfg)).with_value_head(3, &dev);
        let l = m.blocks[1].q.lora.as_mut().unwrap();
        l.b = Param::from_tensor(Tensor::<TB, 2>::ones(l.b.val().dims(), &dev).mul_scalar(0.1));
        let dir = std::env::temp_dir().join(format!("mpo-adapter-{}", std::process::id()));
        let p = dir.join("adapter.safetensors");
        save(&m, &p, Default::default()).unwrap();
        let fresh = load(tiny(Some(&cfg)).with_value_head(99, &dev), &p).unwrap();
        let rows = vec![vec![5u32, 9, 12, 40]];
        assert!(close(&full_logits(&fresh, &rows, true), &full_logits(&m, &rows, true), 1e-6));
        assert_eq!(trained_tensors(&fresh), trained_tensors(&m));
        // a model without the adapter's shapes is refused with a message
        let other = LoraConfig { rank: 3, ..cfg };
        assert!(load(tiny(Some(&other)), &p).is_err());
    }
}
