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

// ---- The row plan of a batch's ids: which distinct rows it touches, and the batch positions
// of each, in batch order. Built on the device in four launches with no host round-trip; the
// deterministic scatter-add and the lazy optimizers read it. `count` (N) must be all zero
// before rows_count; rows_scan leaves it zero again.

// count[ids[k]] += 1 (integer atomics: the counts do not depend on the order).
extern "C" __global__ void rows_count(const unsigned* ids, int b, unsigned* count) {
    GRID_STRIDE(k, b) { atomicAdd(&count[ids[k]], 1u); }
}

// One block: an exclusive scan of count (N). For each row with count > 0, in ascending order
// (slot s): uniq[s] = row, seg[s] = fill[row] = start of its run; seg[S] = total and
// *nuniq = S. Resets count to zero. Each thread owns a contiguous chunk of rows.
extern "C" __global__ void rows_scan(unsigned* count, int n, unsigned* fill, unsigned* uniq, unsigned* seg,
                                     unsigned* nuniq) {
    __shared__ unsigned s_tot[1024];
    __shared__ unsigned s_nz[1024];
    int t = threadIdx.x, threads = blockDim.x;
    int chunk = (n + threads - 1) / threads;
    int lo = min(n, t * chunk), hi = min(n, lo + chunk);
    unsigned tot = 0, nz = 0;
    for (int r = lo; r < hi; ++r) {
        unsigned c = count[r];
        tot += c;
        nz += c > 0u ? 1u : 0u;
    }
    s_tot[t] = tot;
    s_nz[t] = nz;
    __syncthreads();
    for (int off = 1; off < threads; off <<= 1) {  // Hillis-Steele inclusive scan
        unsigned a = t >= off ? s_tot[t - off] : 0u, z = t >= off ? s_nz[t - off] : 0u;
        __syncthreads();
        s_tot[t] += a;
        s_nz[t] += z;
        __syncthreads();
    }
    unsigned start = s_tot[t] - tot, slot = s_nz[t] - nz;
    for (int r = lo; r < hi; ++r) {
        unsigned c = count[r];
        if (c > 0u) {
            fill[r] = start;
            uniq[slot] = (unsigned)r;
            seg[slot] = start;
            start += c;
            ++slot;
            count[r] = 0u;
        }
    }
    if (t == threads - 1) {
        seg[s_nz[t]] = s_tot[t];
        *nuniq = s_nz[t];
    }
}

// order[fill[ids[k]]++] = k: each row's batch positions land in its run (in any order).
extern "C" __global__ void rows_place(const unsigned* ids, int b, unsigned* fill, unsigned* order) {
    GRID_STRIDE(k, b) {
        unsigned pos = atomicAdd(&fill[ids[k]], 1u);
        order[pos] = (unsigned)k;
    }
}

// Sorts each run of order (seg[s]..seg[s+1], s < *nuniq) ascending, so every run lists its
// batch positions in batch order whatever order the atomics placed them in. Runs are short
// (a row appears a few times per batch): one thread each, insertion sort.
extern "C" __global__ void rows_sort(unsigned* order, const unsigned* seg, const unsigned* nuniq, int cap) {
    unsigned segments = *nuniq;
    GRID_STRIDE(s, cap) {
        if ((unsigned)s >= segments) continue;
        unsigned lo = seg[s], hi = seg[s + 1];
        for (unsigned i = lo + 1; i < hi; ++i) {
            unsigned x = order[i], j = i;
            while (j > lo && order[j - 1] > x) {
                order[j] = order[j - 1];
                --j;
            }
            order[j] = x;
        }
    }
}

// Deterministic scatter-add over the row plan: one thread per (distinct row, column) adds the
// row's batch positions in batch order, so the result is the same bits on every run: the
// CPU's naive loop order. dout (B,D)  dtable (N,D); cap bounds the distinct rows (<= B).
extern "C" __global__ void embedding_backward_sorted(const float* dout, const unsigned* order, const unsigned* seg,
                                                     const unsigned* uniq, const unsigned* nuniq, float* dtable,
                                                     int cap, int d) {
    unsigned segments = *nuniq;
    GRID_STRIDE(k, (long long)cap * d) {
        long long s = k / d, c = k % d;
        if (s >= (long long)segments) continue;
        unsigned lo = seg[s], hi = seg[s + 1];
        long long e = (long long)uniq[s] * d + c;
        float acc = dtable[e];
        for (unsigned j = lo; j < hi; ++j) acc += dout[(long long)order[j] * d + c];
        dtable[e] = acc;
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
