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
