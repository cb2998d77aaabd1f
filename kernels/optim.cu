// Optimizer steps, the GPU twin of crates/ncf-cpu/src/ops/optim.rs (PyTorch's rules). Each
// step consumes the gradient and zeroes it. The per-step scalars (lr / (1 − β₁ᵗ),
// 1 / √(1 − β₂ᵗ), …) are computed on the host in f64, as on the CPU.

// SGD: g ← g + l2·w;  mom ← μ·mom + g;  w ← shrink·w − lr·mom;  g ← 0
__device__ __forceinline__ void sgd_one(float* p, float* g, float* mom, long long k, float lr, float mu, float l2,
                                        float shrink) {
    float w = p[k];
    float grad = g[k] + l2 * w;
    float m = mu * mom[k] + grad;
    mom[k] = m;
    p[k] = w * shrink - lr * m;
    g[k] = 0.0f;
}

extern "C" __global__ void sgd_step(float* p, float* g, float* mom, long long n, float lr, float mu, float l2,
                                    float shrink) {
    GRID_STRIDE(k, n) { sgd_one(p, g, mom, k, lr, mu, l2, shrink); }
}

// Row-sparse SGD on an (N,D) table: only the rows listed in rows[0..nrows).
extern "C" __global__ void sgd_step_rows(float* p, float* g, float* mom, const unsigned* rows, int nrows, int d,
                                         float lr, float mu, float l2, float shrink) {
    GRID_STRIDE(k, (long long)nrows * d) {
        long long e = (long long)rows[k / d] * d + k % d;
        sgd_one(p, g, mom, e, lr, mu, l2, shrink);
    }
}

// Adam: m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  w ← shrink·w − step·m / (√v·inv_sqrt_bc2 + ε)
__device__ __forceinline__ void adam_one(float* p, float* g, float* m, float* v, long long k, float b1, float b2,
                                         float step, float inv_sqrt_bc2, float eps, float l2, float shrink) {
    float w = p[k];
    float grad = g[k] + l2 * w;
    float mk = b1 * m[k] + (1.0f - b1) * grad;
    float vk = b2 * v[k] + (1.0f - b2) * grad * grad;
    m[k] = mk;
    v[k] = vk;
    p[k] = w * shrink - step * mk / (sqrtf(vk) * inv_sqrt_bc2 + eps);
    g[k] = 0.0f;
}

extern "C" __global__ void adam_step(float* p, float* g, float* m, float* v, long long n, float b1, float b2,
                                     float step, float inv_sqrt_bc2, float eps, float l2, float shrink) {
    GRID_STRIDE(k, n) { adam_one(p, g, m, v, k, b1, b2, step, inv_sqrt_bc2, eps, l2, shrink); }
}

// Lazy Adam: the dense rule on the listed rows only; other rows keep undecayed moments.
extern "C" __global__ void adam_step_rows(float* p, float* g, float* m, float* v, const unsigned* rows, int nrows,
                                          int d, float b1, float b2, float step, float inv_sqrt_bc2, float eps,
                                          float l2, float shrink) {
    GRID_STRIDE(k, (long long)nrows * d) {
        long long e = (long long)rows[k / d] * d + k % d;
        adam_one(p, g, m, v, e, b1, b2, step, inv_sqrt_bc2, eps, l2, shrink);
    }
}

// Marks the rows a batch touched: flags[ids[b]] = 1 (the host-free half of unique_ids; a scan
// of the flags then lists the rows in increasing order).
extern "C" __global__ void mark_rows(const unsigned* ids, int b, unsigned* flags) {
    GRID_STRIDE(k, b) { flags[ids[k]] = 1u; }
}
