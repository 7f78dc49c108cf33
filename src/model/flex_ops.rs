//! What mpo's patches to the CPU backend (`vendor/burn-flex`, VENDORED.md) must keep: every
//! element computed as the upstream path computes it, whichever route (in place, parallel,
//! copied to contiguous first) an operation now takes. mpo does not build that crate's own
//! tests, so the patched routes are checked here, through burn's API, against host arithmetic.

use burn::tensor::{Distribution, IndexingUpdateOp, Int, Tensor, TensorData};

type F = burn::backend::Flex;

fn host(t: Tensor<F, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<F, D> {
    <F as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

/// A permuted operand (the backward of `swap_dims` hands one to the product after it) is
/// copied to contiguous and takes the SIMD path: same bits as element-by-element host
/// arithmetic, on both sides of the op and whether or not the operand is shared.
#[test]
fn permuted_operands_combine_element_by_element() {
    let a = random([2, 8, 9, 64], 1).swap_dims(1, 2); // [2, 9, 8, 64], permuted
    let b = random([2, 9, 8, 64], 2);
    let (ha, hb) = (host(a.clone()), host(b.clone()));
    let kept = a.clone(); // `a` shared, as autodiff keeps an operand
    for (got, op) in [
        (host(a.clone() * b.clone()), (|x: f32, y: f32| x * y) as fn(f32, f32) -> f32),
        (host(b.clone() * a.clone()), |x, y| y * x),
        (host(a.clone() + b.clone()), |x, y| x + y),
        (host(b.clone() - a.clone()), |x, y| y - x),
        (host(a.clone() / b.clone()), |x, y| x / y),
    ] {
        let want: Vec<f32> = ha.iter().zip(&hb).map(|(&x, &y)| op(x, y)).collect();
        assert_eq!(got, want);
    }
    assert_eq!(host(kept), ha, "a shared operand is left as it was");
}

/// A layout with no contiguous innermost dim (the gradient of attention's keys back from
/// `k^T`) is copied as a stack of 2D transposes: checked against indices worked out by hand
/// from the unpermuted tensor, large (parallel) and small.
#[test]
fn transposed_stacks_copy_to_their_logical_order() {
    for [b, t, h, d] in [[2, 64, 4, 64], [1, 3, 2, 5]] {
        let x = random([b, t, h, d], 7);
        let hx = host(x.clone());
        let y = x.swap_dims(1, 3); // [b, d, h, t], t's stride 1 now in the middle
        let got = host(y.clone() * Tensor::ones([b, d, h, t], &Default::default()));
        let mut want = Vec::with_capacity(b * t * h * d);
        for i in 0..b {
            for l in 0..d {
                for k in 0..h {
                    for j in 0..t {
                        want.push(hx[((i * t + j) * h + k) * d + l]);
                    }
                }
            }
        }
        assert_eq!(got, want, "[{b}, {t}, {h}, {d}]");
    }
}

/// Element-wise maps and binary ops on large tensors are written in parallel straight into
/// their output: the same bits as the small (sequential) route and as host arithmetic, and an
/// operand someone else holds is not written.
#[test]
fn large_maps_and_binary_ops_match_host_arithmetic() {
    let n = 1 << 17; // above the parallel threshold (32 Ki elements)
    let x = random([1, 1, 2, n / 2], 3);
    let y = random([1, 1, 2, n / 2], 4);
    let (hx, hy) = (host(x.clone()), host(y.clone()));
    let kept = x.clone();
    let neg = host(x.clone().neg());
    assert_eq!(neg, hx.iter().map(|v| -v).collect::<Vec<_>>());
    let sum = host(x.clone().add(y.clone()));
    assert_eq!(sum, hx.iter().zip(&hy).map(|(a, b)| a + b).collect::<Vec<_>>());
    // exp large against exp of the same values in pieces below the threshold.
    let big = host(x.clone().exp());
    let pieces: Vec<f32> = hx
        .chunks(1000)
        .flat_map(|c| {
            Tensor::<F, 1>::from_data(TensorData::new(c.to_vec(), [c.len()]), &Default::default())
                .exp()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        })
        .collect();
    assert_eq!(big, pieces);
    assert_eq!(host(kept), hx);
}

/// Products write into a buffer that is not zeroed first: every element must be written, also
/// where the allocator hands back memory full of an earlier tensor's values. The larger shapes
/// run threaded, as one gemm per block of rows (an odd row count leaves a short last block).
#[test]
fn products_write_every_element_of_a_reused_buffer() {
    for (m, k, n) in [(64, 48, 96), (301, 128, 96), (64, 48, 96)] {
        // Leave freed memory of the output's size behind, full of NaN.
        drop(Tensor::<F, 2>::full([m, n], f32::NAN, &Default::default()).into_data());
        let a = random([1, 2, m, k], 5);
        let b = random([1, 2, k, n], 6);
        let (ha, hb) = (host(a.clone()), host(b.clone()));
        let got = host(a.matmul(b));
        for bi in 0..2 {
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| ha[bi * m * k + i * k + t] as f64 * hb[bi * k * n + t * n + j] as f64).sum();
                    let g = got[bi * m * n + i * n + j] as f64;
                    assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "[{bi}, {i}, {j}]: {g} vs {want}");
                }
            }
        }
    }
    // An empty contraction is all zeros.
    let z = Tensor::<F, 2>::zeros([3, 0], &Default::default()).matmul(Tensor::zeros([0, 4], &Default::default()));
    assert_eq!(z.into_data().to_vec::<f32>().unwrap(), vec![0.0; 12]);
}

/// `scatter_add` sums in the target's own buffer only when nothing else holds it.
#[test]
fn scatter_add_in_place_only_when_unshared() {
    let d = Default::default();
    let idx = Tensor::<F, 2, Int>::from_data(TensorData::new(vec![2i64, 0, 1, 1], [2, 2]), &d);
    let val = Tensor::<F, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &d);
    let want = vec![2.0, 0.0, 1.0, 0.0, 7.0, 0.0];
    let alone = Tensor::<F, 2>::zeros([2, 3], &d).scatter(1, idx.clone(), val.clone(), IndexingUpdateOp::Add);
    assert_eq!(alone.into_data().to_vec::<f32>().unwrap(), want);
    let base = Tensor::<F, 2>::ones([2, 3], &d);
    let kept = base.clone();
    let summed = base.scatter(1, idx, val, IndexingUpdateOp::Add);
    assert_eq!(summed.into_data().to_vec::<f32>().unwrap(), want.iter().map(|v| v + 1.0).collect::<Vec<_>>());
    assert_eq!(kept.into_data().to_vec::<f32>().unwrap(), vec![1.0; 6], "the shared tensor is untouched");
}
