// Embedding lookup, the GPU twin of crates/ncf-cpu/src/ops/embedding.rs (same names, same shapes).

// Gather. table (N,D)  ids (B)  out (B,D):  out[b,:] = table[ids[b],:]
extern "C" __global__ void embedding_forward(const float* table, const unsigned* ids, float* out, int b, int d) {
    GRID_STRIDE(k, (long long)b * d) {
        long long r = k / d, c = k % d;
        out[k] = table[(long long)ids[r] * d + c];
    }
}

// Scatter-add with atomics. dout (B,D)  ids (B)  dtable (N,D):  dtable[ids[b],:] += dout[b,:].
// Fast, but the order of the additions (and so the last bits) depends on scheduling.
extern "C" __global__ void embedding_backward_atomic(const float* dout, const unsigned* ids, float* dtable, int b, int d) {
    GRID_STRIDE(k, (long long)b * d) {
        long long r = k / d, c = k % d;
        atomicAdd(&dtable[(long long)ids[r] * d + c], dout[k]);
    }
}

// Deterministic scatter-add, after the batch positions were sorted by id (stably, so equal
// ids keep batch order): `order (B)` lists batch positions by id, `seg_start (S+1)` marks the
// runs of equal ids. One thread per (segment, column) adds its run in order, so the result is
// the same bits on every run: the CPU's naive loop order.
extern "C" __global__ void embedding_backward_sorted(const float* dout, const unsigned* ids, const unsigned* order,
                                                     const unsigned* seg_start, float* dtable, int segments, int d) {
    GRID_STRIDE(k, (long long)segments * d) {
        long long s = k / d, c = k % d;
        unsigned lo = seg_start[s], hi = seg_start[s + 1];
        unsigned row = ids[order[lo]];
        float acc = dtable[(long long)row * d + c];
        for (unsigned j = lo; j < hi; ++j) acc += dout[(long long)order[j] * d + c];
        dtable[(long long)row * d + c] = acc;
    }
}

// Fused inference gather: out[b,:] = relu(a[ia[b],:] + c[ic[b],:]).
extern "C" __global__ void gather_add_relu(const float* a, const unsigned* ia, const float* c, const unsigned* ic,
                                           float* out, int b, int d) {
    GRID_STRIDE(k, (long long)b * d) {
        long long r = k / d, j = k % d;
        float z = a[(long long)ia[r] * d + j] + c[(long long)ic[r] * d + j];
        out[k] = z > 0.0f ? z : 0.0f;
    }
}
