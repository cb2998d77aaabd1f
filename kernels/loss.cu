// Losses, the GPU twin of crates/ncf-cpu/src/ops/loss.rs.

// Sigmoid + BCE fused, from logits. z, y, dz (B):
//   loss_partial[block] = Σ_b softplus(z_b) − y_b·z_b     (the host or loss_sum adds the blocks)
//   dz_b = (σ(z_b) − y_b) / B
// The per-block partial sums are written, not atomically added, so the loss is deterministic.
extern "C" __global__ void bce_with_logits(const float* z, const float* y, float* dz, float* loss_partial, int b) {
    __shared__ float shared[32];
    float inv_b = 1.0f / (float)b, acc = 0.0f;
    GRID_STRIDE(k, b) {
        float zi = z[k], yi = y[k];
        acc += softplusf(zi) - yi * zi;
        dz[k] = (sigmoidf_stable(zi) - yi) * inv_b;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) loss_partial[blockIdx.x] = acc;
}

// Mean squared error. p, t, dp (B): partial sums of (p − t)², dp = 2(p − t)/B.
extern "C" __global__ void mse(const float* p, const float* t, float* dp, float* loss_partial, int b) {
    __shared__ float shared[32];
    float scale = 2.0f / (float)b, acc = 0.0f;
    GRID_STRIDE(k, b) {
        float r = p[k] - t[k];
        acc += r * r;
        dp[k] = r * scale;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) loss_partial[blockIdx.x] = acc;
}

// acc[0] += scale · Σ partial[0..n] in one block, in a fixed order: the step's loss stays on
// the device and is read back only every N steps.
extern "C" __global__ void loss_sum(const float* partial, int n, float scale, float* acc) {
    __shared__ float shared[32];
    float v = 0.0f;
    for (int k = threadIdx.x; k < n; k += blockDim.x) v += partial[k];
    v = block_sum(v, shared);
    if (threadIdx.x == 0) acc[0] += v * scale;
}
