// Small element-wise and row-wise ops, the GPU twin of crates/ncf-cpu/src/ops/elementwise.rs.

// GMF product: h = p ⊙ q over n elements.
extern "C" __global__ void gmf_forward(const float* p, const float* q, float* h, long long n) {
    GRID_STRIDE(k, n) { h[k] = p[k] * q[k]; }
}

// dp = dh ⊙ q,  dq = dh ⊙ p
extern "C" __global__ void gmf_backward(const float* dh, const float* p, const float* q, float* dp, float* dq,
                                        long long n) {
    GRID_STRIDE(k, n) {
        dp[k] = dh[k] * q[k];
        dq[k] = dh[k] * p[k];
    }
}

// out (B, DA+DB) = [a (B,DA) | b (B,DB)]
extern "C" __global__ void concat_cols(const float* a, int da, const float* bm, int db, float* out, int b) {
    int w = da + db;
    GRID_STRIDE(k, (long long)b * w) {
        long long r = k / w, c = k % w;
        out[k] = c < da ? a[r * da + c] : bm[r * db + (c - da)];
    }
}

// The inverse: a (B,DA), b (B,DB) from inp (B, DA+DB).
extern "C" __global__ void split_cols(const float* inp, int da, int db, float* a, float* bm, int b) {
    int w = da + db;
    GRID_STRIDE(k, (long long)b * w) {
        long long r = k / w, c = k % w;
        if (c < da) a[r * da + c] = inp[k];
        else bm[r * db + (c - da)] = inp[k];
    }
}

// out[r] = u[r,:]·v[r,:]  (MF's score), one warp per row.
extern "C" __global__ void rowdot_forward(const float* u, const float* v, float* out, int b, int d) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= b) return;
    float acc = 0.0f;
    for (int k = lane; k < d; k += 32) acc += u[(long long)warp * d + k] * v[(long long)warp * d + k];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) out[warp] = acc;
}

// du[r,:] = dout[r]·v[r,:],  dv[r,:] = dout[r]·u[r,:]
extern "C" __global__ void rowdot_backward(const float* dout, const float* u, const float* v, float* du, float* dv,
                                           int b, int d) {
    GRID_STRIDE(k, (long long)b * d) {
        float g = dout[k / d];
        du[k] = g * v[k];
        dv[k] = g * u[k];
    }
}

// out += x
extern "C" __global__ void add_assign(float* out, const float* x, long long n) {
    GRID_STRIDE(k, n) { out[k] += x[k]; }
}

// x *= s
extern "C" __global__ void scale(float* x, float s, long long n) {
    GRID_STRIDE(k, n) { x[k] *= s; }
}

// out += s[0]
extern "C" __global__ void add_scalar(float* out, const float* s, long long n) {
    GRID_STRIDE(k, n) { out[k] += s[0]; }
}

// acc[0] += Σ x, one block, fixed order (deterministic).
extern "C" __global__ void sum_into(const float* x, long long n, float* acc) {
    __shared__ float shared[32];
    float v = 0.0f;
    for (long long k = threadIdx.x; k < n; k += blockDim.x) v += x[k];
    v = block_sum(v, shared);
    if (threadIdx.x == 0) acc[0] += v;
}

// x[k] = value
extern "C" __global__ void fill(float* x, float value, long long n) {
    GRID_STRIDE(k, n) { x[k] = value; }
}
