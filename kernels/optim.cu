// Optimizer steps, the GPU twin of crates/ncf-cpu/src/ops/optim.rs (PyTorch's rules). Each
// step consumes the gradient and zeroes it. SGD's scalars come from the host; Adam's bias
// corrections (lr / (1 − β₁ᵗ), 1 / √(1 − β₂ᵗ)) are computed in f64, as on the CPU, from the
// device's step count, once per block.

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

// Row-sparse SGD on an (N,D) table: only the rows listed in rows[0..nrows), where nrows is
// *nrows_dev when that pointer is set (a row plan made on the device), else nrows_host.
// The grid covers cap·d elements, cap >= nrows.
extern "C" __global__ void sgd_step_rows(float* p, float* g, float* mom, const unsigned* rows, int nrows_host,
                                         const unsigned* nrows_dev, int cap, int d, float lr, float mu, float l2,
                                         float shrink) {
    long long nrows = nrows_dev ? (long long)*nrows_dev : (long long)nrows_host;
    GRID_STRIDE(k, (long long)cap * d) {
        if (k / d >= nrows) continue;
        long long e = (long long)rows[k / d] * d + k % d;
        sgd_one(p, g, mom, e, lr, mu, l2, shrink);
    }
}

// Adam's per-step scalars from the step t = *tp, in double as on the CPU (AdamScalars):
// step = lr / (1 − β₁ᵗ),  inv_sqrt_bc2 = 1 / √(1 − β₂ᵗ). Read from the device so that a
// recorded step replays with the right t.
struct AdamStep {
    float step, inv_sqrt_bc2;
};
// Thread 0 of each block computes them (two double pows) and shares them with its block.
__device__ __forceinline__ AdamStep adam_scalars(const unsigned* tp, double lr, double beta1, double beta2) {
    __shared__ AdamStep shared;
    if (threadIdx.x == 0) {
        double t = (double)(*tp > 0u ? *tp : 1u);
        shared.step = (float)(lr / (1.0 - pow(beta1, t)));
        shared.inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(beta2, t)));
    }
    __syncthreads();
    return shared;
}

// Adam: m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  w ← shrink·w − step·m / (√v·inv_sqrt_bc2 + ε)
__device__ __forceinline__ void adam_one(float* p, float* g, float* m, float* v, long long k, float b1, float omb1,
                                         float b2, float omb2, AdamStep s, float eps, float l2, float shrink) {
    float w = p[k];
    float grad = g[k] + l2 * w;
    float mk = b1 * m[k] + omb1 * grad;
    float vk = b2 * v[k] + omb2 * grad * grad;
    m[k] = mk;
    v[k] = vk;
    p[k] = w * shrink - s.step * mk / (sqrtf(vk) * s.inv_sqrt_bc2 + eps);
    g[k] = 0.0f;
}

// b1, omb1 = 1 − β₁, b2, omb2 as f32 (rounded from f64 on the host, as the CPU does); lr,
// beta1, beta2 in f64 for the bias corrections.
extern "C" __global__ void adam_step(float* p, float* g, float* m, float* v, long long n, float b1, float omb1,
                                     float b2, float omb2, double lr, double beta1, double beta2, float eps, float l2,
                                     float shrink, const unsigned* t) {
    AdamStep s = adam_scalars(t, lr, beta1, beta2);
    GRID_STRIDE(k, n) { adam_one(p, g, m, v, k, b1, omb1, b2, omb2, s, eps, l2, shrink); }
}

// Lazy Adam: the dense rule on the listed rows only (nrows as in sgd_step_rows); other rows
// keep undecayed moments.
extern "C" __global__ void adam_step_rows(float* p, float* g, float* m, float* v, const unsigned* rows,
                                          int nrows_host, const unsigned* nrows_dev, int cap, int d, float b1,
                                          float omb1, float b2, float omb2, double lr, double beta1, double beta2,
                                          float eps, float l2, float shrink, const unsigned* t) {
    AdamStep s = adam_scalars(t, lr, beta1, beta2);
    long long nrows = nrows_dev ? (long long)*nrows_dev : (long long)nrows_host;
    GRID_STRIDE(k, (long long)cap * d) {
        if (k / d >= nrows) continue;
        long long e = (long long)rows[k / d] * d + k % d;
        adam_one(p, g, m, v, e, b1, omb1, b2, omb2, s, eps, l2, shrink);
    }
}
