// Losses, the GPU twin of crates/ncf-cpu/src/ops/loss.rs.

// A mean loss in one launch, deterministic: each block writes its partial sum; the last
// block to finish (counted with an integer atomic) adds scale·Σ partials into acc[0] in block
// order and re-arms the counter. `done` must start at zero.
__device__ __forceinline__ void finish_mean(float acc, float* partial, unsigned* done, float scale, float* loss,
                                            float* shared) {
    __shared__ bool last;
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = acc;
        __threadfence();  // the partial is visible before the count says so
        last = atomicAdd(done, 1u) == gridDim.x - 1u;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    __syncthreads();
    float v = 0.0f;
    for (unsigned k = threadIdx.x; k < gridDim.x; k += blockDim.x) v += ((volatile float*)partial)[k];
    v = block_sum(v, shared);
    if (threadIdx.x == 0) {
        loss[0] += v * scale;
        *done = 0u;
    }
}

// Sigmoid + BCE fused, from logits. z, y, dz (B):
//   loss[0] += (1/B) Σ_b softplus(z_b) − y_b·z_b
//   dz_b = (σ(z_b) − y_b) / B
extern "C" __global__ void bce_with_logits(const float* z, const float* y, float* dz, float* partial, unsigned* done,
                                           float* loss, int b) {
    __shared__ float shared[32];
    float inv_b = 1.0f / (float)b, acc = 0.0f;
    GRID_STRIDE(k, b) {
        float zi = z[k], yi = y[k];
        acc += softplusf(zi) - yi * zi;
        dz[k] = (sigmoidf_stable(zi) - yi) * inv_b;
    }
    finish_mean(acc, partial, done, inv_b, loss, shared);
}

// Mean squared error. p, t, dp (B): loss[0] += (1/B) Σ (p − t)², dp = 2(p − t)/B.
extern "C" __global__ void mse(const float* p, const float* t, float* dp, float* partial, unsigned* done, float* loss,
                               int b) {
    __shared__ float shared[32];
    float inv_b = 1.0f / (float)b, scale = 2.0f / (float)b, acc = 0.0f;
    GRID_STRIDE(k, b) {
        float r = p[k] - t[k];
        acc += r * r;
        dp[k] = r * scale;
    }
    finish_mean(acc, partial, done, inv_b, loss, shared);
}
