// The dense layer's matrix products, the GPU twin of crates/ncf-cpu/src/ops/{linear,gemm}.rs.
// Row-major C (M,N) = alpha·op(A)·op(B) + beta·C, with op(X) = X or Xᵀ selected by the flags:
// A is (M,K) when ta == 0 and (K,M) when ta == 1; B is (K,N) when tb == 0 and (N,K) when
// tb == 1. The dense layer uses: forward  out = inp·wᵀ (ta 0, tb 1);  dinp = dout·w (0, 0);
// dw += doutᵀ·inp (1, 0).
//
// Epilogue (both GEMMs): c = alpha·acc + beta·C, then + bias[n] when `bias` is set; C = c, and
// when `relu_out` is set, relu_out = max(c, 0) as well. The dense layer's forward is then one
// launch: z = inp·wᵀ + bias and x = relu(z) (no separate bias broadcast or ReLU pass).

__device__ __forceinline__ void epilogue(float* C, long long idx, int n, float acc, float alpha, float beta,
                                         const float* bias, float* relu_out) {
    float c = alpha * acc + (beta == 0.0f ? 0.0f : beta * C[idx]);
    if (bias) c += bias[n];
    C[idx] = c;
    if (relu_out) relu_out[idx] = c > 0.0f ? c : 0.0f;
}

__device__ __forceinline__ float load_a(const float* A, int ta, int m, int k, int M, int K) {
    return ta ? A[(long long)k * M + m] : A[(long long)m * K + k];
}
__device__ __forceinline__ float load_b(const float* B, int tb, int k, int n, int K, int N) {
    return tb ? B[(long long)n * K + k] : B[(long long)k * N + n];
}

// Reference: one thread per output element, the sum in k order.
extern "C" __global__ void gemm_naive(const float* A, const float* B, float* C, int M, int N, int K, int ta, int tb,
                                      float alpha, float beta, const float* bias, float* relu_out) {
    GRID_STRIDE(idx, (long long)M * N) {
        int m = (int)(idx / N), n = (int)(idx % N);
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) acc += load_a(A, ta, m, k, M, K) * load_b(B, tb, k, n, K, N);
        epilogue(C, idx, n, acc, alpha, beta, bias, relu_out);
    }
}

// Tiled: a 64×16 tile of C per block of 256 threads, each thread computing 4 rows of one
// column, with 64×16 of A and 16×16 of B staged in shared memory per step of K. Tall-skinny
// on purpose: NCF's layers have M = batch (256…65536) and N, K ≤ 64.
#define TM 64
#define TN 16
#define TK 16
extern "C" __global__ void gemm_tiled(const float* A, const float* B, float* C, int M, int N, int K, int ta, int tb,
                                      float alpha, float beta, const float* bias, float* relu_out) {
    __shared__ float As[TK][TM + 1];
    __shared__ float Bs[TK][TN + 1];
    int tx = threadIdx.x % TN;   // column within the tile
    int ty = threadIdx.x / TN;   // 0..15: rows ty, ty+16, ty+32, ty+48
    // Row tiles on grid.x (up to 2^31 − 1 blocks: tables of billions of rows), column tiles
    // on grid.y (at most 65,535, i.e. N ≤ 1,048,560: a layer's width).
    int m0 = blockIdx.x * TM, n0 = blockIdx.y * TN;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < K; k0 += TK) {
        for (int e = threadIdx.x; e < TK * TM; e += blockDim.x) {
            int kk = e / TM, mm = e % TM;
            int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? load_a(A, ta, m, k, M, K) : 0.0f;
        }
        for (int e = threadIdx.x; e < TK * TN; e += blockDim.x) {
            int kk = e / TN, nn = e % TN;
            int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < K) ? load_b(B, tb, k, n, K, N) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TK; ++kk) {
            float bv = Bs[kk][tx];
            for (int r = 0; r < 4; ++r) acc[r] += As[kk][ty + 16 * r] * bv;
        }
        __syncthreads();
    }
    int n = n0 + tx;
    if (n >= N) return;
    for (int r = 0; r < 4; ++r) {
        int m = m0 + ty + 16 * r;
        if (m < M) epilogue(C, (long long)m * N + n, n, acc[r], alpha, beta, bias, relu_out);
    }
}

// out (B,O) = bias broadcast to every row (the GEMM then adds inp·wᵀ with beta = 1).
extern "C" __global__ void bias_broadcast(const float* bias, float* out, int b, int o) {
    GRID_STRIDE(k, (long long)b * o) { out[k] = bias[k % o]; }
}

// dbias (O) += Σ_b dout[b,:]: one block per output column, a block reduction, no atomics.
extern "C" __global__ void bias_grad(const float* dout, float* dbias, int b, int o) {
    __shared__ float shared[32];
    int c = blockIdx.x;
    float acc = 0.0f;
    for (int r = threadIdx.x; r < b; r += blockDim.x) acc += dout[(long long)r * o + c];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) dbias[c] += acc;
}

// o = 1 forward (the prediction layer): out[r] = bias[0] + inp[r,:]·w, one warp per row.
extern "C" __global__ void matvec_bias(const float* inp, const float* w, const float* bias, float* out, int b, int i) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= b) return;
    float acc = 0.0f;
    for (int k = lane; k < i; k += 32) acc += inp[(long long)warp * i + k] * w[k];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) out[warp] = bias[0] + acc;
}
