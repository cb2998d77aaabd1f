// The fused training step: a whole NCF step (forward, sigmoid-BCE, backward, Adam) in three
// launches, for all four models. The twin it is tested against is the reference step
// (crates/ncf-model/src/step.rs, train_step), op by op on the CPU; the host side (the table
// below, tiles, launch plans) is crates/ncf-cuda/src/fused.rs.
//
//   1. fused_tile         one thread per sample, a tile of samples per block: gather the
//                         embedding rows, GMF / MLP / head forward, BCE, the backward pass;
//                         writes each sample's embedding-row gradients, links the sample into
//                         its user's and its item's list, and writes the block's sums of the
//                         dense gradients (and of the loss), in sample order.
//   2. fused_dense_adam   a lane per dense parameter: adds the tiles' partial sums in a fixed
//                         order (8 rows of tiles per block, then the rows), then Adam. One
//                         more lane adds the mean loss.
//   3. fused_rows_adam    one thread per (side, sample); the sample heading its row's list
//                         sums the row's gradients and applies lazy Adam to the row.
//
// Deterministic: every float sum has a fixed order, except a row's gradient over its samples,
// whose order is that of the atomics building the list; it is summed exactly in 64-bit fixed
// point (one exponent per row, from the largest magnitude), so the order cannot change a bit.
// The work is proportional to the batch; the embedding tables' sizes appear nowhere but in
// `last` (one u32 per row, EMPTY between steps) and `rowinfo` (two u32 per row, zero between
// steps), touched only at the batch's ids.

#define FUSED_MAX_LAYERS 8
#define FUSED_MAX_DENSE (2 * FUSED_MAX_LAYERS + 2)
#define FUSED_EMPTY 0xffffffffu
#define FUSED_MAX_SIDE 256  // floats of one side's row gradient (all its tables' widths)

enum { FUSED_MF = 0, FUSED_GMF = 1, FUSED_MLP = 2, FUSED_NEUMF = 3 };

// Written once by the host (FusedTab in crates/ncf-cuda/src/fused.rs: #[repr(C)], the same
// fields in the same order); every kernel gets its address. Buffers are device addresses.
struct FusedTab {
    long long kind;                          // FUSED_MF .. FUSED_NEUMF
    long long f;                             // GMF width (GMF, NeuMF), or MF's dot width
    long long d;                             // MLP embedding width of each side (MLP, NeuMF)
    long long nl;                            // dense layers of the MLP tower
    long long width[FUSED_MAX_LAYERS + 1];   // width[0] = 2d; width[l + 1] = layer l's outputs
    long long ndense;                        // dense tensors (layer l: 2l weight, 2l+1 bias; then head w, b)
    long long nparams;                       // P: their elements, concatenated in that order
    long long dense_off[FUSED_MAX_DENSE + 1];
    long long dense_group[FUSED_MAX_DENSE];  // Adam group: 1 weights, 2 biases
    long long ntables;                       // embedding tables per side: 1, or 2 (NeuMF: GMF, MLP; MF: P, bias)
    long long table_width[2];
    long long side_width;                    // floats of one side's row gradient: the tables' widths
    long long region;                        // floats of one sample's shared-memory region (odd)
    unsigned long long users, items, labels; // the batch: u32, u32, f32
    unsigned long long emb[2][2], emb_m[2][2], emb_v[2][2];  // [side][table]: parameters, Adam m, v
    unsigned long long dense[FUSED_MAX_DENSE], dense_m[FUSED_MAX_DENSE], dense_v[FUSED_MAX_DENSE];
    unsigned long long partials;             // f32 (blocks, P + 1)
    unsigned long long sample_grad[2];       // f32 (B, side_width) per side
    unsigned long long next[2];              // u32 (B) per side: the next sample of the same row
    unsigned long long last[2];              // u32 (rows) per side: the head of each row's list
    unsigned long long rowinfo[2];           // u32 (rows, 2) per side: samples in the row, max |g| (bits)
    unsigned long long t;                    // u32: Adam's step count
    unsigned long long scalars;              // f32 (6): per group, lr / (1 − β₁ᵗ) and 1 / √(1 − β₂ᵗ)
    unsigned long long loss;                 // f32: += the batch's mean loss
    double lr[3], beta1[3], beta2[3];        // Adam per group: 0 embeddings, 1 weights, 2 biases
    float b1[3], omb1[3], b2[3], omb2[3], eps[3], l2[3], shrink[3], pad;
};
static_assert(sizeof(FusedTab) == 1264, "FusedTab: keep in step with crates/ncf-cuda/src/fused.rs");

#define F32(a) ((float*)(a))
#define U32(a) ((unsigned*)(a))

// Where things live in one sample's region (floats): the user side's gathered rows, the item
// side's, the MLP's activations a_0 (= [P_m[u], Q_m[i]]) .. a_nl, the deltas δ_1 .. δ_nl
// (∂L/∂z of each dense layer's pre-activation), dlogit and the sample's loss.
struct Region {
    int eu, ei, act[FUSED_MAX_LAYERS + 1], delta[FUSED_MAX_LAYERS + 1], dlogit, loss;
};
__device__ __forceinline__ Region region_of(const FusedTab& T) {
    Region r;
    int o = 0, sw = (int)T.side_width;
    r.eu = o;
    o += sw;
    r.ei = o;
    o += sw;
    for (int l = 0; l <= T.nl; ++l) {
        r.act[l] = o;
        o += (int)T.width[l];
    }
    r.delta[0] = -1;
    for (int l = 1; l <= T.nl; ++l) {
        r.delta[l] = o;
        o += (int)T.width[l];
    }
    r.dlogit = o;
    r.loss = o + 1;
    return r;
}

__device__ __forceinline__ bool has_gmf(const FusedTab& T) { return T.kind == FUSED_GMF || T.kind == FUSED_NEUMF; }
__device__ __forceinline__ bool has_mlp(const FusedTab& T) { return T.kind == FUSED_MLP || T.kind == FUSED_NEUMF; }
// Column of the MLP part in a side's row (after the GMF part in NeuMF).
__device__ __forceinline__ int mlp_col(const FusedTab& T) { return T.kind == FUSED_NEUMF ? (int)T.f : 0; }
// The head's weights: after the MLP's layers (the first dense tensors of GMF).
__device__ __forceinline__ int head_tensor(const FusedTab& T) { return 2 * (int)T.nl; }

// Forward and backward of sample k, in its region r; wsh holds the dense parameters.
__device__ void fused_sample(const FusedTab& T, const float* wsh, float* r, const Region& R, long long k, int b) {
    const int sw = (int)T.side_width;
    const unsigned ids[2] = {U32(T.users)[k], U32(T.items)[k]};
    float* e[2] = {r + R.eu, r + R.ei};
    for (int side = 0; side < 2; ++side) {  // gather: [table 0 row, table 1 row]
        int col = 0;
        for (int t = 0; t < T.ntables; ++t) {
            long long w = T.table_width[t];
            const float* src = F32(T.emb[side][t]) + (long long)ids[side] * w;
            for (int c = 0; c < w; ++c) e[side][col++] = src[c];
        }
    }
    const int f = (int)T.f, d = (int)T.d, nl = (int)T.nl, m0 = mlp_col(T);
    const int hw = (int)T.dense_off[head_tensor(T)], hb = (int)T.dense_off[head_tensor(T) + 1];
    float z;
    if (T.kind == FUSED_MF) {  // logit = P[u]·Q[i] + b_u[u] + b_i[i] + g
        float dot = 0.0f;
        for (int c = 0; c < f; ++c) dot += e[0][c] * e[1][c];
        z = dot + e[0][f] + e[1][f] + wsh[T.dense_off[0]];
    } else {  // logit = w·[h, a_nl] + b
        float acc = 0.0f;
        if (has_gmf(T))
            for (int j = 0; j < f; ++j) acc += wsh[hw + j] * (e[0][j] * e[1][j]);  // h = P_g[u] ⊙ Q_g[i]
        if (has_mlp(T)) {
            float* a0 = r + R.act[0];
            for (int c = 0; c < d; ++c) a0[c] = e[0][m0 + c];  // a_0 = [P_m[u], Q_m[i]]
            for (int c = 0; c < d; ++c) a0[d + c] = e[1][m0 + c];
            for (int l = 0; l < nl; ++l) {  // a_{l+1} = relu(W_l a_l + b_l)
                const int in = (int)T.width[l], out = (int)T.width[l + 1];
                const float* W = wsh + T.dense_off[2 * l];
                const float* bias = wsh + T.dense_off[2 * l + 1];
                const float* a = r + R.act[l];
                float* y = r + R.act[l + 1];
                for (int o = 0; o < out; ++o) {
                    float s = 0.0f;
                    for (int i = 0; i < in; ++i) s += W[o * in + i] * a[i];
                    s += bias[o];
                    y[o] = s > 0.0f ? s : 0.0f;
                }
            }
            const int g0 = has_gmf(T) ? f : 0;
            const float* x = r + R.act[nl];
            for (int o = 0; o < T.width[nl]; ++o) acc += wsh[hw + g0 + o] * x[o];
        }
        z = acc + wsh[hb];
    }
    // Sigmoid-BCE: loss = softplus(z) − y·z;  dlogit = (σ(z) − y) / B
    const float y = F32(T.labels)[k];
    const float dz = (sigmoidf_stable(z) - y) * (1.0f / (float)b);
    r[R.loss] = softplusf(z) - y * z;
    r[R.dlogit] = dz;

    float* gu = F32(T.sample_grad[0]) + k * sw;  // this sample's row gradients
    float* gi = F32(T.sample_grad[1]) + k * sw;
    if (T.kind == FUSED_MF) {  // dP[u] = dz·Q[i], dQ[i] = dz·P[u], db_u = db_i = dz
        for (int c = 0; c < f; ++c) {
            gu[c] = dz * e[1][c];
            gi[c] = dz * e[0][c];
        }
        gu[f] = dz;
        gi[f] = dz;
    } else {
        if (has_gmf(T))
            for (int j = 0; j < f; ++j) {  // dh = dz·w_h;  dP_g[u] = dh ⊙ Q_g[i], dQ_g[i] = dh ⊙ P_g[u]
                float dh = dz * wsh[hw + j];
                gu[j] = dh * e[1][j];
                gi[j] = dh * e[0][j];
            }
        if (has_mlp(T)) {
            const int g0 = has_gmf(T) ? f : 0;
            const float* x = r + R.act[nl];
            float* dl = r + R.delta[nl];
            for (int o = 0; o < T.width[nl]; ++o) dl[o] = x[o] > 0.0f ? dz * wsh[hw + g0 + o] : 0.0f;  // δ_nl
            for (int l = nl - 1; l >= 0; --l) {  // dx_l = W_lᵀ δ_{l+1};  δ_l = dx_l ⊙ 1[a_l > 0]
                const int in = (int)T.width[l], out = (int)T.width[l + 1];
                const float* W = wsh + T.dense_off[2 * l];
                const float* dn = r + R.delta[l + 1];
                const float* a = r + R.act[l];
                for (int i = 0; i < in; ++i) {
                    float s = 0.0f;
                    for (int o = 0; o < out; ++o) s += W[o * in + i] * dn[o];
                    if (l > 0) {
                        r[R.delta[l] + i] = a[i] > 0.0f ? s : 0.0f;
                    } else if (i < d) {  // dx_0 = [dP_m[u], dQ_m[i]]
                        gu[m0 + i] = s;
                    } else {
                        gi[m0 + i - d] = s;
                    }
                }
            }
        }
    }
    // Link the sample into its rows' lists (the lists' order does not matter: see the top),
    // and count it and its largest |g| into the rows' info (integer atomics: order-free; a
    // non-negative float's bits order as the float does, NaN above infinity).
    float* g2[2] = {gu, gi};
    for (int side = 0; side < 2; ++side) {
        float big = 0.0f;
        for (int c = 0; c < sw; ++c) big = fmaxf(big, fabsf(g2[side][c]));
        if (big != big) big = __uint_as_float(0x7fc00000u);  // fmaxf drops NaN: keep it
        unsigned* info = U32(T.rowinfo[side]) + 2 * (long long)ids[side];
        atomicAdd(&info[0], 1u);
        atomicMax(&info[1], __float_as_uint(big));
        U32(T.next[side])[k] = atomicExch(&U32(T.last[side])[ids[side]], (unsigned)k);
    }
}

// Σ over the tile's n samples, in sample order, of dense parameter p's gradient (p = P: the
// loss). The head's input is cat = [h, a_nl], h = P_g[u] ⊙ Q_g[i] recomputed as in forward.
__device__ float fused_dense_sum(const FusedTab& T, const float* regions, const Region& R, int n, int p) {
    const int P = (int)T.nparams, stride = (int)T.region;
    float s = 0.0f;
    if (p == P) {
        for (int q = 0; q < n; ++q) s += regions[q * stride + R.loss];
        return s;
    }
    int t = 0;
    while (p >= T.dense_off[t + 1]) ++t;
    const int off = p - (int)T.dense_off[t];
    if (T.kind == FUSED_MF || t == head_tensor(T) + 1) {  // MF's global bias, the head's bias: Σ dz
        for (int q = 0; q < n; ++q) s += regions[q * stride + R.dlogit];
    } else if (t == head_tensor(T)) {  // the head's weights: Σ dz · cat[off]
        const int f = has_gmf(T) ? (int)T.f : 0;
        for (int q = 0; q < n; ++q) {
            const float* r = regions + q * stride;
            float c = off < f ? r[R.eu + off] * r[R.ei + off] : r[R.act[T.nl] + off - f];
            s += r[R.dlogit] * c;
        }
    } else {  // layer l = t / 2: weight (o, i) Σ δ_{l+1}[o]·a_l[i]; bias o: Σ δ_{l+1}[o]
        const int l = t / 2, in = (int)T.width[l];
        const int o = (t % 2 == 0) ? off / in : off, i = off % in;
        for (int q = 0; q < n; ++q) {
            const float* r = regions + q * stride;
            s += t % 2 == 0 ? r[R.delta[l + 1] + o] * r[R.act[l] + i] : r[R.delta[l + 1] + o];
        }
    }
    return s;
}

// Kernel 1. Block = one tile of blockDim.x samples; dynamic shared memory = (P + tile·region)
// floats: the dense parameters, then one region per sample. Block 0 also advances Adam's step
// count and computes the step's bias corrections, once for the whole step.
extern "C" __global__ void fused_tile(const unsigned long long* tab, int b) {
    const FusedTab& T = *(const FusedTab*)tab;
    extern __shared__ float sh[];
    const int P = (int)T.nparams;
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int t = 0;
        while (p >= T.dense_off[t + 1]) ++t;
        sh[p] = F32(T.dense[t])[p - T.dense_off[t]];
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned t = *U32(T.t) + 1u;
        *U32(T.t) = t;
        for (int g = 0; g < 3; ++g) {
            F32(T.scalars)[2 * g] = (float)(T.lr[g] / (1.0 - pow(T.beta1[g], (double)t)));
            F32(T.scalars)[2 * g + 1] = (float)(1.0 / sqrt(1.0 - pow(T.beta2[g], (double)t)));
        }
    }
    __syncthreads();
    const Region R = region_of(T);
    float* regions = sh + P;
    const long long k0 = (long long)blockIdx.x * blockDim.x;
    if (k0 + threadIdx.x < b) fused_sample(T, sh, regions + threadIdx.x * T.region, R, k0 + threadIdx.x, b);
    __syncthreads();
    const int n = (int)min((long long)blockDim.x, (long long)b - k0);
    float* out = F32(T.partials) + (long long)blockIdx.x * (P + 1);
    for (int p = threadIdx.x; p <= P; p += blockDim.x) out[p] = fused_dense_sum(T, regions, R, n, p);
}

// Adam on one element, with the gradient given: g ← grad + l2·w;  m ← β₁m + (1−β₁)g;
// v ← β₂v + (1−β₂)g²;  w ← shrink·w − step·m / (√v·inv_sqrt_bc2 + ε). (optim.cu's adam_one.)
__device__ __forceinline__ void fused_adam(const FusedTab& T, int group, float* p, float* m, float* v, long long k,
                                           float grad) {
    const float step = F32(T.scalars)[2 * group], inv_sqrt_bc2 = F32(T.scalars)[2 * group + 1];
    float w = p[k];
    float g = grad + T.l2[group] * w;
    float mk = T.b1[group] * m[k] + T.omb1[group] * g;
    float vk = T.b2[group] * v[k] + T.omb2[group] * g * g;
    m[k] = mk;
    v[k] = vk;
    p[k] = w * T.shrink[group] - step * mk / (sqrtf(vk) * inv_sqrt_bc2 + T.eps[group]);
}

// Kernel 2. Block (32, FUSED_GROUPS): lane x owns parameter p = 32·blockIdx.x + x (p = P: the
// loss); row y of the block adds the partial sums of tiles y, y + FUSED_GROUPS, … in that
// order, then row 0 adds the rows' sums in row order (a fixed order, whatever the schedule)
// and applies Adam. Parameters are spread over ⌈(P+1)/32⌉ blocks and each thread reads
// 1/FUSED_GROUPS of the tiles, with each row of a block reading 32 consecutive floats.
#define FUSED_GROUPS 8
extern "C" __global__ void fused_dense_adam(const unsigned long long* tab, int b, int blocks) {
    const FusedTab& T = *(const FusedTab*)tab;
    __shared__ float part[FUSED_GROUPS][32];
    const int P = (int)T.nparams;
    const int p = blockIdx.x * 32 + threadIdx.x, y = threadIdx.y;
    float g = 0.0f;
    if (p <= P)
        for (int q = y; q < blocks; q += FUSED_GROUPS) g += F32(T.partials)[(long long)q * (P + 1) + p];
    part[y][threadIdx.x] = g;
    __syncthreads();
    if (y != 0 || p > P) return;
    g = part[0][threadIdx.x];
    for (int r = 1; r < FUSED_GROUPS; ++r) g += part[r][threadIdx.x];
    if (p == P) {
        F32(T.loss)[0] += g * (1.0f / (float)b);
        return;
    }
    int t = 0;
    while (p >= T.dense_off[t + 1]) ++t;
    fused_adam(T, (int)T.dense_group[t], F32(T.dense[t]), F32(T.dense_m[t]), F32(T.dense_v[t]), p - T.dense_off[t], g);
}

// Kernel 3. Threads over 2B (user side, then item side). The sample that heads its row's list
// sums the row's gradients over the list and updates the row (every table of the side) with
// Adam, then empties the row's list head and info. Exact sums: with M the largest |g| in the
// row and n the list's length (both from the row's info), each g·2^s (s = 62 − exponent(M) −
// bits(n)) is rounded to an integer and the integers added in 64 bits, which cannot overflow
// and gives the same bits in any order (and exactly g when a row appears once). One walk of
// the list per row.
extern "C" __global__ void fused_rows_adam(const unsigned long long* tab, int b) {
    const FusedTab& T = *(const FusedTab*)tab;
    const int sw = (int)T.side_width;
    GRID_STRIDE(k, 2LL * b) {
        const int side = k >= b ? 1 : 0;
        const unsigned s = (unsigned)(k - (long long)side * b);
        const unsigned id = U32(side ? T.items : T.users)[s];
        unsigned* last = U32(T.last[side]);
        if (last[id] != s) continue;  // not the head of its row's list
        const unsigned* next = U32(T.next[side]);
        const float* g = F32(T.sample_grad[side]);
        unsigned* info = U32(T.rowinfo[side]) + 2 * (long long)id;
        const unsigned n = info[0];
        const float big = __uint_as_float(info[1]);
        long long acc[FUSED_MAX_SIDE];
        float sum[FUSED_MAX_SIDE];
        if (big <= 3.402823466e38f) {
            int ex = 0;
            frexpf(big, &ex);
            const int shift = 62 - ex - (32 - __clz((int)n));
            for (int c = 0; c < sw; ++c) acc[c] = 0;
            for (unsigned j = s; j != FUSED_EMPTY; j = next[j])
                for (int c = 0; c < sw; ++c) acc[c] += llrintf(ldexpf(g[(long long)j * sw + c], shift));
            for (int c = 0; c < sw; ++c) sum[c] = ldexpf((float)acc[c], -shift);
        } else {  // inf or NaN: a plain sum passes them on
            for (int c = 0; c < sw; ++c) sum[c] = 0.0f;
            for (unsigned j = s; j != FUSED_EMPTY; j = next[j])
                for (int c = 0; c < sw; ++c) sum[c] += g[(long long)j * sw + c];
        }
        int col = 0;
        for (int t = 0; t < T.ntables; ++t) {
            const long long w = T.table_width[t];
            for (int c = 0; c < w; ++c, ++col)
                fused_adam(T, 0, F32(T.emb[side][t]), F32(T.emb_m[side][t]), F32(T.emb_v[side][t]),
                           (long long)id * w + c, sum[col]);
        }
        info[0] = 0u;
        info[1] = 0u;
        last[id] = FUSED_EMPTY;
    }
}
