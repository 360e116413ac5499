// The Qwen2 model's CUDA kernels, compiled at run time by NVRTC (gpu/src/kernels.rs).
//
// Determinism: no atomics anywhere. Every sum is taken in a fixed order: each thread of a
// block accumulates a fixed stride of elements sequentially, then a shared-memory tree
// combines the threads in a fixed pattern. With the same inputs, launch shape and device
// model, every output is the same bits. Sums over rows (weight gradients) are written per
// row and reduced by `sum_rows_*` in row order, never accumulated concurrently.
//
// Storage is f32 or bf16 (raw 16-bit words, converted here with round-to-nearest-even), and
// every computation is in f32. Each template is instantiated under `extern "C"` names with a
// `_f32` / `_bf16` suffix. Kernels that reduce a row assume blockDim.x == BLOCK.

#define BLOCK 256
// -inf without math.h (NVRTC has no standard headers).
#define NEG_INF __int_as_float(0xff800000)

typedef unsigned short bf16;

__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, long i, float v) {
    if (v != v) { p[i] = 0x7FC0; return; }
    unsigned b = __float_as_uint(v);
    b += 0x7FFFu + ((b >> 16) & 1u);
    p[i] = (bf16)(b >> 16);
}

// The block's sum of `v`, the same on every thread, in a fixed order.
__device__ float block_sum(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// ---- RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w. Grid: one block per row.
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, float* rstd, int cols, float eps) {
    __shared__ float sh[BLOCK];
    long base = (long)blockIdx.x * cols;
    float acc = 0.f;
    for (int c = threadIdx.x; c < cols; c += BLOCK) { float v = ld(x, base + c); acc += v * v; }
    float r = rsqrtf(block_sum(acc, sh) / cols + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int c = threadIdx.x; c < cols; c += BLOCK) st(y, base + c, ld(x, base + c) * r * ld(w, c));
}

// dx = r * (w*dy - x * r^2 * mean(w*dy*x)); dw_rows[row] = dy * x * r (summed by sum_rows).
template <typename T>
__device__ void rmsnorm_bwd(const T* dy, const T* x, const T* w, const float* rstd, T* dx,
                            float* dw_rows, int cols) {
    __shared__ float sh[BLOCK];
    long base = (long)blockIdx.x * cols;
    float r = rstd[blockIdx.x];
    float acc = 0.f;
    for (int c = threadIdx.x; c < cols; c += BLOCK)
        acc += ld(w, c) * ld(dy, base + c) * ld(x, base + c);
    float m = block_sum(acc, sh) / cols;
    for (int c = threadIdx.x; c < cols; c += BLOCK) {
        float xv = ld(x, base + c), g = ld(dy, base + c);
        st(dx, base + c, r * (ld(w, c) * g - xv * r * r * m));
        dw_rows[base + c] = g * xv * r;
    }
}

// out[c] = sum over rows of m[row, c], rows in order. Grid: ceil(cols / BLOCK) blocks.
extern "C" __global__ void sum_rows_f32(const float* m, float* out, int rows, int cols) {
    int c = blockIdx.x * BLOCK + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.f;
    for (int r = 0; r < rows; r++) acc += m[(long)r * cols + c];
    out[c] = acc;
}

// The sum of n values in a fixed order. Grid: one block.
extern "C" __global__ void sum_f32(const float* v, float* out, long n) {
    __shared__ float sh[BLOCK];
    float acc = 0.f;
    for (long i = threadIdx.x; i < n; i += BLOCK) acc += v[i];
    float s = block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = s;
}

// ---- RoPE, Qwen2's rotate-half layout. x: [B, H, T, D]; cos, sin: [T, D] (f32).
// One thread per (b, h, t, i < D/2).
template <typename T>
__device__ void rope_fwd(const T* x, const float* cos, const float* sin, T* y, long pairs, int seq,
                         int dim) {
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    int half = dim / 2;
    int i = k % half;
    long row = k / half;  // (b, h, t)
    int t = row % seq;
    long a = row * dim + i, b = a + half;
    float xa = ld(x, a), xb = ld(x, b);
    st(y, a, xa * cos[t * dim + i] - xb * sin[t * dim + i]);
    st(y, b, xb * cos[t * dim + i + half] + xa * sin[t * dim + i + half]);
}

// The transpose of the rotation.
template <typename T>
__device__ void rope_bwd(const T* dy, const float* cos, const float* sin, T* dx, long pairs, int seq,
                         int dim) {
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    int half = dim / 2;
    int i = k % half;
    long row = k / half;
    int t = row % seq;
    long a = row * dim + i, b = a + half;
    float ga = ld(dy, a), gb = ld(dy, b);
    st(dx, a, ga * cos[t * dim + i] + gb * sin[t * dim + i + half]);
    st(dx, b, gb * cos[t * dim + i + half] - ga * sin[t * dim + i]);
}

// ---- SwiGLU: out = silu(gate) * up. One thread per element.
template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* out, long n) {
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float g = ld(gate, k);
    float s = 1.f / (1.f + expf(-g));
    st(out, k, g * s * ld(up, k));
}

template <typename T>
__device__ void swiglu_bwd(const T* dout, const T* gate, const T* up, T* dgate, T* dup, long n) {
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float g = ld(gate, k), u = ld(up, k), d = ld(dout, k);
    float s = 1.f / (1.f + expf(-g));
    st(dgate, k, d * u * s * (1.f + g * (1.f - s)));
    st(dup, k, d * g * s);
}

// ---- Causal attention with grouped-query heads. q, o: [B, Hq, T, D]; k, v: [B, Hkv, T, D];
// Hq = Hkv * group. lse: [B, Hq, T], the log-sum-exp of each query's scores (for the
// backward). Grid: one block per query row; dynamic shared memory: T floats.
template <typename T>
__device__ void attention_fwd(const T* q, const T* k, const T* v, T* o, float* lse, int heads,
                              int group, int seq, int dim, float scale) {
    extern __shared__ float p[];
    __shared__ float sh[BLOCK];
    long row = blockIdx.x;
    int t = row % seq;
    long bh = row / seq;
    int h = bh % heads;
    long b = bh / heads;
    long kv = (b * (heads / group) + h / group) * seq;
    const long qo = row * dim;
    float mx = NEG_INF;
    for (int s = threadIdx.x; s <= t; s += BLOCK) {
        float acc = 0.f;
        for (int d = 0; d < dim; d++) acc += ld(q, qo + d) * ld(k, (kv + s) * dim + d);
        p[s] = acc * scale;
        mx = fmaxf(mx, p[s]);
    }
    mx = block_max(mx, sh);
    float sum = 0.f;
    for (int s = threadIdx.x; s <= t; s += BLOCK) { p[s] = expf(p[s] - mx); sum += p[s]; }
    sum = block_sum(sum, sh);
    if (threadIdx.x == 0) lse[row] = mx + logf(sum);
    for (int d = threadIdx.x; d < dim; d += BLOCK) {
        float acc = 0.f;
        for (int s = 0; s <= t; s++) acc += p[s] * ld(v, (kv + s) * dim + d);
        st(o, qo + d, acc / sum);
    }
}

// delta[row] = dO[row] . O[row]. Grid: one block per query row.
template <typename T>
__device__ void attention_delta(const T* dout, const T* o, float* delta, int dim) {
    __shared__ float sh[BLOCK];
    long base = (long)blockIdx.x * dim;
    float acc = 0.f;
    for (int d = threadIdx.x; d < dim; d += BLOCK) acc += ld(dout, base + d) * ld(o, base + d);
    float s = block_sum(acc, sh);
    if (threadIdx.x == 0) delta[blockIdx.x] = s;
}

// dQ[t] = scale * sum_s dS[t,s] K[s], dS = P * (dO.V - delta). Grid: one block per query row;
// dynamic shared memory: T floats.
template <typename T>
__device__ void attention_bwd_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                 const float* delta, T* dq, int heads, int group, int seq, int dim,
                                 float scale) {
    extern __shared__ float ds[];
    long row = blockIdx.x;
    int t = row % seq;
    long bh = row / seq;
    int h = bh % heads;
    long b = bh / heads;
    long kv = (b * (heads / group) + h / group) * seq;
    const long qo = row * dim;
    for (int s = threadIdx.x; s <= t; s += BLOCK) {
        float score = 0.f, dp = 0.f;
        for (int d = 0; d < dim; d++) {
            score += ld(q, qo + d) * ld(k, (kv + s) * dim + d);
            dp += ld(dout, qo + d) * ld(v, (kv + s) * dim + d);
        }
        float pr = expf(score * scale - lse[row]);
        ds[s] = pr * (dp - delta[row]);
    }
    __syncthreads();
    for (int d = threadIdx.x; d < dim; d += BLOCK) {
        float acc = 0.f;
        for (int s = 0; s <= t; s++) acc += ds[s] * ld(k, (kv + s) * dim + d);
        st(dq, qo + d, acc * scale);
    }
}

// dK[s], dV[s] of one key row, summed over the query heads of its group (in order) and the
// queries t >= s (in order), BLOCK queries at a time. Grid: one block per key row
// [B, Hkv, T]; requires dim <= BLOCK.
template <typename T>
__device__ void attention_bwd_dkv(const T* q, const T* k, const T* v, const T* dout,
                                  const float* lse, const float* delta, T* dk, T* dv, int heads,
                                  int group, int seq, int dim, float scale) {
    __shared__ float pr[BLOCK];
    __shared__ float ds[BLOCK];
    long row = blockIdx.x;  // (b, hk, s)
    int s = row % seq;
    long bhk = row / seq;
    int hk = bhk % (heads / group);
    long b = bhk / (heads / group);
    const long ko = row * dim;
    float acc_k = 0.f, acc_v = 0.f;
    int d = threadIdx.x;
    for (int g = 0; g < group; g++) {
        long qrow0 = (b * heads + hk * group + g) * seq;
        for (int t0 = s; t0 < seq; t0 += BLOCK) {
            int t = t0 + threadIdx.x;
            if (t < seq) {
                long qo = (qrow0 + t) * dim;
                float score = 0.f, dp = 0.f;
                for (int e = 0; e < dim; e++) {
                    score += ld(q, qo + e) * ld(k, ko + e);
                    dp += ld(dout, qo + e) * ld(v, ko + e);
                }
                float p_ = expf(score * scale - lse[qrow0 + t]);
                pr[threadIdx.x] = p_;
                ds[threadIdx.x] = p_ * (dp - delta[qrow0 + t]);
            }
            __syncthreads();
            if (d < dim) {
                int n = min(BLOCK, seq - t0);
                for (int j = 0; j < n; j++) {
                    long qo = (qrow0 + t0 + j) * dim;
                    acc_v += pr[j] * ld(dout, qo + d);
                    acc_k += ds[j] * ld(q, qo + d);
                }
            }
            __syncthreads();
        }
    }
    if (d < dim) {
        st(dk, ko + d, acc_k * scale);
        st(dv, ko + d, acc_v);
    }
}

// ---- The LM head's loss: cross-entropy of logits [rows, V] against targets (< 0: ignored).
// loss_rows[row] = lse - logit[target] (0 when ignored); summed by sum_f32. Grid: one block per
// row.
template <typename T>
__device__ void cross_entropy_fwd(const T* logits, const int* targets, float* loss_rows,
                                  float* lse, int vocab) {
    __shared__ float sh[BLOCK];
    long base = (long)blockIdx.x * vocab;
    float mx = NEG_INF;
    for (int c = threadIdx.x; c < vocab; c += BLOCK) mx = fmaxf(mx, ld(logits, base + c));
    mx = block_max(mx, sh);
    float sum = 0.f;
    for (int c = threadIdx.x; c < vocab; c += BLOCK) sum += expf(ld(logits, base + c) - mx);
    sum = block_sum(sum, sh);
    if (threadIdx.x == 0) {
        float l = mx + logf(sum);
        lse[blockIdx.x] = l;
        int y = targets[blockIdx.x];
        loss_rows[blockIdx.x] = y < 0 ? 0.f : l - ld(logits, base + y);
    }
}

// dlogits = (softmax - onehot(target)) * scale; rows with an ignored target get 0.
template <typename T>
__device__ void cross_entropy_bwd(const T* logits, const int* targets, const float* lse,
                                  T* dlogits, int vocab, float scale) {
    long base = (long)blockIdx.x * vocab;
    int y = targets[blockIdx.x];
    float l = lse[blockIdx.x];
    for (int c = threadIdx.x; c < vocab; c += BLOCK) {
        float g = y < 0 ? 0.f : (expf(ld(logits, base + c) - l) - (c == y ? 1.f : 0.f)) * scale;
        st(dlogits, base + c, g);
    }
}

// ---- AdamW on f32 master weights, one thread per parameter. bc1 = 1 - beta1^step,
// bc2 = 1 - beta2^step. The gradient may be bf16.
template <typename T>
__device__ void adamw(float* param, const T* grad, float* m, float* v, long n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, float bc1, float bc2) {
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float g = ld(grad, k);
    float mk = beta1 * m[k] + (1.f - beta1) * g;
    float vk = beta2 * v[k] + (1.f - beta2) * g * g;
    m[k] = mk;
    v[k] = vk;
    float p = param[k];
    param[k] = p - lr * ((mk / bc1) / (sqrtf(vk / bc2) + eps) + weight_decay * p);
}

#define INSTANTIATE(S, T)                                                                        \
    extern "C" __global__ void rmsnorm_fwd_##S(const T* x, const T* w, T* y, float* rstd, int c, \
                                               float eps) { rmsnorm_fwd(x, w, y, rstd, c, eps); } \
    extern "C" __global__ void rmsnorm_bwd_##S(const T* dy, const T* x, const T* w,             \
                                               const float* rstd, T* dx, float* dw, int c) {     \
        rmsnorm_bwd(dy, x, w, rstd, dx, dw, c);                                                  \
    }                                                                                            \
    extern "C" __global__ void rope_fwd_##S(const T* x, const float* co, const float* si, T* y, \
                                            long n, int seq, int dim) {                          \
        rope_fwd(x, co, si, y, n, seq, dim);                                                     \
    }                                                                                            \
    extern "C" __global__ void rope_bwd_##S(const T* dy, const float* co, const float* si,      \
                                            T* dx, long n, int seq, int dim) {                   \
        rope_bwd(dy, co, si, dx, n, seq, dim);                                                   \
    }                                                                                            \
    extern "C" __global__ void swiglu_fwd_##S(const T* g, const T* u, T* o, long n) {           \
        swiglu_fwd(g, u, o, n);                                                                  \
    }                                                                                            \
    extern "C" __global__ void swiglu_bwd_##S(const T* d, const T* g, const T* u, T* dg, T* du, \
                                              long n) { swiglu_bwd(d, g, u, dg, du, n); }        \
    extern "C" __global__ void attention_fwd_##S(const T* q, const T* k, const T* v, T* o,      \
                                                 float* lse, int h, int g, int t, int d,         \
                                                 float sc) {                                     \
        attention_fwd(q, k, v, o, lse, h, g, t, d, sc);                                          \
    }                                                                                            \
    extern "C" __global__ void attention_delta_##S(const T* dout, const T* o, float* delta,     \
                                                   int d) { attention_delta(dout, o, delta, d); }\
    extern "C" __global__ void attention_bwd_dq_##S(const T* q, const T* k, const T* v,         \
                                                    const T* dout, const float* lse,             \
                                                    const float* delta, T* dq, int h, int g,     \
                                                    int t, int d, float sc) {                    \
        attention_bwd_dq(q, k, v, dout, lse, delta, dq, h, g, t, d, sc);                         \
    }                                                                                            \
    extern "C" __global__ void attention_bwd_dkv_##S(const T* q, const T* k, const T* v,        \
                                                     const T* dout, const float* lse,            \
                                                     const float* delta, T* dk, T* dv, int h,    \
                                                     int g, int t, int d, float sc) {            \
        attention_bwd_dkv(q, k, v, dout, lse, delta, dk, dv, h, g, t, d, sc);                    \
    }                                                                                            \
    extern "C" __global__ void cross_entropy_fwd_##S(const T* lg, const int* y, float* lr,      \
                                                     float* lse, int v) {                        \
        cross_entropy_fwd(lg, y, lr, lse, v);                                                    \
    }                                                                                            \
    extern "C" __global__ void cross_entropy_bwd_##S(const T* lg, const int* y,                 \
                                                     const float* lse, T* dlg, int v,            \
                                                     float sc) {                                 \
        cross_entropy_bwd(lg, y, lse, dlg, v, sc);                                               \
    }                                                                                            \
    extern "C" __global__ void adamw_##S(float* p, const T* g, float* m, float* v, long n,      \
                                         float lr, float b1, float b2, float eps, float wd,      \
                                         float bc1, float bc2) {                                 \
        adamw(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);                                     \
    }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)
