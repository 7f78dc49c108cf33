//! Two questions about the CPU backend's matrix products, at SmolLM2-135M's shapes, answered
//! with the gemm crate (0.19, what burn-flex 0.21 calls) on this machine:
//!
//! 1. `backward`: how much slower is `dY W^T` through a transposed view of a row-major weight
//!    (what autodiff's matmul backward hands gemm) than on a contiguous transposed copy?
//! 2. `decode`: one generation step's weight products (30 layers x 7 projections + the LM head,
//!    538 MB, all cold in cache) at 1 and 8 rows: gemm against a hand-written AVX-512 kernel
//!    that streams each weight row once.
//!
//! 3. `quant`: the same step with the weights kept as the GGUF stores them (Q4_1 layers, Q8_0 LM
//!    head) and dequantized block by block inside the product, against gemm on the f32 copy.
//!
//! 4. `blas`: the training pass's products (forward `X W`, backward `dY W^T` through the
//!    transposed view) with gemm against OpenBLAS's `cblas_sgemm` (Debian's
//!    `libopenblas0-pthread`), run two ways: OpenBLAS's own threads, and one OpenBLAS thread per
//!    rayon task over row blocks of the output (how the vendored burn-flex calls it).
//!
//! 5. `fresh`: the LM head's product into a reused output against a freshly allocated one.
//! 6. `one`: one layer product, to compare build profiles.
//!
//! Medians of alternating repetitions: this is a shared VM and timings move by 20%.
use rayon::prelude::*;
use std::time::Instant;

unsafe fn gemm(m: usize, n: usize, k: usize, dst: *mut f32, lhs: (*const f32, isize, isize), rhs: (*const f32, isize, isize)) {
    // burn-flex's rule: rayon above 192^3 multiply-adds.
    let par = if m * n * k >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    unsafe {
        gemm::gemm(m, n, k, dst, 1, n as isize, false, lhs.0, lhs.1, lhs.2, rhs.0, rhs.1, rhs.2, 0.0f32, 1.0f32, false, false, false, par)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn filled(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 9) as f32 / 8388608.0 - 1.0
        })
        .collect()
}

fn backward() {
    println!("backward: dY [m, k] x W^T, W stored row-major [n, k]");
    for &(m, k, n, what) in &[
        (1016usize, 49152usize, 576usize, "LM head"),
        (1024, 1536, 576, "gate / up"),
        (1024, 576, 1536, "down"),
        (1024, 576, 576, "q / o"),
    ] {
        let dy = filled(m * k, 1);
        let w = filled(n * k, 2);
        let mut wt = vec![0f32; n * k];
        for i in 0..n {
            for j in 0..k {
                wt[j * n + i] = w[i * k + j];
            }
        }
        let mut out = vec![0f32; m * n];
        let (mut view, mut copy) = (vec![], vec![]);
        for rep in 0..8 {
            let t = Instant::now();
            unsafe { gemm(m, n, k, out.as_mut_ptr(), (dy.as_ptr(), 1, k as isize), (w.as_ptr(), k as isize, 1)) };
            let a = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            unsafe { gemm(m, n, k, out.as_mut_ptr(), (dy.as_ptr(), 1, k as isize), (wt.as_ptr(), 1, n as isize)) };
            let b = t.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                view.push(a);
                copy.push(b);
            }
        }
        let (a, b) = (median(view), median(copy));
        println!("  {what:10} [{m}, {k}] x [{k}, {n}]: transposed view {a:.2} ms, contiguous copy {b:.2} ms, {:.2}x", a / b);
    }
}

#[cfg(target_arch = "x86_64")]
mod stream {
    use std::arch::x86_64::*;
    /// Columns per task: `rows x NC` accumulators stay in L1.
    pub const NC: usize = 512;

    /// `y[r, n0..n0+nc] = sum_k x[r, k] w[k, n0..n0+nc]`, reading each weight row slice once,
    /// four rows at a time.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chunk<const M: usize>(x: *const f32, w: *const f32, k: usize, n: usize, n0: usize, nc: usize, y: *mut f32) {
        unsafe {
            let mut acc = [[0f32; NC]; M];
            let nv = nc / 16;
            let tail = nc % 16;
            let tmask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
            let mut kk = 0;
            while kk < k {
                let rows = (k - kk).min(4);
                let r: [*const f32; 4] = std::array::from_fn(|i| w.add((kk + i.min(rows - 1)) * n + n0));
                for (m, row) in acc.iter_mut().enumerate() {
                    let xs: [__m512; 4] =
                        std::array::from_fn(|i| if i < rows { _mm512_set1_ps(*x.add(m * k + kk + i)) } else { _mm512_setzero_ps() });
                    let a = row.as_mut_ptr();
                    for j in 0..=nv {
                        let o = 16 * j;
                        let mask = if j < nv { 0xffff } else { tmask };
                        if mask == 0 {
                            continue;
                        }
                        let mut s = _mm512_maskz_loadu_ps(mask, a.add(o));
                        for i in 0..4 {
                            s = _mm512_fmadd_ps(xs[i], _mm512_maskz_loadu_ps(mask, r[i].add(o)), s);
                        }
                        _mm512_mask_storeu_ps(a.add(o), mask, s);
                    }
                }
                kk += 4;
            }
            for (m, row) in acc.iter().enumerate() {
                std::ptr::copy_nonoverlapping(row.as_ptr(), y.add(m * n + n0), nc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn streamed<const M: usize>(x: &[f32], w: &[f32], k: usize, n: usize, y: &mut [f32]) {
    let chunks = n.div_ceil(stream::NC);
    let (xp, wp, yp) = (x.as_ptr() as usize, w.as_ptr() as usize, y.as_mut_ptr() as usize);
    let run = |c: usize| {
        let n0 = c * stream::NC;
        let nc = stream::NC.min(n - n0);
        unsafe { stream::chunk::<M>(xp as *const f32, wp as *const f32, k, n, n0, nc, yp as *mut f32) };
    };
    if k * n >= 1 << 17 { (0..chunks).into_par_iter().for_each(run) } else { (0..chunks).for_each(run) }
}

/// One decode step's layer products `(k, n, seed)`: 30 layers x q, k, v, o, gate, up, down.
fn layer_shapes() -> Vec<(usize, usize, u32)> {
    let one = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)];
    (0..30).flat_map(|_| one).zip(4..).map(|((k, n), seed)| (k, n, seed)).collect()
}

fn decode() {
    let mut ws: Vec<(usize, usize, Vec<f32>)> = layer_shapes().into_iter().map(|(k, n, seed)| (k, n, filled(k * n, seed))).collect();
    ws.push((576, 49152, filled(576 * 49152, 99)));
    let mb = ws.iter().map(|w| w.2.len() * 4).sum::<usize>() as f64 / 1e6;
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    println!("decode: one step's weight products ({mb:.0} MB: 30 layers x q, k, v, o, gate, up, down + LM head)");
    fn one<const M: usize>(ws: &[(usize, usize, Vec<f32>)], avx512: bool) {
        let x = filled(M * 1536, 7);
        let mut y1 = vec![0f32; M * 49152];
        let mut y2 = vec![0f32; M * 49152];
        let (mut a, mut b) = (vec![], vec![]);
        for rep in 0..6 {
            let t = Instant::now();
            for (k, n, w) in ws {
                unsafe { gemm(M, *n, *k, y1.as_mut_ptr(), (x.as_ptr(), 1, *k as isize), (w.as_ptr(), 1, *n as isize)) };
            }
            let ta = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                for (k, n, w) in ws {
                    streamed::<M>(&x[..M * k], w, *k, *n, &mut y2[..M * n]);
                }
            }
            let tb = t.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                a.push(ta);
                b.push(tb);
            }
        }
        let (a, b) = (median(a), median(b));
        if avx512 {
            let d = y1.iter().zip(&y2).map(|(p, q)| ((p - q) / p.abs().max(1.0)).abs()).fold(0.0f32, f32::max);
            println!("  {M} row(s): gemm {a:.1} ms, streaming AVX-512 kernel {b:.1} ms ({:.2}x; LM head max rel. diff {d:.1e})", a / b);
        } else {
            println!("  {M} row(s): gemm {a:.1} ms (no AVX-512 here: the streaming kernel is skipped)");
        }
    }
    one::<1>(&ws, avx512);
    one::<8>(&ws, avx512);
}

/// Weights as GGUF blocks of 32 along the input axis, one row per output feature, with each
/// block's f16 scale (and Q4_1's minimum) widened to f32 once at load.
struct QRows {
    n: usize,
    k: usize,
    /// Q4_1: 16 bytes of nibbles per block; Q8_0: 32 signed bytes per block.
    q: Vec<u8>,
    d: Vec<f32>,
    /// Q4_1's minimum per block; empty for Q8_0.
    m: Vec<f32>,
}

impl QRows {
    /// Random blocks and the f32 matrix they dequantize to, `[k, n]` (gemm's layout).
    fn random(k: usize, n: usize, q8: bool, seed: u32) -> (QRows, Vec<f32>) {
        let nb = k / 32;
        let bytes = filled(n * k, seed);
        let scales = filled(n * nb * 2, seed + 1000);
        let per = if q8 { 32 } else { 16 };
        let q: Vec<u8> = (0..n * nb * per).map(|i| ((bytes[i] + 1.0) * 127.9) as u8).collect();
        let d: Vec<f32> = (0..n * nb).map(|i| half::f16::from_f32(scales[i] * 0.01).to_f32()).collect();
        let m: Vec<f32> = if q8 { vec![] } else { (0..n * nb).map(|i| half::f16::from_f32(scales[n * nb + i] * 0.05).to_f32()).collect() };
        let mut w = vec![0f32; k * n];
        for j in 0..n {
            for b in 0..nb {
                for i in 0..32 {
                    let v = if q8 {
                        q[(j * nb + b) * 32 + i] as i8 as f32 * d[j * nb + b]
                    } else {
                        let byte = q[(j * nb + b) * 16 + i % 16];
                        let nib = if i < 16 { byte & 15 } else { byte >> 4 };
                        nib as f32 * d[j * nb + b] + m[j * nb + b]
                    };
                    w[(b * 32 + i) * n + j] = v;
                }
            }
        }
        (QRows { n, k, q, d, m }, w)
    }
}

/// `y [M, n] = x [M, k] W`, rows `j0..j1` of W dequantized block by block (the same f32 weights
/// as the dequantized copy: `q * d + m` rounded twice, as the GGUF reader computes them).
/// `y` points at row 0 of the output, `[M, n]`; callers give each thread its own columns.
///
/// # Safety
/// `y` must be valid for writes at `r * n + j` for `r < M`, `j0 <= j < j1`.
#[inline(always)]
unsafe fn q_rows<const M: usize>(w: &QRows, x: &[f32], j0: usize, j1: usize, y: *mut f32) {
    let (k, n, nb) = (w.k, w.n, w.k / 32);
    let q8 = w.m.is_empty();
    for j in j0..j1 {
        let mut acc = [[0f32; 16]; M];
        for b in 0..nb {
            let d = w.d[j * nb + b];
            let mut wv = [0f32; 32];
            if q8 {
                let q = &w.q[(j * nb + b) * 32..][..32];
                for i in 0..32 {
                    wv[i] = q[i] as i8 as f32 * d;
                }
            } else {
                let mn = w.m[j * nb + b];
                let q = &w.q[(j * nb + b) * 16..][..16];
                for i in 0..16 {
                    wv[i] = (q[i] & 15) as f32 * d + mn;
                    wv[i + 16] = (q[i] >> 4) as f32 * d + mn;
                }
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xr = &x[r * k + b * 32..][..32];
                for i in 0..16 {
                    a[i] = wv[i].mul_add(xr[i], a[i]);
                    a[i] = wv[i + 16].mul_add(xr[i + 16], a[i]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe { *y.add(r * n + j) = a.iter().sum() };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,avx2")]
unsafe fn q_rows_avx512<const M: usize>(w: &QRows, x: &[f32], j0: usize, j1: usize, y: *mut f32) {
    unsafe { q_rows::<M>(w, x, j0, j1, y) }
}

/// Rows of `x` in groups of (up to) 8 per 64-feature chunk of W: the chunk stays in cache
/// while each group reads it; chunks run on rayon's pool.
fn q_product<const M: usize>(w: &QRows, x: &[f32], y: &mut [f32], avx512: bool) {
    const CHUNK: usize = 64;
    let chunks = w.n.div_ceil(CHUNK);
    let (k, n) = (w.k, w.n);
    let yp = y.as_mut_ptr() as usize;
    let run = |c: usize| {
        let (j0, j1) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        for g in (0..M).step_by(8) {
            let rows = (M - g).min(8);
            // chunks write disjoint columns of y
            let y = unsafe { (yp as *mut f32).add(g * n) };
            let x = &x[g * k..(g + rows) * k];
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                unsafe {
                    match rows {
                        8 => q_rows_avx512::<8>(w, x, j0, j1, y),
                        1 => q_rows_avx512::<1>(w, x, j0, j1, y),
                        _ => unreachable!("the probe measures 1, 8 and 32 rows"),
                    }
                }
                continue;
            }
            let _ = avx512;
            unsafe {
                match rows {
                    8 => q_rows::<8>(w, x, j0, j1, y),
                    1 => q_rows::<1>(w, x, j0, j1, y),
                    _ => unreachable!("the probe measures 1, 8 and 32 rows"),
                }
            }
        }
    };
    (0..chunks).into_par_iter().for_each(run);
}

fn quant() {
    let mut ws: Vec<(usize, usize, (QRows, Vec<f32>))> =
        layer_shapes().into_iter().map(|(k, n, seed)| (k, n, QRows::random(k, n, false, seed))).collect();
    ws.push((576, 49152, QRows::random(576, 49152, true, 99)));
    let f32_mb = ws.iter().map(|w| w.2.1.len() * 4).sum::<usize>() as f64 / 1e6;
    let q_mb = ws.iter().map(|w| w.2.0.q.len() + 4 * (w.2.0.d.len() + w.2.0.m.len())).sum::<usize>() as f64 / 1e6;
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    println!(
        "quant: one step's weight products, f32 copy ({f32_mb:.0} MB) through gemm vs GGUF blocks ({q_mb:.0} MB) dequantized in the product (avx512: {avx512})"
    );
    type Layer = (usize, usize, (QRows, Vec<f32>));
    fn one<const M: usize>(ws: &[Layer], avx512: bool) {
        let x = filled(M * 1536, 7);
        let mut y1 = vec![0f32; M * 49152];
        let mut y2 = vec![0f32; M * 49152];
        let (mut a, mut b, mut worst) = (vec![], vec![], 0f32);
        for rep in 0..6 {
            let t = Instant::now();
            for (k, n, (_, w)) in ws {
                unsafe { gemm(M, *n, *k, y1.as_mut_ptr(), (x.as_ptr(), 1, *k as isize), (w.as_ptr(), 1, *n as isize)) };
            }
            let ta = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            for (k, n, (q, _)) in ws {
                q_product::<M>(q, &x[..M * k], &mut y2[..M * n], avx512);
            }
            let tb = t.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                a.push(ta);
                b.push(tb);
            }
            if rep == 5 {
                // the last product (LM head) is in both buffers
                let scale = y1.iter().fold(0f32, |s, v| s.max(v.abs()));
                worst = y1.iter().zip(&y2).map(|(p, q)| (p - q).abs() / scale).fold(0.0, f32::max);
            }
        }
        let (a, b) = (median(a), median(b));
        println!("  {M:>2} row(s): gemm {a:.1} ms, blocks {b:.1} ms ({:.2}x); LM head max diff {worst:.1e} of its largest value", a / b);
    }
    one::<1>(&ws, avx512);
    one::<8>(&ws, avx512);
    one::<32>(&ws, avx512);
}

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(order: i32, ta: i32, tb: i32, m: i32, n: i32, k: i32, alpha: f32, a: *const f32, lda: i32, b: *const f32, ldb: i32, beta: f32, c: *mut f32, ldc: i32);
    fn openblas_set_num_threads(n: i32);
}

/// Row-major `C[m, n] = A[m, k] op(B)`, `B` stored `[k, n]` or (transposed) `[n, k]`.
unsafe fn sgemm(m: usize, n: usize, k: usize, a: *const f32, b: *const f32, b_t: bool, c: *mut f32) {
    let (tb, ldb) = if b_t { (112, k) } else { (111, n) };
    unsafe { cblas_sgemm(101, 111, tb, m as i32, n as i32, k as i32, 1.0, a, k as i32, b, ldb as i32, 0.0, c, n as i32) }
}

/// One single-threaded OpenBLAS call per row block, the blocks on rayon's pool.
fn sgemm_split(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], b_t: bool, c: &mut [f32]) {
    let parts = rayon::current_num_threads();
    let rows = m.div_ceil(parts).next_multiple_of(16);
    let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
    c.par_chunks_mut(rows * n).enumerate().for_each(|(i, cb)| {
        let r = cb.len() / n;
        unsafe { sgemm(r, n, k, (ap as *const f32).add(i * rows * k), bp as *const f32, b_t, cb.as_mut_ptr()) }
    });
}

fn blas() {
    println!("blas: GFLOP/s (2 m n k / s), medians of 7; gemm = the gemm crate with rayon");
    let threads = rayon::current_num_threads() as i32;
    for &(m, k, n, t, what) in &[
        (1016usize, 576usize, 49152usize, false, "head fwd"),
        (1016, 49152, 576, true, "head bwd"),
        (1024, 576, 1536, false, "up fwd"),
        (1024, 1536, 576, true, "up bwd"),
        (1024, 1536, 576, false, "down fwd"),
        (1024, 576, 1536, true, "down bwd"),
        (1024, 576, 576, false, "q fwd"),
        (1024, 576, 576, true, "q bwd"),
        (1024, 576, 192, false, "k fwd"),
    ] {
        let a = filled(m * k, 1);
        let b = filled(n * k, 2);
        let mut c = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let mut c3 = vec![0f32; m * n];
        let (mut g, mut o, mut s) = (vec![], vec![], vec![]);
        let rhs = if t { (b.as_ptr(), k as isize, 1) } else { (b.as_ptr(), 1, n as isize) };
        for rep in 0..8 {
            let t0 = Instant::now();
            unsafe { gemm(m, n, k, c.as_mut_ptr(), (a.as_ptr(), 1, k as isize), rhs) };
            let t1 = Instant::now();
            unsafe { openblas_set_num_threads(threads) };
            unsafe { sgemm(m, n, k, a.as_ptr(), b.as_ptr(), t, c2.as_mut_ptr()) };
            let t2 = Instant::now();
            unsafe { openblas_set_num_threads(1) };
            sgemm_split(m, n, k, &a, &b, t, &mut c3);
            let t3 = Instant::now();
            if rep > 0 {
                g.push((t1 - t0).as_secs_f64());
                o.push((t2 - t1).as_secs_f64());
                s.push((t3 - t2).as_secs_f64());
            }
        }
        let gf = |v: Vec<f64>| 2.0 * (m * n * k) as f64 / median(v) / 1e9;
        let same = c2 == c3;
        let diff = c.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!(
            "  {what:9} [{m}, {k}] x [{k}, {n}]: gemm {:6.1}, openblas {:6.1}, openblas split {:6.1}  (split == whole: {same}; max |gemm - openblas| {diff:.1e})",
            gf(g), gf(o), gf(s)
        );
    }
}

/// 7. `split`: gemm's own threads (`Rayon(0)`: for a row-major lhs of up to `2 mc` rows it packs
///    the whole lhs on the calling thread before the threads start) against one single-threaded
///    gemm call per rayon task over row blocks of the output, each packing its own rows.
fn split() {
    println!("split: GFLOP/s, gemm's threads vs one gemm per row block (medians of 9)");
    let threads = rayon::current_num_threads();
    for &(m, k, n, lhs_t, what) in &[
        (1024usize, 576usize, 1536usize, false, "X W (gate/up)"),
        (1024, 1536, 576, false, "X W (down)"),
        (1024, 576, 576, false, "X W (q/o)"),
        (1016, 576, 49152, false, "head X W"),
        (1016, 49152, 576, false, "head dY W^T"),
        (576, 1024, 1536, true, "X^T dY (weight grad shape)"),
        (576, 1024, 8, true, "LoRA X^T dH"),
        (1024, 576, 8, false, "LoRA X A"),
    ] {
        let a = filled(m * k, 1);
        let b = filled(k * n, 2);
        // lhs row-major [m, k], or a transposed view of a row-major [k, m].
        let (lcs, lrs) = if lhs_t { (m as isize, 1) } else { (1, k as isize) };
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let (mut w, mut s) = (vec![], vec![]);
        for _ in 0..9 {
            let t = Instant::now();
            unsafe {
                gemm::gemm(m, n, k, c1.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), lcs, lrs, b.as_ptr(), 1, n as isize, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::Rayon(0))
            };
            w.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let rows = m.div_ceil(threads);
            let ap = a.as_ptr() as usize;
            c2.par_chunks_mut(rows * n).enumerate().for_each(|(i, c)| {
                let r0 = i * rows;
                let mr = c.len() / n;
                let lhs = (ap as *const f32).wrapping_offset(r0 as isize * lrs);
                unsafe { gemm::gemm(mr, n, k, c.as_mut_ptr(), 1, n as isize, false, lhs, lcs, lrs, b.as_ptr(), 1, n as isize, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None) };
            });
            s.push(t.elapsed().as_secs_f64());
        }
        let gf = |v: Vec<f64>| 2.0 * (m * n * k) as f64 / median(v) / 1e9;
        let same = c1 == c2;
        println!("  {what:28} [{m}, {k}] x [{k}, {n}]: gemm threads {:6.1}, row blocks {:6.1}  (bit-identical: {same})", gf(w), gf(s));
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "backward" => backward(),
        "decode" => decode(),
        "quant" => quant(),
        "blas" => blas(),
        "split" => split(),
        "fresh" => {
            // The LM head's product into a reused buffer against a fresh one per call (what a
            // pass does: glibc maps a 200 MB output anew, and gemm's stores fault its pages in).
            let (m, k, n) = (1016usize, 576usize, 49152usize);
            let a = filled(m * k, 1);
            let b = filled(n * k, 2);
            let mut reused = vec![0f32; m * n];
            let (mut r, mut f) = (vec![], vec![]);
            for _ in 0..5 {
                let t = Instant::now();
                unsafe { gemm(m, n, k, reused.as_mut_ptr(), (a.as_ptr(), 1, k as isize), (b.as_ptr(), 1, n as isize)) };
                r.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let mut out: Vec<f32> = Vec::with_capacity(m * n);
                unsafe { gemm(m, n, k, out.as_mut_ptr(), (a.as_ptr(), 1, k as isize), (b.as_ptr(), 1, n as isize)) };
                unsafe { out.set_len(m * n) };
                f.push(t.elapsed().as_secs_f64());
                std::hint::black_box(out);
            }
            let g = |v: Vec<f64>| 2.0 * (m * n * k) as f64 / median(v) / 1e9;
            println!("head [{m}, {k}] x [{k}, {n}]: reused output {:.1} GFLOP/s, fresh output {:.1} GFLOP/s", g(r), g(f));
        }
        "one" => {
            // One layer product, to compare build profiles (`cargo run` against `--release`).
            let (m, k, n) = (1024usize, 576usize, 1536usize);
            let (a, b) = (filled(m * k, 1), filled(n * k, 2));
            let mut c = vec![0f32; m * n];
            let mut v = vec![];
            for _ in 0..9 {
                let t = Instant::now();
                unsafe { gemm(m, n, k, c.as_mut_ptr(), (a.as_ptr(), 1, k as isize), (b.as_ptr(), 1, n as isize)) };
                v.push(t.elapsed().as_secs_f64());
            }
            println!("[{m}, {k}] x [{k}, {n}]: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / median(v) / 1e9);
        }
        "" => {
            backward();
            decode();
            quant();
        }
        other => {
            eprintln!("unknown probe `{other}`: use `backward`, `decode`, `quant`, `blas`, `split`, `fresh`, `one` or nothing for the first three");
            std::process::exit(2);
        }
    }
}
