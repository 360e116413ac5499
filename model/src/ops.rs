//! Fused CPU kernels for the Qwen2 forward and backward passes, as candle custom ops: linear
//! layers (gemm straight into the layouts backward needs; with bias and RoPE, or added to a
//! residual), RMSNorm, the SwiGLU gate/up projections, causal grouped-query attention, and the
//! masked token loss; plus the helpers of the explicit backward pass in
//! `Qwen2::loss_and_grads` (the LM head fused with the loss, row blocks at a time).
//!
//! Composed from candle's elementwise ops, each step of these costs a tensor, and in backward
//! a zero-filled gradient plus an add on candle's own thread pool; fused, each is one pass.
//! Elementwise loops use a polynomial `exp` and are compiled twice (baseline and AVX2, picked
//! at run time) so they vectorize.
//!
//! Determinism: every output element is computed by one thread in a fixed order, and every
//! reduction across rows (weight gradients of RMSNorm, biases, grouped attention heads, the
//! head's row blocks) runs over fixed-size blocks whose partial results are summed in block
//! order. Nothing depends on the number of threads, so the same inputs give the same bits for
//! any `RAYON_NUM_THREADS`. Matrix products go to the `gemm` crate, whose result for an element
//! does not depend on how the work is split between threads.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, Layout, Result, Shape, Storage,
    Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows per block in row-parallel kernels and in the fixed-order reductions across rows.
const ROW_BLOCK: usize = 32;
/// Query rows per block in causal attention (keys beyond a block's last row are skipped).
const ATT_BLOCK: usize = 64;
/// Multiply-adds below which a matrix product runs on the calling thread.
const PAR_WORK: usize = 1 << 17;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{what}: expected f32, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(f32s(c, l, what)?),
        _ => bail!("{what}: only the CPU backend is implemented"),
    }
}

fn out(v: Vec<f32>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (CpuStorage::F32(v), shape.into())
}

fn parallelism(work: usize) -> Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 && work >= PAR_WORK {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// A strided f32 matrix view for `mm`: element (i, j) is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct M {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

fn m(s: &[f32], rs: usize, cs: usize) -> M {
    M {
        ptr: s.as_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    }
}

fn mt(s: &[f32], rs: usize, cs: usize) -> M {
    // The transpose of the (rs, cs)-strided matrix at `s`.
    M {
        ptr: s.as_ptr(),
        rs: cs as isize,
        cs: rs as isize,
    }
}

/// `dst (m×n, row stride dst_rs) [+]= scale · lhs (m×k) · rhs (k×n)`.
///
/// # Safety
/// The views must cover `m×k`, `k×n` and `m×n` elements inside their allocations, and `dst`
/// must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    (rows, cols, depth): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: M,
    rhs: M,
    scale: f32,
    par: Parallelism,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if depth == 0 {
        if !accumulate {
            for i in 0..rows {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, cols);
            }
        }
        return;
    }
    gemm::gemm(
        rows,
        cols,
        depth,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        scale,
        false,
        false,
        false,
        par,
    )
}

/// A raw pointer that rayon tasks writing disjoint parts of one buffer can share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Sum of `v` with eight interleaved accumulators (vectorizes; fixed order).
#[inline(always)]
fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for x in rest {
        s += x;
    }
    s
}

/// Dot product with eight interleaved accumulators (vectorizes; fixed order).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `e^x` from arithmetic alone (Cephes' `expf` polynomial, within 2 ulp of `f32::exp`), so
/// loops over it vectorize; inputs are clamped to `[-87.33, 88]` and give 0 below, NaN stays.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: `t = v + ROUND` rounds `v` to an integer `n`, held in the low bits of `t`.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = (p * r * r + r) + 1.0;
    // 2^n from the bits: n + 127 in the exponent field.
    let pow2 = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < LO {
        0.0
    } else {
        y * pow2
    }
}

/// Defines `fn $name` twice: as written, and compiled for AVX2 (wider vectors) when the CPU has
/// it, chosen at run time. No FMA is enabled and Rust never contracts `a * b + c`, so both
/// builds do the same IEEE operations per element in the same order: the same bits.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Largest element with eight interleaved accumulators (NaN ignored, like `f32::max`).
#[inline(always)]
fn max8(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

multiversion! {
    /// `row ← softmax(row)`.
    fn softmax_in_place(row: &mut [f32]) {
        let max = max8(row);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / sum8(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

multiversion! {
    /// `(max, Σ e^(x - max))` of a row, writing `e^(x - max)` into `dst` unless it is empty.
    fn exp_sum(src: &[f32], dst: &mut [f32]) -> (f32, f32) {
        let max = max8(src);
        if dst.is_empty() {
            let mut acc = [0f32; 8];
            let chunks = src.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += exp(v - max);
                }
            }
            // The order of `sum8`, so both branches give the same sum.
            let mut s =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for &v in rest {
                s += exp(v - max);
            }
            (max, s)
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = exp(v - max);
            }
            (max, sum8(dst))
        }
    }
}

multiversion! {
    /// `row ← e^(row - max)`, returning `(max, Σ)` exactly as `exp_sum` does.
    fn exp_sum_in_place(row: &mut [f32]) -> (f32, f32) {
        let max = max8(row);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        (max, sum8(row))
    }
}

multiversion! {
    /// `v ← v · s`.
    fn scale_in_place(v: &mut [f32], s: f32) {
        for x in v.iter_mut() {
            *x *= s;
        }
    }
}

/// Sums per-block partial vectors/// Sums per-block partial vectors (each `width` long) in block order.
fn sum_blocks(partials: &[f32], width: usize) -> Vec<f32> {
    let mut acc = vec![0f32; width];
    for p in partials.chunks_exact(width) {
        for (a, x) in acc.iter_mut().zip(p) {
            *a += x;
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// Linear layers: y = x · Wᵀ, optionally with a bias and RoPE, or added to a residual

/// The third input of a linear op.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Third {
    /// `[out]`, added to every row.
    Bias,
    /// Same shape as the output: `y = residual + x · Wᵀ`.
    Residual,
}

pub(crate) struct Linear {
    third: Option<Third>,
    /// Rotate the output rows (after the bias) as RoPE queries or keys.
    rope: Option<RopeTable>,
}

impl Linear {
    pub(crate) fn new(third: Option<Third>, rope: Option<RopeTable>) -> Linear {
        Linear { third, rope }
    }
}

/// `(rows, in, out)` of a linear op, checked.
fn linear_dims(xl: &Layout, wl: &Layout) -> Result<(usize, usize, usize)> {
    let (out_f, in_f) = wl.shape().dims2()?;
    if xl.dims().last() != Some(&in_f) || in_f == 0 {
        bail!("linear: input {:?} does not end in {in_f}", xl.dims());
    }
    Ok((xl.shape().elem_count() / in_f, in_f, out_f))
}

impl Linear {
    fn fwd(
        &self,
        (x, xl): (&[f32], &Layout),
        (w, wl): (&[f32], &Layout),
        third: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_f, out_f) = linear_dims(xl, wl)?;
        let residual = self.third == Some(Third::Residual);
        let mut y = match third {
            Some(r) if residual => {
                if r.len() != rows * out_f {
                    bail!(
                        "linear: residual has {} elements, expected {}",
                        r.len(),
                        rows * out_f
                    );
                }
                r.to_vec()
            }
            _ => vec![0f32; rows * out_f],
        };
        unsafe {
            mm(
                (rows, out_f, in_f),
                y.as_mut_ptr(),
                out_f,
                residual,
                m(x, in_f, 1),
                mt(w, in_f, 1),
                1.0,
                parallelism(rows * out_f * in_f),
            );
        }
        if let (Some(Third::Bias), Some(b)) = (self.third, third) {
            if b.len() != out_f {
                bail!(
                    "linear: bias has {} elements, the weight {out_f} rows",
                    b.len()
                );
            }
            y.par_chunks_mut(out_f * ROW_BLOCK).for_each(|blk| {
                for row in blk.chunks_exact_mut(out_f) {
                    for (v, bb) in row.iter_mut().zip(b) {
                        *v += bb;
                    }
                }
            });
        }
        if let Some(table) = &self.rope {
            rope_rows(&mut y, out_f, table, false)?;
        }
        let mut shape = xl.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = out_f;
        Ok(out(y, shape))
    }

    /// Gradients of the input, the weight and the third input.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (out_f, in_f) = w.dims2()?;
        let rows = x.elem_count() / in_f;
        let dev = x.device();
        // Through the rotation first: its inverse is the rotation by the negative angles.
        let unrotated = match &self.rope {
            Some(table) => {
                let mut g = with_f32(&grad, "linear backward", |g| Ok(g.to_vec()))?;
                rope_rows(&mut g, out_f, table, true)?;
                Some(g)
            }
            None => None,
        };
        let (dx, dw, db) = with_f32(&grad, "linear backward", |g| {
            let g = unrotated.as_deref().unwrap_or(g);
            with_f32(w, "linear backward", |wv| {
                with_f32(x, "linear backward", |xv| {
                    let mut dx = vec![0f32; rows * in_f];
                    let mut dw = vec![0f32; out_f * in_f];
                    let par = parallelism(rows * in_f * out_f);
                    unsafe {
                        // dx = g · W
                        mm(
                            (rows, in_f, out_f),
                            dx.as_mut_ptr(),
                            in_f,
                            false,
                            m(g, out_f, 1),
                            m(wv, in_f, 1),
                            1.0,
                            par,
                        );
                        // dW = gᵀ · x
                        mm(
                            (out_f, in_f, rows),
                            dw.as_mut_ptr(),
                            in_f,
                            false,
                            mt(g, out_f, 1),
                            m(xv, in_f, 1),
                            1.0,
                            par,
                        );
                    }
                    let db = (self.third == Some(Third::Bias)).then(|| column_sums(g, out_f));
                    Ok((dx, dw, db))
                })
            })
        })?;
        let third = match self.third {
            Some(Third::Bias) => Some(Tensor::from_vec(db.expect("bias gradient"), out_f, dev)?),
            Some(Third::Residual) => Some(grad.clone()),
            None => None,
        };
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dw, (out_f, in_f), dev)?,
            third,
        ))
    }
}

/// Sums of the columns of a `[rows, width]` matrix, over fixed row blocks in order.
fn column_sums(g: &[f32], width: usize) -> Vec<f32> {
    let partials: Vec<f32> = g
        .par_chunks(width * ROW_BLOCK)
        .flat_map_iter(|blk| {
            let mut acc = vec![0f32; width];
            for row in blk.chunks_exact(width) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    sum_blocks(&partials, width)
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(
            (f32s(s1, l1, "linear")?, l1),
            (f32s(s2, l2, "linear")?, l2),
            None,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        match self.third {
            Some(Third::Residual) => "linear-residual",
            _ => "linear-bias",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let third = f32s(s3, l3, "linear")?;
        self.fwd(
            (f32s(s1, l1, "linear")?, l1),
            (f32s(s2, l2, "linear")?, l2),
            Some(third),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _third: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, dt) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw), dt))
    }
}

/// `x · wᵀ + b` over the last dimension of `x` (`w`: `[out, in]`, `b`: `[out]`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match b {
        Some(b) => x.apply_op3(
            w,
            b,
            Linear {
                third: Some(Third::Bias),
                rope: None,
            },
        ),
        None => x.apply_op2(
            w,
            Linear {
                third: None,
                rope: None,
            },
        ),
    }
}

/// `rope(x · wᵀ + b)`: a query or key projection, rows `[.., heads · head_dim]` rotated by
/// `table` (row `r` at position `r mod table.len()`).
pub fn linear_rope(x: &Tensor, w: &Tensor, b: &Tensor, table: &RopeTable) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        w,
        b,
        Linear {
            third: Some(Third::Bias),
            rope: Some(table.clone()),
        },
    )
}

/// `residual + x · wᵀ`.
pub fn linear_residual(x: &Tensor, w: &Tensor, residual: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        w,
        &residual.contiguous()?,
        Linear {
            third: Some(Third::Residual),
            rope: None,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// RoPE (HF layout: the two halves of each head rotated by the same angles)

/// `cos`, `sin` of each position's angles, `[len, head_dim / 2]` each.
#[derive(Clone)]
pub struct RopeTable {
    half: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl RopeTable {
    /// Angles `pos · theta^(-2j / head_dim)` for positions `offset..offset + len`, computed in
    /// f32 as transformers does.
    pub fn new(head_dim: usize, theta: f32, offset: usize, len: usize) -> RopeTable {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(len * half),
            Vec::with_capacity(len * half),
        );
        for pos in offset..offset + len {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable {
            half,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        }
    }

    /// Positions in the table.
    pub fn len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }
}

/// Rotates rows of `width = heads · head_dim` in place; row `r` is at position `r mod len`.
fn rope_rows(y: &mut [f32], width: usize, table: &RopeTable, inverse: bool) -> Result<()> {
    let (half, t) = (table.half, table.len());
    let d = 2 * half;
    if half == 0 || t == 0 || !width.is_multiple_of(d) || !y.len().is_multiple_of(width * t) {
        bail!("rope: rows of {width} do not fit the table ({t} positions, head_dim {d})");
    }
    let sign = if inverse { -1.0f32 } else { 1.0 };
    y.par_chunks_mut(width * ROW_BLOCK)
        .enumerate()
        .for_each(|(blk, rows)| {
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                let p = (blk * ROW_BLOCK + i) % t;
                let cos = &table.cos[p * half..(p + 1) * half];
                let sin = &table.sin[p * half..(p + 1) * half];
                for head in row.chunks_exact_mut(d) {
                    let (x1, x2) = head.split_at_mut(half);
                    for j in 0..half {
                        let (a, b, s) = (x1[j], x2[j], sign * sin[j]);
                        x1[j] = a * cos[j] - b * s;
                        x2[j] = b * cos[j] + a * s;
                    }
                }
            }
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The MLP's first half: silu(x · Wgᵀ) ⊙ (x · Wuᵀ)

pub(crate) struct GateUp {
    /// The two projections `(gate, up)`, kept by a forward that will be differentiated.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    keep: bool,
}

impl GateUp {
    pub(crate) fn new(keep: bool) -> GateUp {
        GateUp {
            saved: Mutex::new(None),
            keep,
        }
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

multiversion! {
    /// `y = silu(g) · u`.
    fn swiglu_rows(y: &mut [f32], g: &[f32], u: &[f32]) {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid(g) * u;
        }
    }
}

multiversion! {
    /// Gradients of `silu(g) · u` given the output gradient `gr`.
    fn swiglu_grad_rows(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], gr: &[f32]) {
        let ins = g.iter().zip(u).zip(gr);
        for ((dg, du), ((&g, &u), &gr)) in dg.iter_mut().zip(du.iter_mut()).zip(ins) {
            let s = sigmoid(g);
            let silu = g * s;
            *du = gr * silu;
            *dg = gr * u * (s + silu * (1.0 - s));
        }
    }
}

const ELEM_CHUNK: usize = 4096;

impl CustomOp3 for GateUp {
    fn name(&self) -> &'static str {
        "swiglu-gate-up"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "mlp")?;
        let (wg, wu) = (f32s(s2, l2, "mlp gate")?, f32s(s3, l3, "mlp up")?);
        let (rows, in_f, out_f) = linear_dims(l1, l2)?;
        if l2.dims() != l3.dims() {
            bail!(
                "mlp: gate {:?} and up {:?} weights differ",
                l2.dims(),
                l3.dims()
            );
        }
        let mut gate = vec![0f32; rows * out_f];
        let mut up = vec![0f32; rows * out_f];
        let par = parallelism(rows * out_f * in_f);
        unsafe {
            mm(
                (rows, out_f, in_f),
                gate.as_mut_ptr(),
                out_f,
                false,
                m(x, in_f, 1),
                mt(wg, in_f, 1),
                1.0,
                par,
            );
            mm(
                (rows, out_f, in_f),
                up.as_mut_ptr(),
                out_f,
                false,
                m(x, in_f, 1),
                mt(wu, in_f, 1),
                1.0,
                par,
            );
        }
        let mut y = vec![0f32; rows * out_f];
        y.par_chunks_mut(ELEM_CHUNK)
            .zip(gate.par_chunks(ELEM_CHUNK))
            .zip(up.par_chunks(ELEM_CHUNK))
            .for_each(|((y, g), u)| swiglu_rows(y, g, u));
        if self.keep {
            *self.saved.lock().expect("mlp activations") = Some((gate, up));
        }
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = out_f;
        Ok(out(y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wg: &Tensor,
        wu: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((gate, up)) = self.saved.lock().expect("mlp activations").take() else {
            bail!("mlp backward: the forward pass kept no activations");
        };
        let grad = grad.contiguous()?;
        let (out_f, in_f) = wg.dims2()?;
        let rows = x.elem_count() / in_f;
        let dev = x.device();
        let (dx, dwg, dwu) = with_f32(&grad, "mlp backward", |gr| {
            let mut dg = vec![0f32; gate.len()];
            let mut du = vec![0f32; gate.len()];
            dg.par_chunks_mut(ELEM_CHUNK)
                .zip(du.par_chunks_mut(ELEM_CHUNK))
                .zip(gate.par_chunks(ELEM_CHUNK))
                .zip(up.par_chunks(ELEM_CHUNK).zip(gr.par_chunks(ELEM_CHUNK)))
                .for_each(|(((dg, du), g), (u, gr))| swiglu_grad_rows(dg, du, g, u, gr));
            with_f32(wg, "mlp backward", |wgv| {
                with_f32(wu, "mlp backward", |wuv| {
                    with_f32(x, "mlp backward", |xv| {
                        let mut dx = vec![0f32; rows * in_f];
                        let mut dwg = vec![0f32; out_f * in_f];
                        let mut dwu = vec![0f32; out_f * in_f];
                        let par = parallelism(rows * in_f * out_f);
                        unsafe {
                            mm(
                                (rows, in_f, out_f),
                                dx.as_mut_ptr(),
                                in_f,
                                false,
                                m(&dg, out_f, 1),
                                m(wgv, in_f, 1),
                                1.0,
                                par,
                            );
                            mm(
                                (rows, in_f, out_f),
                                dx.as_mut_ptr(),
                                in_f,
                                true,
                                m(&du, out_f, 1),
                                m(wuv, in_f, 1),
                                1.0,
                                par,
                            );
                            mm(
                                (out_f, in_f, rows),
                                dwg.as_mut_ptr(),
                                in_f,
                                false,
                                mt(&dg, out_f, 1),
                                m(xv, in_f, 1),
                                1.0,
                                par,
                            );
                            mm(
                                (out_f, in_f, rows),
                                dwu.as_mut_ptr(),
                                in_f,
                                false,
                                mt(&du, out_f, 1),
                                m(xv, in_f, 1),
                                1.0,
                                par,
                            );
                        }
                        Ok((dx, dwg, dwu))
                    })
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dwg, (out_f, in_f), dev)?),
            Some(Tensor::from_vec(dwu, (out_f, in_f), dev)?),
        ))
    }
}

/// `silu(x · gateᵀ) ⊙ (x · upᵀ)`, the SwiGLU MLP before its down projection.
pub fn swiglu_gate_up(x: &Tensor, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let keep = x.track_op() || gate.track_op() || up.track_op();
    x.contiguous()?.apply_op3(gate, up, GateUp::new(keep))
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x²) + eps) · w

pub(crate) struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(eps: f64) -> RmsNorm {
        RmsNorm { eps: eps as f32 }
    }
}

fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let ss = dot8(row, row) / row.len() as f32;
    1.0 / (ss + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "rms_norm")?;
        let w = f32s(s2, l2, "rms_norm weight")?;
        let h = w.len();
        if l1.dims().last() != Some(&h) {
            bail!("rms_norm: input {:?} does not end in {h}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * ROW_BLOCK)
            .zip(x.par_chunks(h * ROW_BLOCK))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_exact_mut(h).zip(xb.chunks_exact(h)) {
                    let inv = rms_inv(xr, self.eps);
                    for ((o, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                        *o = xv * inv * wv;
                    }
                }
            });
        Ok(out(y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let h = w.elem_count();
        let dev = x.device();
        let (dx, dw) = with_f32(&grad, "rms_norm backward", |g| {
            with_f32(w, "rms_norm backward", |wv| {
                with_f32(x, "rms_norm backward", |xv| {
                    let mut dx = vec![0f32; xv.len()];
                    let partials: Vec<f32> = dx
                        .par_chunks_mut(h * ROW_BLOCK)
                        .zip(xv.par_chunks(h * ROW_BLOCK))
                        .zip(g.par_chunks(h * ROW_BLOCK))
                        .flat_map_iter(|((db, xb), gb)| {
                            let mut dw = vec![0f32; h];
                            let mut gw = vec![0f32; h];
                            for ((dr, xr), gr) in db
                                .chunks_exact_mut(h)
                                .zip(xb.chunks_exact(h))
                                .zip(gb.chunks_exact(h))
                            {
                                let inv = rms_inv(xr, self.eps);
                                let ins = gr.iter().zip(wv).zip(xr);
                                for ((gw, dw), ((&g, &w), &x)) in
                                    gw.iter_mut().zip(dw.iter_mut()).zip(ins)
                                {
                                    *gw = g * w;
                                    *dw += g * x * inv;
                                }
                                let c = dot8(&gw, xr) / h as f32 * inv * inv;
                                for ((d, &gw), &x) in dr.iter_mut().zip(&gw).zip(xr) {
                                    *d = inv * (gw - x * c);
                                }
                            }
                            dw
                        })
                        .collect();
                    Ok((dx, sum_blocks(&partials, h)))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, h, dev)?),
        ))
    }
}

/// RMSNorm over the last dimension, as in transformers' `Qwen2RMSNorm` (f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm::new(eps))
}

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention

pub(crate) struct Attention {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    scale: f32,
    /// Attention probabilities `[batch, heads, len, keys]`, kept by a forward that will be
    /// differentiated.
    probs: Mutex<Option<Vec<f32>>>,
    keep: bool,
}

impl Attention {
    pub(crate) fn new(
        (batch, heads, kv_heads): (usize, usize, usize),
        scale: f64,
        keep: bool,
    ) -> Attention {
        Attention {
            batch,
            heads,
            kv_heads,
            scale: scale as f32,
            probs: Mutex::new(None),
            keep,
        }
    }
}

struct AttDims {
    b: usize,
    t: usize,
    keys: usize,
    nh: usize,
    nkv: usize,
    d: usize,
}

impl AttDims {
    /// `q`: `[batch · len, heads · head_dim]`, `k` and `v`: `[batch · keys, kv_heads · head_dim]`.
    fn new(op: &Attention, q: &Layout, k: &Layout, v: &Layout) -> Result<AttDims> {
        let (b, nh, nkv) = (op.batch, op.heads, op.kv_heads);
        let bad = || {
            candle_core::Error::Msg(format!(
                "attention: q {:?}, k {:?}, v {:?} do not fit batch {b}, {nh} heads over {nkv} kv heads",
                q.dims(),
                k.dims(),
                v.dims()
            ))
        };
        let (qr, qw) = q.shape().dims2()?;
        let (kr, kw) = k.shape().dims2()?;
        if b == 0 || nh == 0 || nkv == 0 || nh % nkv != 0 || qw % nh != 0 || k.dims() != v.dims() {
            return Err(bad());
        }
        let d = qw / nh;
        let (t, keys) = (qr / b, kr / b);
        if qr % b != 0 || kr % b != 0 || kw != nkv * d || keys < t {
            return Err(bad());
        }
        Ok(AttDims {
            b,
            t,
            keys,
            nh,
            nkv,
            d,
        })
    }

    /// Query row `i` attends to keys `0..=offset + i`.
    fn offset(&self) -> usize {
        self.keys - self.t
    }
}

/// Row blocks `(r0, r1, keys visible to the block)`.
fn att_blocks(t: usize, offset: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..t.div_ceil(ATT_BLOCK)).map(move |blk| {
        let r0 = blk * ATT_BLOCK;
        let r1 = (r0 + ATT_BLOCK).min(t);
        (r0, r1, offset + r1)
    })
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32s(s1, l1, "attention q")?,
            f32s(s2, l2, "attention k")?,
            f32s(s3, l3, "attention v")?,
        );
        let a = AttDims::new(self, l1, l2, l3)?;
        let (t, keys, nh, nkv, d) = (a.t, a.keys, a.nh, a.nkv, a.d);
        let offset = a.offset();
        let group = nh / nkv;
        let mut o = vec![0f32; q.len()];
        let mut probs = vec![0f32; a.b * nh * t * keys];
        let optr = SharedMut(o.as_mut_ptr());
        // One task per (batch, head); each writes its own probabilities and output columns.
        probs
            .par_chunks_mut(t * keys)
            .enumerate()
            .for_each(|(bh, p)| {
                let (bi, h) = (bh / nh, bh % nh);
                let kh = h / group;
                let qs = &q[(bi * t * nh + h) * d..];
                let ks = &k[(bi * keys * nkv + kh) * d..];
                let vs = &v[(bi * keys * nkv + kh) * d..];
                for (r0, r1, cols) in att_blocks(t, offset) {
                    let rows = r1 - r0;
                    let pb = &mut p[r0 * keys..];
                    unsafe {
                        mm(
                            (rows, cols, d),
                            pb.as_mut_ptr(),
                            keys,
                            false,
                            m(&qs[r0 * nh * d..], nh * d, 1),
                            mt(ks, nkv * d, 1),
                            self.scale,
                            Parallelism::None,
                        );
                    }
                    for i in 0..rows {
                        let row = &mut pb[i * keys..i * keys + cols];
                        let valid = offset + r0 + i + 1;
                        let (live, masked) = row.split_at_mut(valid);
                        softmax_in_place(live);
                        masked.fill(0.0);
                    }
                    unsafe {
                        mm(
                            (rows, d, cols),
                            optr.at(((bi * t + r0) * nh + h) * d),
                            nh * d,
                            false,
                            m(pb, keys, 1),
                            m(vs, nkv * d, 1),
                            1.0,
                            Parallelism::None,
                        );
                    }
                }
            });
        if self.keep {
            *self.probs.lock().expect("attention probabilities") = Some(probs);
        }
        Ok(out(o, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().expect("attention probabilities").take();
        let Some(probs) = probs else {
            bail!("attention backward: the forward pass kept no probabilities");
        };
        let grad = grad.contiguous()?;
        let (dq, dk, dv) = {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (os, ol) = res.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let a = AttDims::new(self, ql, kl, vl)?;
            attention_bwd(
                &a,
                self.scale,
                &probs,
                slice(&qs, ql)?,
                slice(&ks, kl)?,
                slice(&vs, vl)?,
                slice(&os, ol)?,
                slice(&gs, gl)?,
            )?
        };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

fn slice<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => f32s(c, l, "attention backward"),
        _ => bail!("attention backward: only the CPU backend is implemented"),
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_bwd(
    a: &AttDims,
    scale: f32,
    probs: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    g: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (t, keys, nh, nkv, d) = (a.t, a.keys, a.nh, a.nkv, a.d);
    let offset = a.offset();
    let group = nh / nkv;
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    let (dqp, dkp, dvp) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    // One task per (batch, kv head): its query heads in order, accumulating dK and dV.
    (0..a.b * nkv).into_par_iter().for_each(|bg| {
        let (bi, kh) = (bg / nkv, bg % nkv);
        let ks = &k[(bi * keys * nkv + kh) * d..];
        let vs = &v[(bi * keys * nkv + kh) * d..];
        let dk0 = dkp.at((bi * keys * nkv + kh) * d);
        let dv0 = dvp.at((bi * keys * nkv + kh) * d);
        let mut ds = vec![0f32; t * keys];
        let mut delta = vec![0f32; t];
        for (hi, h) in (kh * group..(kh + 1) * group).enumerate() {
            let p = &probs[(bi * nh + h) * t * keys..(bi * nh + h + 1) * t * keys];
            let base = (bi * t * nh + h) * d;
            let (qs, os, gs) = (&q[base..], &o[base..], &g[base..]);
            for (i, dl) in delta.iter_mut().enumerate() {
                let r = i * nh * d;
                *dl = dot8(&gs[r..r + d], &os[r..r + d]);
            }
            for (r0, r1, cols) in att_blocks(t, offset) {
                let rows = r1 - r0;
                let dsb = &mut ds[r0 * keys..];
                unsafe {
                    // dP = dO · Vᵀ
                    mm(
                        (rows, cols, d),
                        dsb.as_mut_ptr(),
                        keys,
                        false,
                        m(&gs[r0 * nh * d..], nh * d, 1),
                        mt(vs, nkv * d, 1),
                        1.0,
                        Parallelism::None,
                    );
                }
                for i in 0..rows {
                    let pr = &p[(r0 + i) * keys..(r0 + i) * keys + cols];
                    let dr = &mut dsb[i * keys..i * keys + cols];
                    let dl = delta[r0 + i];
                    for (x, pv) in dr.iter_mut().zip(pr) {
                        *x = pv * (*x - dl) * scale;
                    }
                }
                unsafe {
                    // dQ = dS · K
                    mm(
                        (rows, d, cols),
                        dqp.at(base + r0 * nh * d),
                        nh * d,
                        false,
                        m(dsb, keys, 1),
                        m(ks, nkv * d, 1),
                        1.0,
                        Parallelism::None,
                    );
                }
            }
            // dK += dSᵀ · Q and dV += Pᵀ · dO, a block of keys at a time: key `j` is seen by
            // query rows from `j - offset` on, so earlier rows are skipped.
            let first = hi == 0;
            for c0 in (0..keys).step_by(ATT_BLOCK) {
                let c1 = (c0 + ATT_BLOCK).min(keys);
                let i0 = c0.saturating_sub(offset);
                let at = c0 * nkv * d;
                unsafe {
                    mm(
                        (c1 - c0, d, t - i0),
                        dk0.add(at),
                        nkv * d,
                        !first,
                        mt(&ds[i0 * keys + c0..], keys, 1),
                        m(&qs[i0 * nh * d..], nh * d, 1),
                        1.0,
                        Parallelism::None,
                    );
                    mm(
                        (c1 - c0, d, t - i0),
                        dv0.add(at),
                        nkv * d,
                        !first,
                        mt(&p[i0 * keys + c0..], keys, 1),
                        m(&gs[i0 * nh * d..], nh * d, 1),
                        1.0,
                        Parallelism::None,
                    );
                }
            }
        }
    });
    Ok((dq, dk, dv))
}

/// Causal softmax attention. `q`: `[batch · len, heads · head_dim]`; `k`, `v`:
/// `[batch · keys, kv_heads · head_dim]` with `keys >= len` (query `i` sees keys
/// `0..=keys - len + i`); heads share kv heads in groups of `heads / kv_heads`. Returns the
/// shape of `q`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (batch, heads, kv_heads): (usize, usize, usize),
    scale: f64,
) -> Result<Tensor> {
    let keep = q.track_op() || k.track_op() || v.track_op();
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Attention::new((batch, heads, kv_heads), scale, keep),
    )
}

// ---------------------------------------------------------------------------------------------
// Masked token loss: -Σ_r w_r · log softmax(logits_r)[target_r]

struct TokenLoss {
    targets: Vec<u32>,
    weights: Vec<f32>,
    /// `w_r · (softmax(logits_r) - onehot(target_r))`, kept when differentiated.
    grad: Mutex<Option<Vec<f32>>>,
    keep: bool,
}

impl TokenLoss {
    fn new(targets: Vec<u32>, weights: Vec<f32>, keep: bool) -> Result<TokenLoss> {
        if targets.len() != weights.len() {
            bail!(
                "token loss: {} targets, {} weights",
                targets.len(),
                weights.len()
            );
        }
        Ok(TokenLoss {
            targets,
            weights,
            grad: Mutex::new(None),
            keep,
        })
    }
}

impl CustomOp1 for TokenLoss {
    fn name(&self) -> &'static str {
        "token-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "token loss")?;
        let vocab = *l.dims().last().unwrap_or(&0);
        let rows = self.targets.len();
        if vocab == 0 || x.len() != rows * vocab {
            bail!("token loss: logits {:?} for {rows} targets", l.dims());
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("token loss: target {bad} outside the vocabulary ({vocab})");
        }
        let mut grad = if self.keep {
            vec![0f32; x.len()]
        } else {
            Vec::new()
        };
        let mut losses = vec![0f32; rows];
        let work = |(r, (xr, gr)): (usize, (&[f32], &mut [f32])), loss: &mut f32| {
            let (max, sum) = exp_sum(xr, gr);
            let lse = max + sum.ln();
            let tgt = self.targets[r] as usize;
            let w = self.weights[r];
            *loss = -(xr[tgt] - lse) * w;
            if !gr.is_empty() {
                scale_in_place(gr, w / sum);
                gr[tgt] -= w;
            }
        };
        if self.keep {
            x.par_chunks(vocab)
                .zip(grad.par_chunks_mut(vocab))
                .enumerate()
                .zip(losses.par_iter_mut())
                .for_each(|(item, loss)| work(item, loss));
        } else {
            x.par_chunks(vocab)
                .enumerate()
                .zip(losses.par_iter_mut())
                .for_each(|((r, xr), loss)| work((r, (xr, &mut [])), loss));
        }
        // Row losses summed in order, in f64.
        let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
        if self.keep {
            *self.grad.lock().expect("token loss gradient") = Some(grad);
        }
        Ok(out(vec![total as f32], ()))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let scale = grad.to_scalar::<f32>()?;
        let Some(mut g) = self.grad.lock().expect("token loss gradient").take() else {
            bail!("token loss backward: the forward pass kept no gradient");
        };
        g.par_chunks_mut(4096).for_each(|c| {
            for v in c {
                *v *= scale;
            }
        });
        Ok(Some(Tensor::from_vec(g, logits.shape(), logits.device())?))
    }
}

/// `-Σ_r weights[r] · log softmax(logits[r])[targets[r]]` over the rows of `logits`
/// (`[.., vocab]`), as a scalar.
pub fn token_loss(logits: &Tensor, targets: Vec<u32>, weights: Vec<f32>) -> Result<Tensor> {
    let op = TokenLoss::new(targets, weights, logits.track_op())?;
    logits.contiguous()?.apply_op1(op)
}

// ---------------------------------------------------------------------------------------------
// Helpers for the explicit backward pass (`Qwen2::loss_and_grads`)

/// Rows of logits alive at a time in `head_loss`.
const HEAD_ROWS: usize = 128;

/// The LM head and the token loss of `x` (`[rows, hidden]`) under `w` (`[vocab, hidden]`),
/// `HEAD_ROWS` rows at a time, so the `[rows, vocab]` logits and their gradient never exist
/// whole. Returns `-Σ_r weights[r] · log softmax(x_r · wᵀ)[targets[r]]` (row losses summed in
/// order, in f64) and, with `scale`, the gradients of `scale · loss` for `x` and `w`.
#[allow(clippy::type_complexity)]
pub(crate) fn head_loss(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    scale: Option<f32>,
) -> Result<(f64, Option<(Tensor, Tensor)>)> {
    let (rows, h) = x.dims2()?;
    let (vocab, wh) = w.dims2()?;
    if wh != h || targets.len() != rows || weights.len() != rows {
        bail!(
            "head loss: x {:?}, weight {:?}, {} targets, {} weights",
            x.dims(),
            w.dims(),
            targets.len(),
            weights.len()
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("token loss: target {bad} outside the vocabulary ({vocab})");
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let mut losses = vec![0f32; rows];
    let mut dx = vec![0f32; if scale.is_some() { rows * h } else { 0 }];
    let mut dw = vec![0f32; if scale.is_some() { vocab * h } else { 0 }];
    with_f32(&x, "head loss", |xv| {
        with_f32(&w, "head loss", |wv| {
            let mut logits = vec![0f32; HEAD_ROWS.min(rows) * vocab];
            for r0 in (0..rows).step_by(HEAD_ROWS) {
                let n = HEAD_ROWS.min(rows - r0);
                let xb = &xv[r0 * h..(r0 + n) * h];
                let lb = &mut logits[..n * vocab];
                unsafe {
                    mm(
                        (n, vocab, h),
                        lb.as_mut_ptr(),
                        vocab,
                        false,
                        m(xb, h, 1),
                        mt(wv, h, 1),
                        1.0,
                        parallelism(n * vocab * h),
                    );
                }
                // Each row: its loss, and with `scale` the logits' gradient in place.
                lb.par_chunks_mut(vocab)
                    .zip(losses[r0..r0 + n].par_iter_mut())
                    .enumerate()
                    .for_each(|(i, (row, loss))| {
                        let (t, wt) = (targets[r0 + i] as usize, weights[r0 + i]);
                        let target_logit = row[t];
                        match scale {
                            None => {
                                let (max, sum) = exp_sum(row, &mut []);
                                *loss = -(target_logit - (max + sum.ln())) * wt;
                            }
                            Some(s) => {
                                let (max, sum) = exp_sum_in_place(row);
                                *loss = -(target_logit - (max + sum.ln())) * wt;
                                scale_in_place(row, wt / sum);
                                row[t] -= wt;
                                scale_in_place(row, s);
                            }
                        }
                    });
                if scale.is_some() {
                    let par = parallelism(n * vocab * h);
                    unsafe {
                        // dx = G · W, dW += Gᵀ · x
                        mm(
                            (n, h, vocab),
                            dx[r0 * h..].as_mut_ptr(),
                            h,
                            false,
                            m(lb, vocab, 1),
                            m(wv, h, 1),
                            1.0,
                            par,
                        );
                        mm(
                            (vocab, h, n),
                            dw.as_mut_ptr(),
                            h,
                            r0 > 0,
                            mt(lb, vocab, 1),
                            m(xb, h, 1),
                            1.0,
                            par,
                        );
                    }
                }
            }
            Ok(())
        })
    })?;
    let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
    let grads = match scale {
        Some(_) => Some((
            Tensor::from_vec(dx, (rows, h), x.device())?,
            Tensor::from_vec(dw, (vocab, h), x.device())?,
        )),
        None => None,
    };
    Ok((total, grads))
}

/// `a + b`, elementwise (same shapes), on the rayon pool.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!("add: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let sum = with_f32(&a, "add", |x| {
        with_f32(&b, "add", |y| {
            let mut z = vec![0f32; x.len()];
            z.par_chunks_mut(ELEM_CHUNK)
                .zip(x.par_chunks(ELEM_CHUNK).zip(y.par_chunks(ELEM_CHUNK)))
                .for_each(|(z, (x, y))| {
                    for ((z, &x), &y) in z.iter_mut().zip(x).zip(y) {
                        *z = x + y;
                    }
                });
            Ok(z)
        })
    })?;
    Tensor::from_vec(sum, a.shape(), a.device())
}

/// The gradient of an embedding table `[vocab, width]` from the gradients of its looked-up
/// rows (`grad`: `[ids.len(), width]`), plus `base` when given: rows added in order.
pub(crate) fn embedding_grad(
    ids: &[u32],
    grad: &Tensor,
    (vocab, width): (usize, usize),
    base: Option<&Tensor>,
) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    let mut table = match base {
        Some(b) => with_f32(&b.contiguous()?, "embedding backward", |v| Ok(v.to_vec()))?,
        None => vec![0f32; vocab * width],
    };
    if table.len() != vocab * width {
        bail!("embedding backward: the base gradient is not [{vocab}, {width}]");
    }
    with_f32(&grad, "embedding backward", |g| {
        if g.len() != ids.len() * width {
            bail!(
                "embedding backward: {} ids for a gradient of {:?}",
                ids.len(),
                grad.dims()
            );
        }
        for (&id, row) in ids.iter().zip(g.chunks_exact(width)) {
            let id = id as usize;
            if id >= vocab {
                bail!("embedding backward: id {id} outside the vocabulary ({vocab})");
            }
            for (t, v) in table[id * width..(id + 1) * width].iter_mut().zip(row) {
                *t += v;
            }
        }
        Ok(())
    })?;
    Tensor::from_vec(table, (vocab, width), grad.device())
}

// ---------------------------------------------------------------------------------------------
// AdamW, in place

/// One AdamW step on a parameter, its gradient and its moment buffers.
pub struct AdamStep<'a> {
    pub m: Mutex<&'a mut [f32]>,
    pub v: Mutex<&'a mut [f32]>,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Bias corrections `1 - beta^step`.
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// Multiplier applied to the parameter before the update (`1 - lr · weight_decay`).
    pub decay: f32,
    /// Multiplier applied to the gradient (global-norm clipping).
    pub grad_scale: f32,
}

impl InplaceOp2 for AdamStep<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = f32s(s2, l2, "adamw gradient")?;
        let p = match s1 {
            CpuStorage::F32(v) => match l1.contiguous_offsets() {
                Some((a, b)) => &mut v[a..b],
                None => bail!("adamw: parameter must be contiguous"),
            },
            _ => bail!("adamw: parameter must be f32"),
        };
        let mut m = self.m.lock().expect("adamw state");
        let mut v = self.v.lock().expect("adamw state");
        if p.len() != g.len() || m.len() != g.len() || v.len() != g.len() {
            bail!("adamw: parameter, gradient and state sizes differ");
        }
        const C: usize = 4096;
        p.par_chunks_mut(C)
            .zip(g.par_chunks(C))
            .zip(m.par_chunks_mut(C).zip(v.par_chunks_mut(C)))
            .for_each(|((p, g), (m, v))| {
                for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                    let g = g * self.grad_scale;
                    *m = *m * self.beta1 + g * (1.0 - self.beta1);
                    *v = *v * self.beta2 + g * g * (1.0 - self.beta2);
                    let update = (*m / self.bc1) / ((*v / self.bc2).sqrt() + self.eps);
                    *p = *p * self.decay - update * self.lr;
                }
            });
        Ok(())
    }
}

/// Σ x² of a tensor's elements, in f64, in a fixed order.
pub fn sum_sq_f64(t: &Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    with_f32(&t, "sum of squares", |x| {
        let partials: Vec<f64> = x
            .par_chunks(4096)
            .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
            .collect();
        Ok(partials.iter().sum())
    })
}
