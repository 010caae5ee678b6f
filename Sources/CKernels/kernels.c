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
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4)));
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2)));

/* Macros rather than functions: passing 32-byte vectors by value would change the ABI between
 * the AVX2 and baseline clones. */
#define load4(p) (*(const v4d *)(p))
#define splat(x) ((v4d){(x), (x), (x), (x)})
/* Lane-wise a < b ? a : b and a > b ? a : b: one compare and one blend. (The builtin min/max
 * also order NaNs, which costs two more instructions; NaNs never reach these loops' results.) */
#define vmin4(a, b) ((v4d)(((v4i)(a) & (v4i)((a) < (b))) | ((v4i)(b) & ~(v4i)((a) < (b)))))
#define vmax4(a, b) ((v4d)(((v4i)(a) & (v4i)((a) > (b))) | ((v4i)(b) & ~(v4i)((a) > (b)))))
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

/* Eight doubles (x0, x1) to BF16 at dst; lanes needing the careful encoder set `outside8`. */
#define encode8_bf16(x0, x1, dst, outside8)                                                                       \
    do {                                                                                                          \
        v4d c0_ = (v4d)((v4u)(x0) & splat4u(BF16_TOP)) * 0x1p45, c1_ = (v4d)((v4u)(x1) & splat4u(BF16_TOP)) * 0x1p45; \
        v4d r0_ = (v4d)((v4u)(((x0) + c0_) - c0_) | ((v4u)(x0) & splat4u(SIGN64)));                            \
        v4d r1_ = (v4d)((v4u)(((x1) + c1_) - c1_) | ((v4u)(x1) & splat4u(SIGN64)));                            \
        v4f f0_ = __builtin_convertvector(r0_, v4f), f1_ = __builtin_convertvector(r1_, v4f);                    \
        v8u bits_ = (v8u)__builtin_shufflevector(f0_, f1_, 0, 1, 2, 3, 4, 5, 6, 7);                               \
        v8u e_ = (bits_ >> 23) & 0xFF;                                                                            \
        (outside8) |= ((e_ == 0) & ((bits_ & 0x7FFFFFFF) != 0)) | (e_ == 0xFF);                                   \
        v8h half_ = __builtin_convertvector(bits_ >> 16, v8h);                                                    \
        memcpy((dst), &half_, 16);                                                                                \
    } while (0)

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
    for (; i < end; i += 8) encode8_bf16(load4(src + i), load4(src + i + 4), d + 2 * i, outside8);
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

/* ---- Stored elements read in place (the Fisher check, the fused combine) ---- */

/* Eight elements of kind `kind` at element index i of p, as two vectors of doubles (exact). */
#define load8(p, kind, i, lo, hi)                                                                  \
    do {                                                                                           \
        v8f f_;                                                                                    \
        if ((kind) == WSK_F64) {                                                                   \
            memcpy(&lo, (const unsigned char *)(p) + 8 * (i), 32);                                 \
            memcpy(&hi, (const unsigned char *)(p) + 8 * (i) + 32, 32);                            \
        } else {                                                                                   \
            if ((kind) == WSK_BF16) {                                                              \
                v8h h_;                                                                            \
                memcpy(&h_, (const unsigned char *)(p) + 2 * (i), 16);                             \
                f_ = (v8f)(__builtin_convertvector(h_, v8u) << 16);                                \
            } else {                                                                               \
                memcpy(&f_, (const unsigned char *)(p) + 4 * (i), 32);                             \
            }                                                                                      \
            lo = __builtin_convertvector(__builtin_shufflevector(f_, f_, 0, 1, 2, 3), v4d);        \
            hi = __builtin_convertvector(__builtin_shufflevector(f_, f_, 4, 5, 6, 7), v4d);        \
        }                                                                                          \
    } while (0)

static inline double load_one(const void *p, int kind, size_t i) {
    float f;
    if (kind == WSK_F64) {
        double x;
        memcpy(&x, (const unsigned char *)p + 8 * i, 8);
        return x;
    } else if (kind == WSK_BF16) {
        uint16_t h;
        memcpy(&h, (const unsigned char *)p + 2 * i, 2);
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&f, &bits, 4);
    } else {
        memcpy(&f, (const unsigned char *)p + 4 * i, 4);
    }
    return f;
}

/* Instantiates `impl` with a constant kind, so its loop is tight for each. */
#define BY_KIND(kind, impl, ...)                                \
    do {                                                        \
        if ((kind) == WSK_BF16) impl(WSK_BF16, __VA_ARGS__);    \
        else if ((kind) == WSK_F32) impl(WSK_F32, __VA_ARGS__); \
        else impl(WSK_F64, __VA_ARGS__);                        \
    } while (0)

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
        lo = vmin4(vmin4(x0, x1), lo);
        hi = vmax4(vmax4(x0, x1), hi);
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

static inline __attribute__((always_inline)) void scope_pass1_impl(int kind, const void *x, size_t n, double *copy,
                                                                   double *sum, double *min, double *max) {
    v4d s0 = splat(0), s1 = splat(0);
    v4d lo = splat(__builtin_inf()), hi = splat(-__builtin_inf());
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d x0, x1;
        load8(x, kind, i, x0, x1);
        if (copy) {
            memcpy(copy + i, &x0, 32);
            memcpy(copy + i + 4, &x1, 32);
        }
        s0 += x0;
        s1 += x1;
        lo = vmin4(vmin4(x0, x1), lo);
        hi = vmax4(vmax4(x0, x1), hi);
    }
    double total = fold4(s0) + fold4(s1);
    double mn = lo[0], mx = hi[0];
    for (int k = 1; k < 4; k++) {
        mn = lo[k] < mn ? lo[k] : mn;
        mx = hi[k] > mx ? hi[k] : mx;
    }
    for (; i < n; i++) {
        double v = load_one(x, kind, i);
        if (copy) copy[i] = v;
        total += v;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    *sum = total;
    *min = mn;
    *max = mx;
}

CLONES void wsk_scope_pass1(const void *x, int kind, size_t n, double *copy, double *sum, double *min, double *max) {
    BY_KIND(kind, scope_pass1_impl, x, n, copy, sum, min, max);
}

CLONES void wsk_scope_pass2(const double *x, size_t n, double mu, double *s1, double *s2) {
    v4d m = splat(mu);
    v4d p0 = splat(0), p1 = splat(0), q0 = splat(0), q1 = splat(0);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d d0 = load4(x + i) - m, d1 = load4(x + i + 4) - m;
        p0 += d0; p1 += d1;
        q0 += d0 * d0; q1 += d1 * d1;
    }
    double a = fold4(p0) + fold4(p1), b = fold4(q0) + fold4(q1);
    for (; i < n; i++) {
        double d = x[i] - mu;
        a += d; b += d * d;
    }
    *s1 = a;
    *s2 = b;
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

/* Σf² over doubles or stored elements (`kind`), one lane layout for every kind (decoding is
 * exact, so the sum does not depend on where the values come from), with either the minimum
 * or, cheaper, whether some sign bit is set. */
static inline __attribute__((always_inline)) void squares_impl(int kind, const void *f, size_t n, int want_min,
                                                               double *squares, double *min, int *signs) {
    v4d s0 = splat(0), s1 = splat(0), lo = splat(__builtin_inf());
    v4u sign = {0, 0, 0, 0};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v4d x0, x1;
        load8(f, kind, i, x0, x1);
        s0 += x0 * x0;
        s1 += x1 * x1;
        if (want_min) lo = vmin4(vmin4(x0, x1), lo);
        else sign |= (v4u)x0 | (v4u)x1;
    }
    double sum = fold4(s0) + fold4(s1);
    double mn = lo[0];
    for (int k = 1; k < 4; k++) mn = lo[k] < mn ? lo[k] : mn;
    uint64_t bits = (sign[0] | sign[1]) | (sign[2] | sign[3]);
    for (; i < n; i++) {
        double v = load_one(f, kind, i);
        sum += v * v;
        mn = v < mn ? v : mn;
        uint64_t u;
        memcpy(&u, &v, 8);
        bits |= u;
    }
    *squares = sum;
    if (want_min) *min = mn;
    else *signs = (bits >> 63) != 0;
}

static inline __attribute__((always_inline)) void squares_min_impl(int kind, const void *f, size_t n, double *squares,
                                                                   double *min) {
    squares_impl(kind, f, n, 1, squares, min, NULL);
}

static inline __attribute__((always_inline)) void squares_signs_impl(int kind, const void *f, size_t n, double *squares,
                                                                     int *signs) {
    squares_impl(kind, f, n, 0, squares, NULL, signs);
}

CLONES void wsk_squares_min(const void *f, int kind, size_t n, double *squares, double *min) {
    BY_KIND(kind, squares_min_impl, f, n, squares, min);
}

CLONES void wsk_squares_signs(const void *f, int kind, size_t n, double *squares, int *signs) {
    BY_KIND(kind, squares_signs_impl, f, n, squares, signs);
}

/* ---- Fused combine: raw BF16/F32/F64 inputs to encoded output, without float64 blocks ---- */

/* Every lane of a vector of doubles is finite: an all-ones exponent carries into the sign bit. */
#define all_finite4(x) (((((v4u)(x) & splat4u(0x7FF0000000000000ull)) + splat4u(0x0010000000000000ull)) >> 63) == 0)

/* Tiles of the fused combine: each input is folded into a float64 tile in L1, one simple loop
 * per input, then the tile is checked and encoded. */
#define TILE 256
#define store4(p, v) (*(v4d *)(p) = (v))

/* acc (and den) ← the contribution of term t over elements [start, start + m), m a multiple of 8.
 * Always inlined with constant `mode`, `first` and `kind`s, so each use is a tight loop. */
static inline __attribute__((always_inline)) void fold_term(double *acc, double *den, const wsk_term *t, int mode,
                                                             int first, int kind, int fisher_kind, double target,
                                                             double epsilon, size_t start, size_t m) {
    for (size_t i = 0; i < m; i += 8) {
        v4d xlo, xhi;
        load8(t->x, kind, start + i, xlo, xhi);
        if (mode == WSK_AVERAGE) {
            v4d w = splat(t->weight);
            store4(acc + i, first ? w * xlo : load4(acc + i) + w * xlo);
            store4(acc + i + 4, first ? w * xhi : load4(acc + i + 4) + w * xhi);
        } else if (mode == WSK_RESCALE) {
            v4d w = splat(t->weight), mu = splat(t->mean);
            store4(acc + i, first ? (xlo - mu) * w : load4(acc + i) + (xlo - mu) * w);
            store4(acc + i + 4, first ? (xhi - mu) * w : load4(acc + i + 4) + (xhi - mu) * w);
        } else {
            v4d flo, fhi, c = splat(t->weight), e = splat(epsilon);
            load8(t->fisher, fisher_kind, start + i, flo, fhi);
            v4d alo = c * (flo + e), ahi = c * (fhi + e);
            store4(acc + i, first ? alo * xlo : load4(acc + i) + alo * xlo);
            store4(acc + i + 4, first ? ahi * xhi : load4(acc + i + 4) + ahi * xhi);
            store4(den + i, first ? alo : load4(den + i) + alo);
            store4(den + i + 4, first ? ahi : load4(den + i + 4) + ahi);
        }
    }
}

/* fold_term with its run-time choices made constant, one instantiation each. */
static inline __attribute__((always_inline)) void fold_term_dispatch(double *acc, double *den, const wsk_term *t,
                                                                      int mode, int first, double target, double epsilon,
                                                                      size_t start, size_t m) {
#define FOLD(mode_, first_, kind_, fkind_) fold_term(acc, den, t, mode_, first_, kind_, fkind_, target, epsilon, start, m)
#define FOLD_FISHER_KIND(mode_, first_, kind_)                                                  \
    do {                                                                                        \
        if (mode_ != WSK_FISHER || t->fisher_kind == WSK_BF16)                                  \
            FOLD(mode_, first_, kind_, WSK_BF16);                                               \
        else if (t->fisher_kind == WSK_F32)                                                     \
            FOLD(mode_, first_, kind_, WSK_F32);                                                \
        else                                                                                    \
            FOLD(mode_, first_, kind_, WSK_F64);                                                \
    } while (0)
#define FOLD_KINDS(mode_, first_)                                                               \
    do {                                                                                        \
        if (t->kind == WSK_BF16)                                                                \
            FOLD_FISHER_KIND(mode_, first_, WSK_BF16);                                          \
        else if (t->kind == WSK_F32)                                                            \
            FOLD_FISHER_KIND(mode_, first_, WSK_F32);                                           \
        else                                                                                    \
            FOLD_FISHER_KIND(mode_, first_, WSK_F64);                                           \
    } while (0)
    if (mode == WSK_AVERAGE) {
        if (first) FOLD_KINDS(WSK_AVERAGE, 1); else FOLD_KINDS(WSK_AVERAGE, 0);
    } else if (mode == WSK_RESCALE) {
        if (first) FOLD_KINDS(WSK_RESCALE, 1); else FOLD_KINDS(WSK_RESCALE, 0);
    } else {
        if (first) FOLD_KINDS(WSK_FISHER, 1); else FOLD_KINDS(WSK_FISHER, 0);
    }
#undef FOLD_KINDS
#undef FOLD_FISHER_KIND
#undef FOLD
}

/* The combined value of element i, one at a time (the tail); returns 0 when the element needs
 * the decoded path. The same operations as fold_term. */
static inline int combine_one(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t i,
                              double *y) {
    double acc = 0, den = 0;
    for (size_t k = 0; k < count; k++) {
        const wsk_term *t = &terms[k];
        double x = load_one(t->x, t->kind, i);
        if (mode == WSK_AVERAGE) {
            acc = k == 0 ? t->weight * x : acc + t->weight * x;
        } else if (mode == WSK_RESCALE) {
            acc = k == 0 ? (x - t->mean) * t->weight : acc + (x - t->mean) * t->weight;
        } else {
            double a = t->weight * (load_one(t->fisher, t->fisher_kind, i) + epsilon);
            acc = k == 0 ? a * x : acc + a * x;
            den = k == 0 ? a : den + a;
        }
    }
    if (mode == WSK_FISHER) {
        if (!(den > 0)) return 0;
        acc = acc / den;
    } else if (mode == WSK_RESCALE) {
        acc = acc + target;
    }
    *y = acc;
    return acc - acc == 0; /* finite */
}

CLONES int wsk_combine(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t n,
                       int out_kind, void *dst) {
    unsigned char *d = dst;
    double acc[TILE] __attribute__((aligned(32))), den[TILE] __attribute__((aligned(32)));
    v8i outside8 = {0, 0, 0, 0, 0, 0, 0, 0};
    v4i bad = {0, 0, 0, 0};
    size_t end = n & ~(size_t)7;
    for (size_t start = 0; start < end; start += TILE) {
        size_t m = end - start < TILE ? end - start : TILE;
        for (size_t k = 0; k < count; k++) fold_term_dispatch(acc, den, &terms[k], mode, k == 0, target, epsilon, start, m);
        for (size_t i = 0; i < m; i += 4) {
            v4d y = load4(acc + i);
            if (mode == WSK_FISHER) {
                v4d q = load4(den + i);
                bad |= (v4i)(q > splat(0)) == 0;
                y = y / q;
            } else if (mode == WSK_RESCALE) {
                y = y + splat(target);
            }
            bad |= (v4i)all_finite4(y) == 0;
            store4(acc + i, y);
        }
        if (out_kind == WSK_BF16) {
            for (size_t i = 0; i < m; i += 8) encode8_bf16(load4(acc + i), load4(acc + i + 4), d + 2 * (start + i), outside8);
        } else if (out_kind == WSK_F64) {
            memcpy(d + 8 * start, acc, 8 * m);
        } else {
            for (size_t i = 0; i < m; i += 4) {
                v4f f = __builtin_convertvector(load4(acc + i), v4f);
                memcpy(d + 4 * (start + i), &f, 16);
            }
        }
    }
    uint32_t redo = 0;
    for (int k = 0; k < 8; k++) redo |= outside8[k] != 0;
    for (int k = 0; k < 4; k++) redo |= bad[k] != 0;
    for (size_t i = end; i < n; i++) {
        double y = 0;
        redo |= !combine_one(terms, count, mode, target, epsilon, i, &y);
        if (out_kind == WSK_BF16) {
            uint16_t half = encode_bf16_one(y, &redo);
            memcpy(d + 2 * i, &half, 2);
        } else if (out_kind == WSK_F64) {
            memcpy(d + 8 * i, &y, 8);
        } else {
            float f = (float)y;
            memcpy(d + 4 * i, &f, 4);
        }
    }
    return redo != 0;
}
