//! The fused kernels of `model::ops` against the same maths composed from candle's own
//! differentiable ops: outputs and every input gradient agree to float tolerance.

use candle_core::{DType, Device, Tensor, Var, D};
use model::ops;
use model::rng::Rng;

fn rand(shape: &[usize], seed: u64) -> Var {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: fused {x}, reference {y}"
        );
    }
}

/// Runs `fused` and `reference` on the same inputs, weights the outputs with the same random
/// tensor, and compares the outputs and the gradients of every input.
fn check(
    name: &str,
    inputs: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused(&ts), reference(&ts));
    close(&format!("{name} output"), &a, &b, 1e-5);
    let r = rand(a.dims(), 99).as_tensor().detach();
    let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let (x, y) = (ga.get(t).unwrap(), gb.get(t).unwrap());
        close(&format!("{name} gradient of input {i}"), x, y, 1e-4);
    }
}

#[test]
fn linear_matches_matmul() {
    let ins = [rand(&[2, 5, 12], 1), rand(&[7, 12], 2), rand(&[7], 3)];
    let reference = |t: &[Tensor]| {
        t[0].reshape((10, 12))
            .unwrap()
            .matmul(&t[1].t().unwrap())
            .unwrap()
            .broadcast_add(&t[2])
            .unwrap()
            .reshape((2, 5, 7))
            .unwrap()
    };
    check(
        "linear+bias",
        &ins,
        |t| ops::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
        reference,
    );
    let res = [
        rand(&[2, 5, 12], 1),
        rand(&[7, 12], 2),
        rand(&[2, 5, 7], 18),
    ];
    check(
        "linear+residual",
        &res,
        |t| ops::linear_residual(&t[0], &t[1], &t[2]).unwrap(),
        |t| {
            (t[0]
                .reshape((10, 12))
                .unwrap()
                .matmul(&t[1].t().unwrap())
                .unwrap()
                .reshape((2, 5, 7))
                .unwrap()
                + &t[2])
                .unwrap()
        },
    );
    check(
        "linear",
        &ins[..2],
        |t| ops::linear(&t[0], &t[1], None).unwrap(),
        |t| {
            t[0].reshape((10, 12))
                .unwrap()
                .matmul(&t[1].t().unwrap())
                .unwrap()
                .reshape((2, 5, 7))
                .unwrap()
        },
    );
}

#[test]
fn rms_norm_matches_composition() {
    // More than one row block, so the weight gradient sums several partials.
    let ins = [rand(&[3, 40, 16], 4), rand(&[16], 5)];
    check(
        "rms_norm",
        &ins,
        |t| ops::rms_norm(&t[0], &t[1], 1e-6).unwrap(),
        |t| {
            let var = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let inv = (var + 1e-6).unwrap().sqrt().unwrap().recip().unwrap();
            t[0].broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&t[1])
                .unwrap()
        },
    );
}

fn rope_reference(x: &Tensor, offset: usize, theta: f32) -> Tensor {
    // x: [b, t, n, d]; the HF formulation with rotate_half.
    let (_b, t, _n, d) = x.dims4().unwrap();
    let inv: Vec<f32> = (0..d / 2)
        .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / d as f32))
        .collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in offset..offset + t {
        for _ in 0..2 {
            for f in &inv {
                cos.push((pos as f32 * f).cos());
                sin.push((pos as f32 * f).sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (t, 1, d), x.device()).unwrap();
    let sin = Tensor::from_vec(sin, (t, 1, d), x.device()).unwrap();
    let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
    let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
}

#[test]
fn linear_rope_matches_rotate_half() {
    // 2 sequences of 9 positions (offset 5), 3 heads of 8: rows [18, 24].
    let ins = [rand(&[18, 10], 6), rand(&[24, 10], 19), rand(&[24], 20)];
    let table = ops::RopeTable::new(8, 10_000.0, 5, 9);
    check(
        "linear+rope",
        &ins,
        |t| ops::linear_rope(&t[0], &t[1], &t[2], &table).unwrap(),
        |t| {
            let y = t[0]
                .matmul(&t[1].t().unwrap())
                .unwrap()
                .broadcast_add(&t[2])
                .unwrap()
                .reshape((2, 9, 3, 8))
                .unwrap();
            rope_reference(&y, 5, 10_000.0).reshape((18, 24)).unwrap()
        },
    );
}

#[test]
fn swiglu_matches_silu_mul() {
    let ins = [rand(&[37, 16], 7), rand(&[40, 16], 8), rand(&[40, 16], 21)];
    check(
        "swiglu gate/up",
        &ins,
        |t| ops::swiglu_gate_up(&t[0], &t[1], &t[2]).unwrap(),
        |t| {
            let g = t[0].matmul(&t[1].t().unwrap()).unwrap();
            let u = t[0].matmul(&t[2].t().unwrap()).unwrap();
            (g.silu().unwrap() * u).unwrap()
        },
    );
}

/// The original formulation on `[b, t, heads, d]` tensors (inputs flat as for the fused op).
fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, dims: [usize; 6], scale: f64) -> Tensor {
    let [b, t, keys, nh, nkv, d] = dims;
    let q = q.reshape((b, t, nh, d)).unwrap();
    let k = k.reshape((b, keys, nkv, d)).unwrap();
    let v = v.reshape((b, keys, nkv, d)).unwrap();
    let offset = keys - t;
    let q = q.transpose(1, 2).unwrap().contiguous().unwrap();
    let rep = |x: &Tensor| {
        x.transpose(1, 2)
            .unwrap()
            .unsqueeze(2)
            .unwrap()
            .broadcast_as((b, nkv, nh / nkv, keys, d))
            .unwrap()
            .reshape((b, nh, keys, d))
            .unwrap()
    };
    let (k, v) = (rep(&k), rep(&v));
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..keys).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, keys), q.device()).unwrap();
    let att = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
    att.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b * t, nh * d))
        .unwrap()
}

#[test]
fn attention_matches_masked_softmax() {
    let scale = 1.0 / 8f64.sqrt();
    // [b, t, keys, heads, kv heads, head_dim]: 70 rows make two causal row blocks; then 3 new
    // rows continuing a cache of 70.
    for (dims, seed) in [([2, 70, 70, 4, 2, 8], 9), ([1, 3, 73, 4, 2, 8], 12)] {
        let [b, t, keys, nh, nkv, d] = dims;
        let ins = [
            rand(&[b * t, nh * d], seed),
            rand(&[b * keys, nkv * d], seed + 1),
            rand(&[b * keys, nkv * d], seed + 2),
        ];
        check(
            &format!("attention {dims:?}"),
            &ins,
            |x| ops::causal_attention(&x[0], &x[1], &x[2], (b, nh, nkv), scale).unwrap(),
            |x| attention_reference(&x[0], &x[1], &x[2], dims, scale),
        );
    }
}

#[test]
fn token_loss_matches_log_softmax() {
    let ins = [rand(&[2, 6, 50], 15)];
    let targets: Vec<u32> = (0..12).map(|i| (i * 7 % 50) as u32).collect();
    let weights: Vec<f32> = (0..12)
        .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
        .collect();
    let (tg, wt) = (targets.clone(), weights.clone());
    check(
        "token loss",
        &ins,
        |t| ops::token_loss(&t[0], targets.clone(), weights.clone()).unwrap(),
        move |t| {
            let logp = candle_nn::ops::log_softmax(&t[0], D::Minus1).unwrap();
            let idx = Tensor::from_vec(tg.clone(), (2, 6, 1), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(wt.clone(), (2, 6), &Device::Cpu).unwrap();
            let picked = logp.gather(&idx, 2).unwrap().squeeze(2).unwrap();
            (picked * w).unwrap().sum_all().unwrap().neg().unwrap()
        },
    );
}

#[test]
fn fused_ops_reject_bad_inputs() {
    let x = rand(&[2, 3], 16).as_tensor().clone();
    let err = ops::token_loss(&x, vec![0, 7], vec![1.0, 1.0]).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = ops::linear(&x, &rand(&[4, 5], 17).as_tensor().clone(), None).unwrap_err();
    assert!(err.to_string().contains("does not end in 5"), "{err}");
    let ints = Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap();
    let err = ops::rms_norm(&ints, &ints, 1e-6).unwrap_err();
    assert!(err.to_string().contains("expected f32"), "{err}");
    let err = ops::causal_attention(&x, &x, &x, (1, 4, 3), 1.0).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

#[test]
fn explicit_backward_matches_autograd() {
    // Untied head too, so `lm_head.weight` and the embedding get separate gradients.
    for tie in [true, false] {
        let mut c = model::Qwen2Config::tiny(97);
        c.tie_word_embeddings = tie;
        let m = model::Qwen2::init(&c, 3, &Device::Cpu).unwrap();
        let mut rng = Rng::new(4);
        let toks: Vec<u32> = (0..3 * 21).map(|_| rng.below(97) as u32).collect();
        let mask: Vec<f32> = (0..3 * 21)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 })
            .collect();
        let toks = Tensor::from_vec(toks, (3, 21), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (3, 21), &Device::Cpu).unwrap();
        let (loss, count) = m.loss_sum(&toks, &mask).unwrap();
        let auto = (&loss * 0.25).unwrap().backward().unwrap();
        let (loss2, count2, grads) = m.loss_and_grads(&toks, &mask, Some(0.25)).unwrap();
        // The explicit pass computes the head in row blocks: equal to float tolerance.
        let loss = f64::from(loss.to_scalar::<f32>().unwrap());
        assert!(
            (loss - loss2).abs() <= 1e-6 * loss.abs(),
            "{loss} vs {loss2}"
        );
        assert_eq!(count, count2);
        assert_eq!(grads.len(), m.params().len());
        for (name, var) in m.params() {
            let a = auto.get(var.as_tensor()).unwrap();
            close(
                &format!("gradient of {name} (tied {tie})"),
                &grads[name],
                a,
                1e-5,
            );
        }
        let (loss3, _, none) = m.loss_and_grads(&toks, &mask, None).unwrap();
        assert_eq!(loss3, loss2);
        assert!(none.is_empty());
    }
}

#[test]
fn fast_exp_is_within_two_ulp() {
    let mut worst = 0f32;
    let mut x = -87.0f32;
    while x < 88.0 {
        let (a, b) = (ops::exp(x), x.exp());
        worst = worst.max(((a - b) / b).abs());
        x += 0.0137;
    }
    assert!(worst < 2.5e-7, "relative error {worst}");
    assert_eq!(ops::exp(0.0), 1.0);
    assert_eq!(ops::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(ops::exp(-100.0), 0.0);
    assert!(ops::exp(f32::NAN).is_nan());
    assert!(ops::exp(100.0).is_finite());
}
