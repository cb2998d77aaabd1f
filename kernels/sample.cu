// Stateless epoch sampling, the GPU twin of crates/ncf-core/src/sample.rs (same functions, same
// integer arithmetic, so the CPU and the GPU draw the same batches bit for bit). One thread per
// batch slot: slot s of the epoch holds row permute(s) (a keyed Feistel bijection of [0, R)),
// and row r is positive r / (1+neg) or one of its user's negatives, drawn by rejection against
// the user's sorted known items. Nothing is stored per epoch: the tables are uploaded once.

// The smallest h with 4^h >= n (n >= 1).
__device__ __forceinline__ unsigned half_bits(unsigned long long n) {
    unsigned bits = n <= 1ull ? 0u : 64u - (unsigned)__clzll((long long)(n - 1ull));
    unsigned h = (bits + 1u) / 2u;
    return h < 1u ? 1u : h;
}

__device__ __forceinline__ unsigned long long feistel(unsigned long long x, unsigned h, unsigned long long key) {
    unsigned long long mask = (1ull << h) - 1ull;
    unsigned long long l = x >> h, r = x & mask;
    for (unsigned long long round = 0; round < 4ull; ++round) {
        unsigned long long f = splitmix64(r ^ (key + round * 0x9E3779B97F4A7C15ull)) & mask;
        unsigned long long nl = r;
        r = l ^ f;
        l = nl;
    }
    return (l << h) | r;
}

__device__ __forceinline__ unsigned long long permute(unsigned long long s, unsigned long long n,
                                                      unsigned long long key) {
    unsigned h = half_bits(n);
    unsigned long long x = feistel(s, h, key);
    while (x >= n) x = feistel(x, h, key);
    return x;
}

__device__ __forceinline__ bool contains_sorted(const unsigned* items, unsigned len, unsigned x) {
    unsigned lo = 0, hi = len;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2u;
        if (items[mid] < x) lo = mid + 1u;
        else hi = mid;
    }
    return lo < len && items[lo] == x;
}

// The largest u with off[u] <= p, over off[0..users].
__device__ __forceinline__ unsigned owner(const unsigned* off, unsigned users, unsigned p) {
    unsigned lo = 0, hi = users;
    while (hi - lo > 1u) {
        unsigned mid = (lo + hi) / 2u;
        if (off[mid] <= p) lo = mid;
        else hi = mid;
    }
    return lo;
}

// state = [batch number, perm key lo, hi, draw key lo, hi]. For k < b: slot state[0]*batch + k.
// The host launches counter_add on state afterwards (every thread must read state[0] first).
extern "C" __global__ void sample_batch(const unsigned* train_off, const unsigned* train_items,
                                        const unsigned* known_off, const unsigned* known_items, int users,
                                        unsigned n_items, unsigned n_neg, unsigned long long rows,
                                        const unsigned* state, int batch, int b, unsigned* out_users,
                                        unsigned* out_items, float* out_labels) {
    unsigned long long perm_key = (unsigned long long)state[1] | ((unsigned long long)state[2] << 32);
    unsigned long long draw_key = (unsigned long long)state[3] | ((unsigned long long)state[4] << 32);
    unsigned long long first = (unsigned long long)state[0] * (unsigned long long)batch;
    GRID_STRIDE(k, b) {
        unsigned long long s = first + (unsigned long long)k;
        if (s >= rows) {  // cannot happen for launches the host sized; keep the ids valid anyway
            out_users[k] = 0u;
            out_items[k] = train_items[0];
            out_labels[k] = 1.0f;
            continue;
        }
        unsigned long long r = permute(s, rows, perm_key);
        unsigned long long per = 1ull + n_neg;
        unsigned p = (unsigned)(r / per);
        unsigned long long j = r % per;
        unsigned u = owner(train_off, (unsigned)users, p);
        unsigned pos = train_items[p];
        unsigned item = pos;
        float label = 1.0f;
        unsigned seen_lo = known_off[u], seen_len = known_off[u + 1] - seen_lo;
        if (j != 0ull && seen_len < n_items) {
            unsigned long long base = splitmix64(draw_key ^ r);
            for (unsigned long long attempt = 0;; ++attempt) {
                unsigned long long hsh = splitmix64(base + attempt);
                unsigned cand = (unsigned)(((hsh >> 32) * (unsigned long long)n_items) >> 32);
                if (!contains_sorted(known_items + seen_lo, seen_len, cand)) {
                    item = cand;
                    label = 0.0f;
                    break;
                }
            }
        }
        out_users[k] = u;
        out_items[k] = item;
        out_labels[k] = label;
    }
}

// c[0] += add: device-side counters (the sampler's batch number, Adam's step), so a recorded
// step replays without the host.
extern "C" __global__ void counter_add(unsigned* c, unsigned add) {
    if (blockIdx.x == 0 && threadIdx.x == 0) c[0] += add;
}
