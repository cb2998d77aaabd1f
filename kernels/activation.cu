// Element-wise activations, the GPU twin of crates/ncf-cpu/src/ops/activation.rs.

// out = max(inp, 0)
extern "C" __global__ void relu_forward(const float* inp, float* out, long long n) {
    GRID_STRIDE(k, n) { out[k] = inp[k] > 0.0f ? inp[k] : 0.0f; }
}

// dinp = dout · 1[out > 0]
extern "C" __global__ void relu_backward(const float* out, const float* dout, float* dinp, long long n) {
    GRID_STRIDE(k, n) { dinp[k] = out[k] > 0.0f ? dout[k] : 0.0f; }
}

// Fused bias + ReLU on a layer's output in place: z[r,c] += bias[c]; x = max(z, 0) when x is
// set (the cuBLAS path's epilogue; the scratch GEMMs do this in their own epilogue).
extern "C" __global__ void bias_relu_forward(float* z, const float* bias, float* x, int b, int o) {
    GRID_STRIDE(k, (long long)b * o) {
        float v = z[k] + bias[k % o];
        z[k] = v;
        if (x) x[k] = v > 0.0f ? v : 0.0f;
    }
}

// Fused ReLU backward and bias gradient: dz = dx · 1[x > 0] (written) and dbias += Σ_b dz,
// one block per output column, a block reduction in a fixed order (no atomics).
extern "C" __global__ void relu_bias_backward(const float* x, const float* dx, float* dz, float* dbias, int b, int o) {
    __shared__ float shared[32];
    int c = blockIdx.x;
    float acc = 0.0f;
    for (int r = threadIdx.x; r < b; r += blockDim.x) {
        long long k = (long long)r * o + c;
        float g = x[k] > 0.0f ? dx[k] : 0.0f;
        dz[k] = g;
        acc += g;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) dbias[c] += acc;
}

// out = σ(inp)
extern "C" __global__ void sigmoid_forward(const float* inp, float* out, long long n) {
    GRID_STRIDE(k, n) { out[k] = sigmoidf_stable(inp[k]); }
}
