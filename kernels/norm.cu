// Dropout and batch normalization, the GPU twins of crates/ncf-cpu/src/ops/norm.rs (same
// formulas, the same column sums in the same row order, so the results agree to a rounding).

// Inverted dropout keyed by `seed`: out = inp * scale where dropout_bits(seed, k) >= thr, else
// 0 (ncf_core::rng::dropout_bits: the top 24 bits of splitmix64(seed ^ k*phi)). The backward is
// the same kernel on the gradient with the same seed.
extern "C" __global__ void dropout(const float* inp, float* out, long long n, unsigned long long seed,
                                   unsigned thr, float scale) {
    GRID_STRIDE(k, n) {
        unsigned bits = (unsigned)(splitmix64(seed ^ ((unsigned long long)k * 0x9E3779B97F4A7C15ull)) >> 40);
        out[k] = bits >= thr ? inp[k] * scale : 0.0f;
    }
}

// Training-mode batch norm of x (B,H), one thread per column j: mean and biased variance over
// the rows (in row order), inv = 1/sqrt(var + eps), xhat = (x - mean)*inv, y = gamma*xhat + beta;
// the running statistics move by `momentum` toward the mean and the unbiased variance (in
// double, as on the CPU).
extern "C" __global__ void batchnorm_forward_train(const float* x, const float* gamma, const float* beta, float* y,
                                                   float* xhat, float* inv, float* rmean, float* rvar, int b, int h,
                                                   float eps, double momentum) {
    GRID_STRIDE(j, h) {
        float bt = (float)b, mean = 0.0f, var = 0.0f;
        for (int r = 0; r < b; ++r) mean += x[(long long)r * h + j];
        mean = mean / bt;
        for (int r = 0; r < b; ++r) {
            float d = x[(long long)r * h + j] - mean;
            var += d * d;
        }
        var = var / bt;
        double unbiased = b > 1 ? (double)var * (double)b / (double)(b - 1) : (double)var;
        rmean[j] = (float)((1.0 - momentum) * (double)rmean[j] + momentum * (double)mean);
        rvar[j] = (float)((1.0 - momentum) * (double)rvar[j] + momentum * unbiased);
        float iv = 1.0f / sqrtf(var + eps);
        inv[j] = iv;
        for (int r = 0; r < b; ++r) {
            long long k = (long long)r * h + j;
            float xh = (x[k] - mean) * iv;
            xhat[k] = xh;
            y[k] = gamma[j] * xh + beta[j];
        }
    }
}

// Eval-mode batch norm: y = x*s + t with s = gamma/sqrt(rvar + eps), t = beta - rmean*s.
extern "C" __global__ void batchnorm_forward_eval(const float* x, const float* gamma, const float* beta,
                                                  const float* rmean, const float* rvar, float* y, int b, int h,
                                                  float eps) {
    GRID_STRIDE(k, (long long)b * h) {
        int j = (int)(k % h);
        float s = gamma[j] / sqrtf(rvar[j] + eps);
        float t = beta[j] - rmean[j] * s;
        y[k] = x[k] * s + t;
    }
}

// The training-mode backward, one thread per column: dbeta += sum dy, dgamma += sum dy*xhat,
// dx = gamma*inv/B * (B*dy - sum dy - xhat * sum dy*xhat).
extern "C" __global__ void batchnorm_backward(const float* dy, const float* xhat, const float* gamma,
                                              const float* inv, float* dx, float* dgamma, float* dbeta, int b,
                                              int h) {
    GRID_STRIDE(j, h) {
        float sdy = 0.0f, sdyx = 0.0f, bt = (float)b;
        for (int r = 0; r < b; ++r) {
            long long k = (long long)r * h + j;
            sdy += dy[k];
            sdyx += dy[k] * xhat[k];
        }
        dbeta[j] += sdy;
        dgamma[j] += sdyx;
        float c = gamma[j] * inv[j] / bt;
        for (int r = 0; r < b; ++r) {
            long long k = (long long)r * h + j;
            dx[k] = c * (bt * dy[k] - sdy - xhat[k] * sdyx);
        }
    }
}
