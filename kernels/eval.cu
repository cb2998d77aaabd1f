// Evaluation, the GPU twin of crates/ncf-eval. Scores come from the model's forward pass over
// many (user, candidate) rows; these kernels turn them into ranks.

// Sampled protocol: case c's candidates are scores[off[c] .. off[c+1]), the target first.
// rank[c] = #{others scoring >= the target} (ties count against the target). One warp per case.
extern "C" __global__ void rank_of_first(const float* scores, const unsigned* off, int cases, unsigned* rank) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= cases) return;
    unsigned lo = off[warp], hi = off[warp + 1];
    float st = scores[lo];
    unsigned count = 0;
    for (unsigned j = lo + 1 + lane; j < hi; j += 32) count += scores[j] >= st ? 1u : 0u;
    for (int o = 16; o > 0; o >>= 1) count += __shfl_down_sync(0xffffffffu, count, o);
    if (lane == 0) rank[warp] = count;
}

// Full ranking: user u's scores over all n_items are scores[u_local*n_items ...]. The rank is the
// number of items scoring >= the target, minus the target itself and minus the user's seen
// items (seen[seen_off[u]..seen_off[u+1]]) scoring >= the target. One block per user.
extern "C" __global__ void full_rank(const float* scores, int n_items, const unsigned* targets,
                                     const unsigned* seen, const unsigned* seen_off, unsigned* rank) {
    __shared__ float shared[32];
    int u = blockIdx.x;
    const float* s = scores + (long long)u * n_items;
    unsigned t = targets[u];
    float st = s[t];
    float above = 0.0f;
    for (int j = threadIdx.x; j < n_items; j += blockDim.x) above += s[j] >= st ? 1.0f : 0.0f;
    for (unsigned k = seen_off[u] + threadIdx.x; k < seen_off[u + 1]; k += blockDim.x) {
        unsigned j = seen[k];
        if (j != t && s[j] >= st) above -= 1.0f;
    }
    above = block_sum(above, shared);
    if (threadIdx.x == 0) rank[u] = (unsigned)(above + 0.5f) - 1u;
}

// Top-K recommendation: user slot u's scores over all n items are scores[u*n ...]; out[u*k + r]
// is its r-th best item not in seen[seen_off[u]..seen_off[u+1]], ties to the lower item id,
// u32::MAX past the unseen items. One block (256 threads) per user; K rounds of a block-wide
// arg-max over the items not yet masked. Dynamic shared memory: a bitmap of the n items
// ((n+31)/32 words) marking seen and already chosen items.
__device__ __forceinline__ bool better(float s, unsigned j, float bs, unsigned bj) {
    return bj == 0xffffffffu || s > bs || (s == bs && j < bj);
}

extern "C" __global__ void top_k(const float* scores, int n, int k, const unsigned* seen, const unsigned* seen_off,
                                 unsigned* out) {
    extern __shared__ unsigned mask[];
    __shared__ float best_s[256];
    __shared__ unsigned best_j[256];
    int u = blockIdx.x, t = threadIdx.x;
    const float* s = scores + (long long)u * n;
    int words = (n + 31) / 32;
    for (int w = t; w < words; w += blockDim.x) mask[w] = 0u;
    __syncthreads();
    for (unsigned q = seen_off[u] + t; q < seen_off[u + 1]; q += blockDim.x) {
        unsigned j = seen[q];
        atomicOr(&mask[j >> 5], 1u << (j & 31u));
    }
    __syncthreads();
    for (int r = 0; r < k; ++r) {
        float bs = 0.0f;
        unsigned bj = 0xffffffffu;
        for (int j = t; j < n; j += blockDim.x) {
            if (mask[j >> 5] & (1u << (j & 31))) continue;
            if (better(s[j], (unsigned)j, bs, bj)) {
                bs = s[j];
                bj = (unsigned)j;
            }
        }
        best_s[t] = bs;
        best_j[t] = bj;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (t < half && best_j[t + half] != 0xffffffffu && better(best_s[t + half], best_j[t + half], best_s[t], best_j[t])) {
                best_s[t] = best_s[t + half];
                best_j[t] = best_j[t + half];
            }
            __syncthreads();
        }
        if (t == 0) {
            unsigned j = best_j[0];
            out[(long long)u * k + r] = j;
            if (j != 0xffffffffu) mask[j >> 5] |= 1u << (j & 31u);
        }
        __syncthreads();
    }
}
