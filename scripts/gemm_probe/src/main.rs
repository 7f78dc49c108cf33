//! Two questions about the CPU backend's matrix products, at SmolLM2-135M's shapes, answered
//! with the gemm crate (0.19, what burn-flex 0.21 calls) on this machine:
//!
//! 1. `backward`: how much slower is `dY W^T` through a transposed view of a row-major weight
//!    (what autodiff's matmul backward hands gemm) than on a contiguous transposed copy?
//! 2. `decode`: one generation step's weight products (30 layers x 7 projections + the LM head,
//!    538 MB, all cold in cache) at 1 and 8 rows: gemm against a hand-written AVX-512 kernel
//!    that streams each weight row once.
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

fn decode() {
    let mut ws = vec![];
    let mut seed = 3;
    for _ in 0..30 {
        for &(k, n) in &[(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)] {
            seed += 1;
            ws.push((k, n, filled(k * n, seed)));
        }
    }
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

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "backward" => backward(),
        "decode" => decode(),
        "" => {
            backward();
            decode();
        }
        other => {
            eprintln!("unknown probe `{other}`: use `backward`, `decode` or nothing for both");
            std::process::exit(2);
        }
    }
}
