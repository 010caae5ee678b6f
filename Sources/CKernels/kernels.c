#include "kernels.h"
#include <string.h>

#if defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

typedef double v4d __attribute__((vector_size(32), aligned(8)));
typedef int64_t v4i __attribute__((vector_size(32), aligned(8)));
typedef uint64_t v4u __attribute__((vector_size(32), aligned(8)));
typedef float v4f __attribute__((vector_size(16), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4)));
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2)));

/* Macros rather than functions: passing 32-byte vectors by value would change the ABI between
 * the AVX2 and baseline clones. */
#define load4(p) (*(const v4d *)(p))
#define splat(x) ((v4d){(x), (x), (x), (x)})
/* (a0 + a1) + (a2 + a3): the fixed fold of one vector. */
#define fold4(a) (((a)[0] + (a)[1]) + ((a)[2] + (a)[3]))

CLONES void wsk_decode_bf16(const void *src, size_t n, double *dst) {
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        dst[i] = f;
    }
}

CLONES void wsk_decode_f32(const void *src, size_t n, double *dst) {
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, s + 4 * i, 4);
        dst[i] = f;
    }
}

/* A double rounded to BF16 (8 significant bits) by the FPU itself: with c = ±2^(e+45), where
 * 2^e is the power of two at or below |x|, x + c has its last bit at the BF16 unit in the last
 * place of x, so the addition rounds x to nearest even there, and subtracting c is exact. x's
 * sign is put back (for x = −0 the sum loses it). The result converts to float exactly, and the
 * float's upper half is the BF16. Results whose float is subnormal, infinite or NaN are flagged
 * for the careful encoder; a double so small that its float is ±0 (below 2^-149) correctly
 * gives ±0. */
#define BF16_TOP 0xFFF0000000000000ull
#define SIGN64 0x8000000000000000ull
#define splat4u(x) ((v4u){(x), (x), (x), (x)})

static inline uint16_t encode_bf16_one(double x, uint32_t *outside) {
    uint64_t u, top;
    memcpy(&u, &x, 8);
    top = u & BF16_TOP;
    double c;
    memcpy(&c, &top, 8);
    c *= 0x1p45;
    float f = (float)((x + c) - c);
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits |= (uint32_t)(u >> 32) & 0x80000000u;
    uint32_t e = (bits >> 23) & 0xFF;
    *outside |= (e == 0 && (bits & 0x7FFFFFFF) != 0) | (e == 0xFF);
    return (uint16_t)(bits >> 16);
}

CLONES int wsk_encode_bf16(const double *src, size_t n, void *dst) {
    unsigned char *d = dst;
    v8i outside8 = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d x0 = load4(src + i), x1 = load4(src + i + 4);
        v4d c0 = (v4d)((v4u)x0 & splat4u(BF16_TOP)) * 0x1p45, c1 = (v4d)((v4u)x1 & splat4u(BF16_TOP)) * 0x1p45;
        v4d r0 = (v4d)((v4u)((x0 + c0) - c0) | ((v4u)x0 & splat4u(SIGN64)));
        v4d r1 = (v4d)((v4u)((x1 + c1) - c1) | ((v4u)x1 & splat4u(SIGN64)));
        v4f f0 = __builtin_convertvector(r0, v4f), f1 = __builtin_convertvector(r1, v4f);
        v8u bits = (v8u)__builtin_shufflevector(f0, f1, 0, 1, 2, 3, 4, 5, 6, 7);
        v8u e = (bits >> 23) & 0xFF;
        outside8 |= ((e == 0) & ((bits & 0x7FFFFFFF) != 0)) | (e == 0xFF);
        v8h half = __builtin_convertvector(bits >> 16, v8h);
        memcpy(d + 2 * i, &half, 16);
    }
    uint32_t outside = 0;
    for (int k = 0; k < 8; k++) outside |= outside8[k] != 0;
    for (; i < n; i++) {
        uint16_t half = encode_bf16_one(src[i], &outside);
        memcpy(d + 2 * i, &half, 2);
    }
    return outside != 0;
}

CLONES void wsk_encode_f32(const double *src, size_t n, void *dst) {
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        float f = (float)src[i];
        memcpy(d + 4 * i, &f, 4);
    }
}

CLONES void wsk_scale(double *out, const double *x, double w, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = w * x[i];
}

CLONES void wsk_axpy(double *out, const double *x, double w, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] += w * x[i];
}

CLONES int wsk_nonfinite(const double *x, size_t n) {
    uint64_t high = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t u;
        memcpy(&u, &x[i], 8);
        /* an all-ones exponent carries into the sign bit */
        high |= (u & 0x7FF0000000000000ull) + 0x0010000000000000ull;
    }
    return (high >> 63) != 0;
}

CLONES void wsk_moments_pass1(const double *x, size_t n, wsk_pass1 *out) {
    v4d s0 = splat(0), s1 = splat(0), a0 = splat(0), a1 = splat(0);
    v4d lo = splat(__builtin_inf()), hi = splat(-__builtin_inf());
    v4i z = {0, 0, 0, 0};
    const v4u magnitude = {0x7FFFFFFFFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d x0 = load4(x + i), x1 = load4(x + i + 4);
        s0 += x0;
        s1 += x1;
        a0 += (v4d)((v4u)x0 & magnitude);
        a1 += (v4d)((v4u)x1 & magnitude);
        lo = __builtin_elementwise_min(lo, __builtin_elementwise_min(x0, x1));
        hi = __builtin_elementwise_max(hi, __builtin_elementwise_max(x0, x1));
        z -= (v4i)(x0 == splat(0)) + (v4i)(x1 == splat(0)); /* comparisons give −1 per true lane */
    }
    double sum = fold4(s0) + fold4(s1), abs_sum = fold4(a0) + fold4(a1);
    double mn = lo[0], mx = hi[0];
    for (int k = 1; k < 4; k++) {
        mn = lo[k] < mn ? lo[k] : mn;
        mx = hi[k] > mx ? hi[k] : mx;
    }
    int64_t zeros = (z[0] + z[1]) + (z[2] + z[3]);
    for (; i < n; i++) {
        double v = x[i];
        sum += v;
        abs_sum += v < 0 ? -v : v;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        zeros += v == 0;
    }
    out->sum = sum;
    out->abs_sum = abs_sum;
    out->min = mn;
    out->max = mx;
    out->zeros = zeros;
}

CLONES void wsk_moments_pass2(const double *x, size_t n, double mu, wsk_pass2 *out) {
    v4d m = splat(mu);
    v4d p0 = splat(0), p1 = splat(0), q0 = splat(0), q1 = splat(0);
    v4d t0 = splat(0), t1 = splat(0), f0 = splat(0), f1 = splat(0);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d d0 = load4(x + i) - m, d1 = load4(x + i + 4) - m;
        v4d e0 = d0 * d0, e1 = d1 * d1;
        p0 += d0; p1 += d1;
        q0 += e0; q1 += e1;
        t0 += e0 * d0; t1 += e1 * d1;
        f0 += e0 * e0; f1 += e1 * e1;
    }
    double s1 = fold4(p0) + fold4(p1), s2 = fold4(q0) + fold4(q1);
    double s3 = fold4(t0) + fold4(t1), s4 = fold4(f0) + fold4(f1);
    for (; i < n; i++) {
        double d = x[i] - mu, e = d * d;
        s1 += d; s2 += e; s3 += e * d; s4 += e * e;
    }
    out->s1 = s1;
    out->s2 = s2;
    out->s3 = s3;
    out->s4 = s4;
}

CLONES void wsk_fisher_accumulate(double *out, double *den, const double *x, const double *f, double c, double eps,
                                  size_t n, int first) {
    if (first) {
        for (size_t i = 0; i < n; i++) {
            double a = c * (f[i] + eps);
            out[i] = a * x[i];
            den[i] = a;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            double a = c * (f[i] + eps);
            out[i] += a * x[i];
            den[i] += a;
        }
    }
}

CLONES size_t wsk_fisher_divide(double *out, const double *den, size_t n) {
    size_t empty = 0;
    for (size_t i = 0; i < n; i++) {
        int ok = den[i] > 0;
        out[i] = ok ? out[i] / den[i] : out[i];
        empty += !ok;
    }
    return empty;
}

CLONES void wsk_squares_min(const double *f, size_t n, double *squares, double *min) {
    v4d s0 = splat(0), s1 = splat(0), lo = splat(__builtin_inf());
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d x0 = load4(f + i), x1 = load4(f + i + 4);
        s0 += x0 * x0;
        s1 += x1 * x1;
        lo = __builtin_elementwise_min(lo, __builtin_elementwise_min(x0, x1));
    }
    double sum = fold4(s0) + fold4(s1);
    double mn = lo[0];
    for (int k = 1; k < 4; k++) mn = lo[k] < mn ? lo[k] : mn;
    for (; i < n; i++) {
        sum += f[i] * f[i];
        mn = f[i] < mn ? f[i] : mn;
    }
    *squares = sum;
    *min = mn;
}
