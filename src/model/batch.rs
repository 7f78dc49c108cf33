//! The batch layout shared by generation, scoring and training: prompts of different lengths
//! are left-padded so every row's last prompt token sits in the last column; positions restart
//! at 0 after each row's padding and the mask hides padding.

use burn::prelude::*;

/// Additive mask value for hidden positions (finite, so fully masked rows stay finite).
pub const NEG: f32 = -1.0e9;

/// Left-padded token rows, their padding, and RoPE positions.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftPadded {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<i64>,
    pub pads: Vec<usize>,
    pub positions: Vec<i64>,
}

/// Left-pad `rows` with `pad`.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> LeftPadded {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(rows.len() * t);
    let mut positions = Vec::with_capacity(rows.len() * t);
    let mut pads = Vec::with_capacity(rows.len());
    for r in rows {
        let p = t - r.len();
        pads.push(p);
        tokens.extend(std::iter::repeat_n(pad as i64, p).chain(r.iter().map(|&x| x as i64)));
        positions.extend((0..t).map(|j| j.saturating_sub(p) as i64));
    }
    LeftPadded { b: rows.len(), t, tokens, pads, positions }
}

/// Causal mask `[B, 1, T, past + T]` for queries at columns `past..past+T` over keys `0..past+T`,
/// hiding each row's left padding.
pub fn causal_mask(pads: &[usize], past: usize, t: usize) -> Vec<f32> {
    let tk = past + t;
    let mut m = Vec::with_capacity(pads.len() * t * tk);
    for &p in pads {
        for i in 0..t {
            let qi = past + i;
            m.extend((0..tk).map(|j| if j < p || j > qi { NEG } else { 0.0 }));
        }
    }
    m
}

pub fn int_tensor<B: Backend>(v: Vec<i64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn mask_tensor<B: Backend>(v: Vec<f32>, b: usize, t: usize, tk: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(v, [b, 1, t, tk]), device)
}

/// A tensor's data could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("reading tensor data: {0}")]
pub struct TensorReadError(String);

/// Copy a float tensor to the host.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, TensorReadError> {
    t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| TensorReadError(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_masks() {
        let l = left_pad(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(l.tokens, vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(l.pads, vec![0, 2]);
        assert_eq!(l.positions, vec![0, 1, 2, 0, 0, 0]);
        let m = causal_mask(&l.pads, 0, 3);
        // row 1, query 2 (its only real token) sees key 2 only
        assert_eq!(&m[9 + 6..9 + 9], &[NEG, NEG, 0.0]);
        // row 0, query 1 sees keys 0 and 1
        assert_eq!(&m[3..6], &[0.0, 0.0, NEG]);
    }
}
