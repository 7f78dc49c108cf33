//! Every matmul kernel a GPU backend's autotune can pick, each forced in turn and checked
//! against the host, at the shapes that broke them.
//!
//! burn 0.21's matmul autotune chooses among cubek's kernel families per shape and caches the
//! choice on disk, so a wrong kernel shows up only on machines whose cache picked it: a test
//! through autotune passes or fails by the cache's state. This module launches each candidate
//! directly (`cubek::matmul::launch::launch_ref` with the strategy fixed, no autotune, no
//! fusion), with random operands in every layout, and compares the product with an f64 host
//! product. The shapes put the contracted dimension `k` at odd multiples of the stage sizes the
//! kernels use (8 to 64), where the double-buffered families of cubek-matmul 0.2.0 read one
//! stage past the operands (upstream tracel-ai/cubek#434, burn#5237; patched in
//! `vendor/cubek-matmul`), and include the mat-vec and vec-mat shapes of a value head.
//!
//! A candidate the device cannot run (tensor-core kernels on a software rasterizer, TMA
//! without hardware support) is reported as unavailable, never as passed.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, tensor::CubeTensor};
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::matmul::routines::{
    BlueprintStrategy, TileSizeSelection, double_buffering::DoubleBufferingArgs, double_unit::DoubleUnitSelectionArgs,
    ordered_double_buffering::OrderedSelectionArgs, simple::SimpleArgs, simple_unit::SimpleUnitSelectionArgs,
};
use cubek::std::InputBinding;
use rand::{Rng, SeedableRng};

/// One matmul problem: `[m, k] x [k, n]`, each operand row- or column-major in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs_col_major: bool,
    pub rhs_col_major: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = |c: bool| if c { "col" } else { "row" };
        write!(f, "m={} n={} k={} lhs {}-major, rhs {}-major", self.m, self.n, self.k, l(self.lhs_col_major), l(self.rhs_col_major))
    }
}

/// What one forced candidate did on one problem.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within tolerance; the largest error relative to `sum_k |a_ik b_kj|`.
    Right { rel_err: f64 },
    /// Outside tolerance: the largest relative error and where.
    Wrong { rel_err: f64, row: usize, col: usize, got: f32, want: f64 },
    /// The device or the kernel's setup refused this candidate for this problem.
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub candidate: String,
    pub problem: Problem,
    pub verdict: Verdict,
}

/// Contracted sizes: odd multiples of 8, 16, 32 and 64 (the stage extents along k that the
/// tiling selectors choose), plus 104 (burn#5626's reproduction, 13 x 8).
pub const ODD_STAGE_K: [usize; 7] = [8, 24, 48, 96, 104, 160, 192];

/// The problems every candidate is checked on: square-ish and tall outputs (burn#5237's
/// m = 1024, n = 64), a ragged one, and a value head's mat-vec and a vec-mat, at every
/// [`ODD_STAGE_K`], in the three layouts attention's backward pass produces.
pub fn problems() -> Vec<Problem> {
    let mut v = Vec::new();
    for &k in &ODD_STAGE_K {
        for (m, n) in [(64, 64), (1024, 64), (96, 40), (256, 1), (1, 256)] {
            for (lhs_col_major, rhs_col_major) in [(false, false), (false, true), (true, false)] {
                v.push(Problem { m, n, k, lhs_col_major, rhs_col_major });
            }
        }
    }
    v
}

/// The candidates of burn-cubecl 0.21's matmul autotune set (`kernel/matmul/tune/base.rs`),
/// named as its tune cache names them.
pub fn candidates() -> Vec<Strategy> {
    use TileMatmulKind::{Cmma, Mma};
    let mut v = vec![
        Strategy::Naive,
        Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())),
        Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())),
        Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default())),
        Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default())),
    ];
    for tile_size in [TileSizeSelection::MaxTileSize, TileSizeSelection::MinTileSize] {
        v.push(Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size })));
        v.push(Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size })));
    }
    for multi_rows in [false, true] {
        v.push(Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows, tile_matmul: Cmma })));
        v.push(Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows, tile_matmul: Mma })));
    }
    for row_count in [4, 8] {
        let args =
            |tile_matmul| OrderedSelectionArgs { partition_k: Some(2), row_count: Some(row_count), rows_per_plane: Some(2), tile_matmul };
        v.push(Strategy::OrderedDoubleCmma(BlueprintStrategy::Inferred(args(Cmma))));
        v.push(Strategy::OrderedDoubleMma(BlueprintStrategy::Inferred(args(Mma))));
    }
    for specialized in [false, true] {
        v.push(Strategy::DoubleCyclicCmma(BlueprintStrategy::Inferred(DoubleBufferingArgs { specialized, tile_matmul: Cmma })));
        v.push(Strategy::DoubleCyclicMma(BlueprintStrategy::Inferred(DoubleBufferingArgs { specialized, tile_matmul: Mma })));
    }
    v.push(Strategy::SpecializedCyclicCmma(BlueprintStrategy::Inferred(().into())));
    v.push(Strategy::SpecializedCyclicMma(BlueprintStrategy::Inferred(().into())));
    for multi_rows in [false, true] {
        v.push(Strategy::SimpleTmaCmma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows, tile_matmul: Cmma })));
        v.push(Strategy::SimpleTmaMma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows, tile_matmul: Mma })));
    }
    v.push(Strategy::SpecializedTmaCmma(BlueprintStrategy::Inferred(().into())));
    v.push(Strategy::SpecializedTmaMma(BlueprintStrategy::Inferred(().into())));
    v
}

/// Tolerance relative to `sum_k |a_ik b_kj|`: tensor-core candidates stage f32 operands as
/// tf32 (10-bit mantissa) where the device has it; the others compute in f32. A kernel that
/// reads one stage too many is off by a whole stage's products (>= 4% of that sum here).
fn tolerance(candidate: &str) -> f64 {
    if candidate.contains("mma") || candidate.contains("tma") { 4e-3 } else { 1e-4 }
}

/// Operand `[rows, cols]` of seeded uniform values in (-1, 1), as stored in row-major order.
fn operand(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The backend without fusion or autodiff: tensors here are only uploads and read-backs.
type B<R, BT> = CubeBackend<R, f32, i32, BT>;

fn upload<R: CubeRuntime, BT: BoolElement>(x: &[f32], rows: usize, cols: usize, col_major: bool, device: &R::Device) -> CubeTensor<R> {
    let t = if col_major {
        // Column-major storage of [rows, cols] is the row-major [cols, rows] transposed.
        let mut xt = vec![0.0f32; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                xt[c * rows + r] = x[r * cols + c];
            }
        }
        Tensor::<B<R, BT>, 2>::from_data(TensorData::new(xt, [cols, rows]), device).transpose()
    } else {
        Tensor::<B<R, BT>, 2>::from_data(TensorData::new(x.to_vec(), [rows, cols]), device)
    };
    t.into_primitive().tensor()
}

fn check_one<R: CubeRuntime, BT: BoolElement>(strategy: &Strategy, p: Problem, device: &R::Device) -> Verdict {
    let (a, b) = (operand(p.m, p.k, 7 + p.k as u64), operand(p.k, p.n, 11 + p.k as u64));
    let lhs = upload::<R, BT>(&a, p.m, p.k, p.lhs_col_major, device);
    let rhs = upload::<R, BT>(&b, p.k, p.n, p.rhs_col_major, device);
    let out = Tensor::<B<R, BT>, 2>::zeros([p.m, p.n], device).into_primitive().tensor();
    let client = out.client.clone();
    let f32_type = <f32 as cubek::cubecl::prelude::CubePrimitive>::as_type_native_unchecked().storage_type();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: f32_type, rhs: f32_type, out: f32_type });
    let launched = super::quietly(|| {
        launch_ref(
            strategy,
            &client,
            InputBinding::new(lhs.binding(), f32_type),
            InputBinding::new(rhs.binding(), f32_type),
            out.clone().binding(),
            &mut dtypes,
        )
    });
    match launched {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Verdict::Unavailable(format!("{e:?}").chars().take(160).collect()),
        Err(panic) => return Verdict::Unavailable(format!("panicked: {panic}")),
    }
    let got = match super::quietly(|| Tensor::<B<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out)).into_data().to_vec::<f32>()) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Verdict::Unavailable(format!("reading the result: {e:?}")),
        Err(panic) => return Verdict::Unavailable(format!("panicked while running: {panic}")),
    };
    let tol = tolerance(&strategy.to_string());
    let mut worst = Verdict::Right { rel_err: 0.0 };
    let mut worst_err = 0.0f64;
    for i in 0..p.m {
        for j in 0..p.n {
            let (mut want, mut scale) = (0.0f64, 0.0f64);
            for l in 0..p.k {
                let prod = a[i * p.k + l] as f64 * b[l * p.n + j] as f64;
                want += prod;
                scale += prod.abs();
            }
            let g = got[i * p.n + j];
            let err = if g.is_finite() { (g as f64 - want).abs() / scale.max(1e-30) } else { f64::INFINITY };
            if err > worst_err {
                worst_err = err;
                worst = if err <= tol {
                    Verdict::Right { rel_err: err }
                } else {
                    Verdict::Wrong { rel_err: err, row: i, col: j, got: g, want }
                };
            }
        }
    }
    worst
}

/// Run every [`candidates`] strategy on every [`problems`] problem on `device`.
pub fn check_all<R: CubeRuntime, BT: BoolElement>(device: &R::Device, mut progress: impl FnMut(&Outcome)) -> Vec<Outcome> {
    let mut out = Vec::new();
    for strategy in candidates() {
        let name = strategy.to_string();
        for p in problems() {
            let o = Outcome { candidate: name.clone(), problem: p, verdict: check_one::<R, BT>(&strategy, p, device) };
            progress(&o);
            out.push(o);
        }
    }
    out
}

/// Check every candidate on `backend`'s device `index` (opened as a run opens it).
pub fn check_backend(
    backend: crate::spec::BackendKind,
    index: usize,
    progress: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, super::DeviceError> {
    use crate::spec::BackendKind as Bk;
    match backend {
        #[cfg(feature = "wgpu")]
        Bk::Wgpu => {
            let device = super::open_wgpu(index)?;
            Ok(check_all::<burn::backend::wgpu::WgpuRuntime, u32>(&device, progress))
        }
        #[cfg(feature = "cuda")]
        Bk::Cuda => {
            let device = super::open_cuda(index)?;
            Ok(check_all::<burn_cubecl::cubecl::cuda::CudaRuntime, u8>(&device, progress))
        }
        other => Err(super::DeviceError::NoKernelCheck(other)),
    }
}

/// A summary: per candidate, how many problems were right, wrong and unavailable, and the
/// worst error; wrong cases listed.
pub fn summarize(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let mut names: Vec<&str> = Vec::new();
    for o in outcomes {
        if !names.contains(&o.candidate.as_str()) {
            names.push(&o.candidate);
        }
    }
    for name in names {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.candidate == name).collect();
        let right = mine.iter().filter(|o| matches!(o.verdict, Verdict::Right { .. })).count();
        let wrong: Vec<&&Outcome> = mine.iter().filter(|o| matches!(o.verdict, Verdict::Wrong { .. })).collect();
        let unavailable = mine.len() - right - wrong.len();
        let worst = mine
            .iter()
            .filter_map(|o| match o.verdict {
                Verdict::Right { rel_err } | Verdict::Wrong { rel_err, .. } => Some(rel_err),
                Verdict::Unavailable(_) => None,
            })
            .fold(0.0f64, f64::max);
        s.push_str(&format!("{name:<52} right {right:>3}  wrong {:>3}  unavailable {unavailable:>3}", wrong.len()));
        if right + wrong.len() > 0 {
            s.push_str(&format!("  worst rel. error {worst:.1e}"));
        } else if let Some(Verdict::Unavailable(why)) = mine.first().map(|o| &o.verdict) {
            s.push_str(&format!("  ({})", why.chars().take(70).collect::<String>()));
        }
        s.push('\n');
        for o in wrong.iter().take(4) {
            if let Verdict::Wrong { rel_err, row, col, got, want } = o.verdict {
                s.push_str(&format!("    WRONG at {}: out[{row},{col}] = {got} (want {want:.6}), rel. error {rel_err:.2e}\n", o.problem));
            }
        }
    }
    s
}
