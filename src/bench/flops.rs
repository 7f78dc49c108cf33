//! How fast the matrix products run: the GFLOP/s the CPU backend's matmuls reach inside a real
//! pass (counted by the vendored burn-flex), and the machine's physical limit (fused
//! multiply-adds with no memory traffic on every core of rayon's pool at once). `mpo bench
//! train` prints both beside PyTorch's, so a reader sees how far the products are from what the
//! silicon can do and how much of a pass is not products at all.

use std::time::Instant;

/// Float products run by this process's CPU backend: (flops, seconds inside matmul).
#[derive(Clone, Copy, Debug, Default)]
pub struct Products {
    pub flops: f64,
    pub secs: f64,
}

impl Products {
    /// The counters now; zero where the CPU backend is not compiled in (a GPU's products are
    /// asynchronous: their time is not the host's).
    pub fn now() -> Products {
        #[cfg(feature = "cpu")]
        {
            let p = burn_flex::ops::matmul::counters::products();
            Products { flops: p.flops as f64, secs: p.nanos as f64 / 1e9 }
        }
        #[cfg(not(feature = "cpu"))]
        Products::default()
    }

    pub fn since(self, start: Products) -> Products {
        Products { flops: self.flops - start.flops, secs: self.secs - start.secs }
    }

    /// One call's share of `calls` calls.
    pub fn per(self, calls: usize) -> Products {
        Products { flops: self.flops / calls as f64, secs: self.secs / calls as f64 }
    }

    pub fn gflops(&self) -> f64 {
        self.flops / self.secs / 1e9
    }
}

/// Peak f32 GFLOP/s (2 per fused multiply-add) of independent FMA chains on all of rayon's
/// threads, and the instruction set measured; `None` where the CPU has neither AVX-512 nor
/// AVX2 + FMA.
pub fn fma_gflops() -> Option<(f64, &'static str)> {
    let (lanes, isa) = widest()?;
    const ROUNDS: u64 = 20_000_000;
    let run = || {
        let threads = rayon::current_num_threads() as u64;
        let t = Instant::now();
        let sums: Vec<f32> = rayon::broadcast(|_| chains(lanes, ROUNDS));
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        (threads * ROUNDS * CHAINS as u64 * lanes as u64 * 2) as f64 / secs / 1e9
    };
    run();
    Some(((0..3).map(|_| run()).fold(0.0, f64::max), isa))
}

/// Independent accumulators per thread: enough to cover an FMA's latency on two ports.
const CHAINS: usize = 16;

fn widest() -> Option<(usize, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some((16, "AVX-512"));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some((8, "AVX2+FMA"));
        }
    }
    None
}

fn chains(lanes: usize, rounds: u64) -> f32 {
    // SAFETY: `widest` detected the instruction set each arm needs.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if lanes == 16 { x86::avx512(rounds) } else { x86::avx2(rounds) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (lanes, rounds);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(rounds: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(rounds: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|x| {
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *x) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    type TB = burn::backend::Flex;

    #[test]
    fn a_product_on_the_cpu_backend_adds_its_flops_and_time_to_the_counters() {
        let device = Default::default();
        let before = Products::now();
        // Batched, so the count must multiply by the batch: 2 * (4 * 3 * 7) * 5 flops.
        let a = Tensor::<TB, 3>::ones([4, 3, 5], &device);
        let b = Tensor::<TB, 3>::ones([4, 5, 7], &device);
        let c = a.matmul(b).into_data().to_vec::<f32>().unwrap();
        assert!(c.iter().all(|&x| x == 5.0));
        let d = Products::now().since(before);
        // Other tests multiply in parallel in this process: the counters may have grown more.
        assert!(d.flops >= (2 * 4 * 3 * 7 * 5) as f64, "{d:?}");
        assert!(d.secs > 0.0, "{d:?}");
        let half = d.per(2);
        assert_eq!((half.flops * 2.0, half.secs * 2.0), (d.flops, d.secs));
    }
}
