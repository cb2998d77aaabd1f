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

// ---- The row plan of a batch's ids: which distinct rows it touches (in order of first
// appearance in the batch), and the batch positions of each, in batch order. Built on the
// device in four launches with no host round-trip, in time proportional to the batch: the
// table-sized arrays `count` (all zero) and `first` (all 0xffffffff) are touched only at the
// batch's ids, and rows_sort leaves them so again. The deterministic scatter-add and the lazy
// optimizers read the plan.

// count[ids[k]] += 1; first[ids[k]] = min k (integer atomics: order-free results).
extern "C" __global__ void rows_count(const unsigned* ids, int b, unsigned* count, unsigned* first) {
    GRID_STRIDE(k, b) {
        atomicAdd(&count[ids[k]], 1u);
        atomicMin(&first[ids[k]], (unsigned)k);
    }
}

// One block, over the batch in chunks of blockDim.x: position k is its row's slot when
// first[ids[k]] == k. Exclusive scans (in batch order) of those flags and of their rows' counts
// give each distinct row its slot s and the start of its run: uniq[s] = row, seg[s] =
// fill[row] = start; then seg[S] = b and *nuniq = S.
extern "C" __global__ void rows_scan(const unsigned* ids, int b, const unsigned* first, const unsigned* count,
                                     unsigned* fill, unsigned* uniq, unsigned* seg, unsigned* nuniq) {
    __shared__ unsigned s_slot[1024];
    __shared__ unsigned s_start[1024];
    int t = threadIdx.x, threads = blockDim.x;
    unsigned slots = 0, starts = 0;  // carried over the chunks before this one
    for (int base = 0; base < b; base += threads) {
        int k = base + t;
        unsigned row = k < b ? ids[k] : 0u;
        bool lead = k < b && first[row] == (unsigned)k;
        unsigned c = lead ? count[row] : 0u;
        s_slot[t] = lead ? 1u : 0u;
        s_start[t] = c;
        __syncthreads();
        for (int off = 1; off < threads; off <<= 1) {  // Hillis-Steele inclusive scan
            unsigned a = t >= off ? s_slot[t - off] : 0u, z = t >= off ? s_start[t - off] : 0u;
            __syncthreads();
            s_slot[t] += a;
            s_start[t] += z;
            __syncthreads();
        }
        if (lead) {
            unsigned slot = slots + s_slot[t] - 1u, start = starts + s_start[t] - c;
            uniq[slot] = row;
            seg[slot] = start;
            fill[row] = start;
        }
        slots += s_slot[threads - 1];
        starts += s_start[threads - 1];
        __syncthreads();  // the next chunk overwrites the scans
    }
    if (t == 0) {
        seg[slots] = starts;
        *nuniq = slots;
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
// batch positions in batch order whatever order the atomics placed them in, and resets the
// run's row in count and first. Runs are short (a row appears a few times per batch): one
// thread each, insertion sort.
extern "C" __global__ void rows_sort(unsigned* order, const unsigned* seg, const unsigned* nuniq, int cap,
                                     const unsigned* uniq, unsigned* count, unsigned* first) {
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
        count[uniq[s]] = 0u;
        first[uniq[s]] = 0xffffffffu;
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
