//! GGUF weight blocks kept as stored, for the products of a decode step on the CPU.
//!
//! Decoding multiplies a few rows (one per sequence) by every weight matrix once per token,
//! so it is bound by reading the weights: the f32 copy is 538 MB per step for SmolLM2-135M,
//! its Q4_1 / Q8_0 blocks 111 MB. [`QuantMatrix::matmul`] dequantizes a tile of blocks into
//! L1 and multiplies it with every row before moving on. The weights it multiplies are the
//! f32 values the loader produces (`q * d + m` rounded the same way, checked bit for bit by a
//! test), so a product differs from the f32 one only in the order its terms are summed.

use rayon::prelude::*;

/// Output features dequantized together: one tile of `TILE x k` f32 stays in L1 while every
/// row of `x` is multiplied with it.
const TILE: usize = 4;

/// A block format the products read directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// 32 weights `nibble * d + m` (ggml type 3).
    Q4_1,
    /// 32 weights `int8 * d` (ggml type 8).
    Q8_0,
}

impl BlockKind {
    pub fn from_ggml(ty: u32) -> Option<BlockKind> {
        match ty {
            3 => Some(BlockKind::Q4_1),
            8 => Some(BlockKind::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block in a GGUF file, and of its payload (the quantized values).
    fn sizes(self) -> (usize, usize) {
        match self {
            BlockKind::Q4_1 => (20, 16),
            BlockKind::Q8_0 => (34, 32),
        }
    }
}

/// An `[n, k]` weight matrix (one row per output feature, as GGUF stores it) in blocks of 32
/// along `k`, with each block's f16 scale (and Q4_1's minimum) widened to f32 once.
pub struct QuantMatrix {
    kind: BlockKind,
    n: usize,
    k: usize,
    /// Block payloads, row after row.
    q: Vec<u8>,
    d: Vec<f32>,
    /// Q4_1's minima; empty for Q8_0.
    m: Vec<f32>,
}

/// Why a GGUF tensor's bytes are not the quantized matrix they are said to be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{k} inputs are not whole blocks of 32")]
    Blocks { k: usize },
    #[error("{len} bytes for {n} x {k} weights in blocks of {block} bytes")]
    Bytes { len: usize, n: usize, k: usize, block: usize },
    #[error("a row order of {len} rows for {n} rows")]
    RowOrder { len: usize, n: usize },
}

impl QuantMatrix {
    /// From a GGUF tensor's bytes, `[n, k]` row-major. `row_order[i]` names the stored row
    /// that becomes row `i` (the loader's un-permutation of q/k heads); `None` keeps the order.
    pub fn from_gguf(kind: BlockKind, raw: &[u8], n: usize, k: usize, row_order: Option<&[usize]>) -> Result<QuantMatrix, QuantError> {
        let (block, payload) = kind.sizes();
        if k == 0 || !k.is_multiple_of(32) {
            return Err(QuantError::Blocks { k });
        }
        let nb = k / 32;
        if raw.len() != n * nb * block {
            return Err(QuantError::Bytes { len: raw.len(), n, k, block });
        }
        if let Some(o) = row_order
            && (o.len() != n || o.iter().any(|&r| r >= n))
        {
            return Err(QuantError::RowOrder { len: o.len(), n });
        }
        let f16 = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let mut q = Vec::with_capacity(n * nb * payload);
        let mut d = Vec::with_capacity(n * nb);
        let mut m = Vec::with_capacity(if kind == BlockKind::Q4_1 { n * nb } else { 0 });
        for i in 0..n {
            let src = row_order.map_or(i, |o| o[i]);
            for b in raw[src * nb * block..(src + 1) * nb * block].chunks_exact(block) {
                d.push(f16(b, 0));
                match kind {
                    BlockKind::Q4_1 => {
                        m.push(f16(b, 2));
                        q.extend_from_slice(&b[4..20]);
                    }
                    BlockKind::Q8_0 => q.extend_from_slice(&b[2..34]),
                }
            }
        }
        Ok(QuantMatrix { kind, n, k, q, d, m })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes read per product.
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * (self.d.len() + self.m.len())
    }

    /// Rows `j0..j0 + TILE` (fewer at the end) as f32 into `out` (`TILE x k`).
    fn dequantize_tile(&self, j0: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match simd() {
            // SAFETY: the CPU has the features these are compiled for.
            Simd::Avx512 => return unsafe { self.tile_avx512(j0, out) },
            Simd::Avx2 => return unsafe { self.tile_avx2(j0, out) },
            Simd::None => {}
        }
        self.tile_portable(j0, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(&self, j0: usize, out: &mut [f32]) {
        self.tile_portable(j0, out)
    }

    /// Element for element the arithmetic of `gguf::dequantize` (the loader's f32 weights).
    #[inline(always)]
    fn tile_portable(&self, j0: usize, out: &mut [f32]) {
        let nb = self.k / 32;
        for t in 0..TILE.min(self.n - j0) {
            for b in 0..nb {
                let blk = (j0 + t) * nb + b;
                let o = &mut out[t * self.k + b * 32..][..32];
                let d = self.d[blk];
                match self.kind {
                    BlockKind::Q4_1 => {
                        let (q, mn) = (&self.q[blk * 16..][..16], self.m[blk]);
                        for i in 0..16 {
                            o[i] = (q[i] & 0x0f) as f32 * d + mn;
                            o[i + 16] = (q[i] >> 4) as f32 * d + mn;
                        }
                    }
                    BlockKind::Q8_0 => {
                        for (o, &q) in o.iter_mut().zip(&self.q[blk * 32..][..32]) {
                            *o = q as i8 as f32 * d;
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile_avx512(&self, j0: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let nb = self.k / 32;
        let rows = TILE.min(self.n - j0);
        assert!(out.len() >= rows * self.k);
        let (q, o) = (self.q.as_ptr(), out.as_mut_ptr());
        // SAFETY: block `blk < n * nb` has its payload at `q[blk * payload..]` (checked at
        // construction), and `out` holds `rows * k` floats (asserted above).
        unsafe {
            for t in 0..rows {
                for b in 0..nb {
                    let blk = (j0 + t) * nb + b;
                    let dst = o.add(t * self.k + b * 32);
                    let d = _mm512_set1_ps(self.d[blk]);
                    // Multiply, then add: two roundings, as `q * d + m` rounds on the host.
                    match self.kind {
                        BlockKind::Q4_1 => {
                            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(q.add(blk * 16) as *const __m128i));
                            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0f)));
                            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
                            let m = _mm512_set1_ps(self.m[blk]);
                            _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_mul_ps(lo, d), m));
                            _mm512_storeu_ps(dst.add(16), _mm512_add_ps(_mm512_mul_ps(hi, d), m));
                        }
                        BlockKind::Q8_0 => {
                            let p = q.add(blk * 32) as *const __m128i;
                            let a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)));
                            let c = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1))));
                            _mm512_storeu_ps(dst, _mm512_mul_ps(a, d));
                            _mm512_storeu_ps(dst.add(16), _mm512_mul_ps(c, d));
                        }
                    }
                }
            }
        }
    }

    /// `x [rows, k] W^T -> [rows, n]`, both row-major.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.k, "x must be [rows, k]");
        let (n, k) = (self.n, self.k);
        if rows == 0 || n == 0 {
            return vec![0f32; rows * n];
        }
        // Output features per task: a few tasks per thread, whole tiles.
        let per = n.div_ceil(4 * rayon::current_num_threads()).next_multiple_of(TILE).max(4 * TILE);
        // Computed feature-major (`[n, rows]`) so tasks own contiguous slices; transposed after.
        let mut yt = vec![0f32; n * rows];
        yt.par_chunks_mut(per * rows).enumerate().for_each(|(c, out)| {
            let mut tile = vec![0f32; TILE * k];
            let j_start = c * per;
            for (t, out) in out.chunks_mut(TILE * rows).enumerate() {
                let j0 = j_start + t * TILE;
                let width = TILE.min(n - j0);
                self.dequantize_tile(j0, &mut tile);
                dot_tile(x, rows, k, &tile[..width * k], width, out);
            }
        });
        let mut y = vec![0f32; rows * n];
        // Row by row: sequential writes (the other order strides by n and misses the TLB).
        for (r, yr) in y.chunks_exact_mut(n).enumerate() {
            for (j, v) in yr.iter_mut().enumerate() {
                *v = yt[j * rows + r];
            }
        }
        y
    }
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({:?}, {} x {})", self.kind, self.n, self.k)
    }
}

/// `out[t * rows + r] = x[r] . w[t]` for the `width` weight rows of a tile.
fn dot_tile(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has the features; the slices have the lengths the kernels read.
        Simd::Avx512 if width == TILE => return unsafe { dot_tile_avx512(x, rows, k, w, out) },
        Simd::Avx512 | Simd::Avx2 => return unsafe { dot_tile_avx2(x, rows, k, w, width, out) },
        Simd::None => {}
    }
    dot_tile_portable(x, rows, k, w, width, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, out: &mut [f32]) {
    dot_tile_portable(x, rows, k, w, width, out)
}

#[inline(always)]
fn dot_tile_portable(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, out: &mut [f32]) {
    for t in 0..width {
        let wt = &w[t * k..(t + 1) * k];
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            // 16 partial sums, like a vector register, so LLVM can vectorize the loop.
            let mut acc = [0f32; 16];
            for (xc, wc) in xr.chunks_exact(16).zip(wt.chunks_exact(16)) {
                for i in 0..16 {
                    acc[i] += xc[i] * wc[i];
                }
            }
            out[t * rows + r] = acc.iter().sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_tile_avx512(x: &[f32], rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
    assert!(x.len() >= rows * k && w.len() >= TILE * k && out.len() >= TILE * rows && k.is_multiple_of(16));
    let mut r = 0;
    // SAFETY (all calls): rows `r..r + R` of `x` and the tile's TILE rows of `w` are in bounds
    // (asserted above), and `k` is a multiple of 16.
    unsafe {
        while r + 4 <= rows {
            dot_rows_avx512::<4>(x, r, rows, k, w, out);
            r += 4;
        }
        match rows - r {
            3 => dot_rows_avx512::<3>(x, r, rows, k, w, out),
            2 => dot_rows_avx512::<2>(x, r, rows, k, w, out),
            1 => dot_rows_avx512::<1>(x, r, rows, k, w, out),
            _ => {}
        }
    }
}

/// Rows `r0..r0 + R` of `x` against the TILE weight rows: R x TILE accumulators, each weight
/// and each row of `x` loaded once per 16 columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dot_rows_avx512<const R: usize>(x: &[f32], r0: usize, rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's bounds: rows `r0..r0 + R` of `x` ([rows, k]) and TILE rows of `w`,
    // `k` a multiple of 16, `out` [TILE, rows].
    unsafe {
        let (xp, wp) = (x.as_ptr().add(r0 * k), w.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); TILE]; R];
        let mut p = 0;
        while p < k {
            let wv: [__m512; TILE] = std::array::from_fn(|t| _mm512_loadu_ps(wp.add(t * k + p)));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(xp.add(r * k + p));
                for t in 0..TILE {
                    a[t] = _mm512_fmadd_ps(xv, wv[t], a[t]);
                }
            }
            p += 16;
        }
        for (r, a) in acc.iter().enumerate() {
            for t in 0..TILE {
                out[t * rows + r0 + r] = _mm512_reduce_add_ps(a[t]);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Simd {
    Avx512,
    Avx2,
    None,
}

#[cfg(target_arch = "x86_64")]
fn simd() -> Simd {
    static HAS: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            Simd::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Simd::Avx2
        } else {
            Simd::None
        }
    })
}

/// The instruction set the products run on here (for benchmark reports).
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        Simd::Avx512 => return "avx512",
        Simd::Avx2 => return "avx2",
        Simd::None => {}
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random GGUF bytes for an `[n, k]` matrix with realistic scales.
    fn random_blocks(kind: BlockKind, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (block, _) = kind.sizes();
        let mut raw = Vec::with_capacity(n * k / 32 * block);
        for _ in 0..n * k / 32 {
            raw.extend(half::f16::from_f32(rng.random_range(0.001..0.02)).to_le_bytes());
            if kind == BlockKind::Q4_1 {
                raw.extend(half::f16::from_f32(rng.random_range(-0.1..0.0)).to_le_bytes());
            }
            raw.extend((0..block - raw.len() % block).map(|_| rng.random::<u8>()));
        }
        raw
    }

    /// Random blocks of an `[n, k]` matrix, the f32 weights the loader reads from them, and the
    /// matrix built from them.
    fn fixture(kind: BlockKind, n: usize, k: usize, seed: u64) -> (Vec<f32>, QuantMatrix) {
        let raw = random_blocks(kind, n, k, seed);
        let mut w = vec![0f32; n * k];
        let ty = match kind {
            BlockKind::Q4_1 => 3,
            BlockKind::Q8_0 => 8,
        };
        crate::model::gguf::dequantize(ty, &raw, &mut w);
        (w, QuantMatrix::from_gguf(kind, &raw, n, k, None).unwrap())
    }

    #[test]
    fn tiles_are_the_loaders_weights_bit_for_bit() {
        for kind in [BlockKind::Q4_1, BlockKind::Q8_0] {
            let (n, k) = (7, 96);
            let (want, qm) = fixture(kind, n, k, 1);
            for j0 in (0..n).step_by(TILE) {
                let width = TILE.min(n - j0);
                let (mut fast, mut portable) = (vec![0f32; TILE * k], vec![0f32; TILE * k]);
                qm.dequantize_tile(j0, &mut fast);
                qm.tile_portable(j0, &mut portable);
                let want = &want[j0 * k..(j0 + width) * k];
                assert!(fast[..width * k].iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?} tile {j0}");
                assert!(portable[..width * k].iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?} tile {j0}");
            }
        }
    }

    #[test]
    fn product_matches_the_dequantized_matrix() {
        for kind in [BlockKind::Q4_1, BlockKind::Q8_0] {
            // odd sizes: a partial last tile, row groups of 4 plus a remainder
            let (n, k) = (37, 160);
            let (w, qm) = fixture(kind, n, k, 2);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            assert!(qm.matmul(&[], 0).is_empty());
            for rows in [1, 3, 4, 7, 9] {
                let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y = qm.matmul(&x, rows);
                for r in 0..rows {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64).sum();
                        let mag: f64 = (0..k).map(|i| (x[r * k + i] as f64 * w[j * k + i] as f64).abs()).sum();
                        let err = (y[r * n + j] as f64 - exact).abs();
                        assert!(err <= 1e-6 * mag.max(1e-3), "{kind:?} rows {rows} [{r}, {j}]: {} vs {exact}", y[r * n + j]);
                    }
                }
            }
        }
    }

    #[test]
    fn row_order_picks_stored_rows_and_bad_shapes_are_refused() {
        let (n, k) = (4, 32);
        let raw = random_blocks(BlockKind::Q8_0, n, k, 4);
        let plain = QuantMatrix::from_gguf(BlockKind::Q8_0, &raw, n, k, None).unwrap();
        let flipped = QuantMatrix::from_gguf(BlockKind::Q8_0, &raw, n, k, Some(&[3, 2, 1, 0])).unwrap();
        let x = vec![1.0f32; k];
        let (a, b) = (plain.matmul(&x, 1), flipped.matmul(&x, 1));
        assert_eq!(a.iter().rev().copied().collect::<Vec<_>>(), b);
        assert!(QuantMatrix::from_gguf(BlockKind::Q8_0, &raw, n, 48, None).unwrap_err().to_string().contains("blocks of 32"));
        assert!(QuantMatrix::from_gguf(BlockKind::Q8_0, &raw[1..], n, k, None).is_err());
        assert!(QuantMatrix::from_gguf(BlockKind::Q8_0, &raw, n, k, Some(&[0, 1])).is_err());
    }
}
