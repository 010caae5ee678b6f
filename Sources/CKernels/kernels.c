/* The hot loops. The loops themselves are in kernel_loops.h, compiled once per instruction-set
 * level (baseline; on x86-64 also AVX2 and AVX-512 F/BW/DQ/VL); this file holds what they share
 * (vector types, macros, inlined helpers) and picks one level when first called. Every level
 * does the same operations in the same order on each lane (no FMA, see below), so all
 * levels give the same bits; only how many lanes one instruction holds differs. */
#include "kernels.h"
#include <stdatomic.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* No fused multiply-add anywhere (the AVX-512 level could use it, the baseline cannot): the
 * same bits at every level depend on it, so it is set here and not only by the build flags. */
#pragma clang fp contract(off)

#if defined(__x86_64__)
#define WSK_X86 1
#else
#define WSK_X86 0
#endif

typedef double v4d __attribute__((vector_size(32), aligned(8)));
typedef int64_t v4i __attribute__((vector_size(32), aligned(8)));
typedef float v4f __attribute__((vector_size(16), aligned(4)));
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4)));
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2)));
typedef double v8d __attribute__((vector_size(64), aligned(8)));
typedef int64_t v8l __attribute__((vector_size(64), aligned(8)));
typedef uint64_t v8lu __attribute__((vector_size(64), aligned(8)));

/* Macros rather than functions: passing vectors by value would change the ABI between levels. */
#define load4(p) (*(const v4d *)(p))
#define load8d(p) (*(const v8d *)(p))
#define splat(x) ((v4d){(x), (x), (x), (x)})
/* Lane-wise a < b ? a : b and a > b ? a : b: one compare and one blend. (The builtin min/max
 * also order NaNs, which costs two more instructions; NaNs never reach these loops' results.) */
#define vmin4(a, b) ((v4d)(((v4i)(a) & (v4i)((a) < (b))) | ((v4i)(b) & ~(v4i)((a) < (b)))))
#define vmax4(a, b) ((v4d)(((v4i)(a) & (v4i)((a) > (b))) | ((v4i)(b) & ~(v4i)((a) > (b)))))
/* The fold of eight lanes: the lower four, then the upper four, then their sum. */
#define fold8(a) ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))
#define lower4(a) __builtin_shufflevector((a), (a), 0, 1, 2, 3)
#define upper4(a) __builtin_shufflevector((a), (a), 4, 5, 6, 7)
#define splat8(x) ((v8d){(x), (x), (x), (x), (x), (x), (x), (x)})

/* A double rounded to BF16 (8 significant bits) by the FPU itself: with c = ±2^(e+45), where
 * 2^e is the power of two at or below |x|, x + c has its last bit at the BF16 unit in the last
 * place of x, so the addition rounds x to nearest even there, and subtracting c is exact. x's
 * sign is put back (for x = −0 the sum loses it). The result converts to float exactly, and the
 * float's upper half is the BF16. Results whose float is subnormal, infinite or NaN are flagged
 * for the careful encoder; a double so small that its float is ±0 (below 2^-149) correctly
 * gives ±0. */
#define EXPONENT64 0x7FF0000000000000ull
#define SIGN64 0x8000000000000000ull

/* The float bits of eight doubles x rounded on the FPU with c = ±2^(max(e, emin) + k), where
 * `scale` = 2^k and `min_exponent` holds the exponent bits of 2^emin (0: no floor). */
#define round8_bits(x, scale, min_exponent)                                                                       \
    ({                                                                                                            \
        v8d x_ = (x);                                                                                             \
        v8lu e_ = (v8lu)x_ & EXPONENT64;                                                                          \
        v8lu floor_ = (v8lu)(e_ < (min_exponent));                                                                \
        e_ = (e_ & ~floor_) | ((min_exponent) & floor_);                                                          \
        v8d c_ = (v8d)(e_ | ((v8lu)x_ & SIGN64)) * (scale);                                                       \
        v8d r_ = (v8d)((v8lu)((x_ + c_) - c_) | ((v8lu)x_ & SIGN64));                                              \
        (v8u) __builtin_convertvector(r_, v8f);                                                                   \
    })

/* The same for one double. */
static inline uint32_t round_one_bits(double x, double scale, uint64_t min_exponent) {
    uint64_t u, e;
    memcpy(&u, &x, 8);
    e = u & EXPONENT64;
    e = (e < min_exponent ? min_exponent : e) | (u & SIGN64);
    double c;
    memcpy(&c, &e, 8);
    c *= scale;
    float f = (float)((x + c) - c);
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits | ((uint32_t)(u >> 32) & 0x80000000u);
}

/* Eight doubles x (a v8d) to BF16 at dst; lanes needing the careful encoder set `outside8`. */
#define encode8_bf16(x, dst, outside8)                                                                            \
    do {                                                                                                          \
        v8u bits_ = round8_bits((x), 0x1p45, 0ull);                                                               \
        v8u e_ = (bits_ >> 23) & 0xFF;                                                                            \
        (outside8) |= ((e_ == 0) & ((bits_ & 0x7FFFFFFF) != 0)) | (e_ == 0xFF);                                   \
        v8h half_ = __builtin_convertvector(bits_ >> 16, v8h);                                                    \
        memcpy((dst), &half_, 16);                                                                                \
    } while (0)

static inline uint16_t encode_bf16_one(double x, uint32_t *outside) {
    uint32_t bits = round_one_bits(x, 0x1p45, 0);
    uint32_t e = (bits >> 23) & 0xFF;
    *outside |= (e == 0 && (bits & 0x7FFFFFFF) != 0) | (e == 0xFF);
    return (uint16_t)(bits >> 16);
}

/* F16 the same way, with c = ±2^(E+42) and E = max(e, −14): x + c rounds x to 11 significant
 * bits, or for |x| < 2^−14 to a multiple of 2^−24, the F16 subnormal step, so subnormal results
 * are rounded correctly too. The result converts to float exactly. A float with exponent 113
 * or more (2^−14 and up) gives a normal F16: its sign, its exponent rebiased by −112 and the top
 * 10 bits of its fraction; a smaller one (or ±0) gives the subnormal whose fraction is |r|·2^24.
 * Overflowing, infinite and NaN results (float exponent 143 or more) are flagged. */
#define F16_LOW (113u << 23)
#define F16_HIGH (143u << 23)
#define F16_REBIAS (112u << 23)
#define F16_MIN_EXPONENT 0x3F10000000000000ull /* the exponent bits of 2^−14 */

#define encode8_f16(x, dst, outside8)                                                                             \
    do {                                                                                                          \
        v8u bits_ = round8_bits((x), 0x1p42, F16_MIN_EXPONENT);                                                   \
        v8u mag_ = bits_ & 0x7FFFFFFF;                                                                            \
        (outside8) |= mag_ >= F16_HIGH;                                                                           \
        v8u sub_ = __builtin_convertvector((v8f)mag_ * 0x1p24f, v8u);                                             \
        v8u low_ = (v8u)(mag_ < F16_LOW);                                                                         \
        v8u half_ = ((bits_ >> 16) & 0x8000) | (sub_ & low_) | (((mag_ - F16_REBIAS) >> 13) & ~low_);             \
        v8h out_ = __builtin_convertvector(half_, v8h);                                                           \
        memcpy((dst), &out_, 16);                                                                                 \
    } while (0)

static inline uint16_t encode_f16_one(double x, uint32_t *outside) {
    uint32_t bits = round_one_bits(x, 0x1p42, F16_MIN_EXPONENT);
    uint32_t mag = bits & 0x7FFFFFFF;
    *outside |= mag >= F16_HIGH;
    float m;
    memcpy(&m, &mag, 4);
    uint32_t half = mag < F16_LOW ? (uint32_t)(m * 0x1p24f) : (mag - F16_REBIAS) >> 13;
    return (uint16_t)(((bits >> 16) & 0x8000) | half);
}

/* Eight F16 elements (a v8h) as floats, exactly, without touching a subnormal float (so also
 * under flush-to-zero): a normal F16 is its exponent and fraction moved into a float's place and
 * rebiased by +112; a subnormal one is its fraction times 2^−24, both exact; infinities and NaNs
 * get the float's all-ones exponent; the sign goes back. */
#define f16x8_to_f32(h)                                                                           \
    ({                                                                                             \
        v8u u_ = __builtin_convertvector((h), v8u);                                                \
        v8u em_ = (u_ & 0x7FFF) << 13;                                                             \
        v8u normal_ = em_ + F16_REBIAS;                                                            \
        v8u sub_ = (v8u)(__builtin_convertvector(u_ & 0x3FF, v8f) * 0x1p-24f);                     \
        v8u special_ = (v8u)(em_ >= (0x7C00u << 13)), tiny_ = (v8u)(em_ < (0x0400u << 13));        \
        v8u mag_ = (normal_ & ~(special_ | tiny_)) | ((em_ | 0x7F800000u) & special_) | (sub_ & tiny_); \
        (v8f)(mag_ | ((u_ & 0x8000) << 16));                                                       \
    })

static inline float f16_to_f32(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7FFF) << 13, bits;
    if (em >= (0x7C00u << 13)) {
        bits = em | 0x7F800000u;
    } else if (em < (0x0400u << 13)) {
        float f = (float)(h & 0x3FF) * 0x1p-24f;
        memcpy(&bits, &f, 4);
    } else {
        bits = em + F16_REBIAS;
    }
    bits |= (uint32_t)(h & 0x8000) << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Doubles to BF16 or F16 (`kind`, a constant once inlined), rounded on the FPU, 8 lanes at a time
 * and then the tail; nonzero when some element needs the careful encoder. */
static inline __attribute__((always_inline)) int encode_halves(const double *src, size_t n, void *dst, int kind) {
    unsigned char *d = dst;
    v8i outside8 = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        if (kind == WSK_BF16) encode8_bf16(load8d(src + i), d + 2 * i, outside8);
        else encode8_f16(load8d(src + i), d + 2 * i, outside8);
    }
    uint32_t outside = 0;
    for (int k = 0; k < 8; k++) outside |= outside8[k] != 0;
    for (; i < n; i++) {
        uint16_t half = kind == WSK_BF16 ? encode_bf16_one(src[i], &outside) : encode_f16_one(src[i], &outside);
        memcpy(d + 2 * i, &half, 2);
    }
    return outside != 0;
}

/* ---- Stored elements read in place (the Fisher check, the fused combine) ---- */

/* Eight elements of kind `kind` at element index i of p, as one vector of doubles (exact). */
#define load8x(p, kind, i)                                                                        \
    ({                                                                                             \
        v8d r_;                                                                                    \
        if ((kind) == WSK_F64) {                                                                   \
            memcpy(&r_, (const unsigned char *)(p) + 8 * (i), 64);                                 \
        } else {                                                                                   \
            v8f f_;                                                                                \
            if ((kind) == WSK_BF16) {                                                              \
                v8h h_;                                                                            \
                memcpy(&h_, (const unsigned char *)(p) + 2 * (i), 16);                             \
                f_ = (v8f)(__builtin_convertvector(h_, v8u) << 16);                                \
            } else if ((kind) == WSK_F16) {                                                        \
                v8h h_;                                                                            \
                memcpy(&h_, (const unsigned char *)(p) + 2 * (i), 16);                             \
                f_ = f16x8_to_f32(h_);                                                             \
            } else {                                                                               \
                memcpy(&f_, (const unsigned char *)(p) + 4 * (i), 32);                             \
            }                                                                                      \
            r_ = __builtin_convertvector(f_, v8d);                                                 \
        }                                                                                          \
        r_;                                                                                        \
    })

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
    } else if (kind == WSK_F16) {
        uint16_t h;
        memcpy(&h, (const unsigned char *)p + 2 * i, 2);
        f = f16_to_f32(h);
    } else {
        memcpy(&f, (const unsigned char *)p + 4 * i, 4);
    }
    return f;
}

/* Instantiates `impl` with a constant kind, so its loop is tight for each. */
#define BY_KIND(kind, impl, ...)                                \
    do {                                                        \
        if ((kind) == WSK_BF16) impl(WSK_BF16, __VA_ARGS__);    \
        else if ((kind) == WSK_F16) impl(WSK_F16, __VA_ARGS__); \
        else if ((kind) == WSK_F32) impl(WSK_F32, __VA_ARGS__); \
        else impl(WSK_F64, __VA_ARGS__);                        \
    } while (0)

static inline __attribute__((always_inline)) void scope_pass1_impl(int kind, const void *x, size_t n, double *copy,
                                                                   double *sum, double *min, double *max) {
    v8d s = splat8(0);
    v4d lo = splat(__builtin_inf()), hi = splat(-__builtin_inf());
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d v = load8x(x, kind, i);
        v4d x0 = lower4(v), x1 = upper4(v);
        if (copy) memcpy(copy + i, &v, 64);
        s += v;
        lo = vmin4(vmin4(x0, x1), lo);
        hi = vmax4(vmax4(x0, x1), hi);
    }
    double total = fold8(s);
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

/* Σf² over doubles or stored elements (`kind`), one lane layout for every kind (decoding is
 * exact, so the sum does not depend on where the values come from), with either the minimum
 * or, cheaper, whether some sign bit is set. */
static inline __attribute__((always_inline)) void squares_impl(int kind, const void *f, size_t n, int want_min,
                                                               double *squares, double *min, int *signs) {
    v8d s = splat8(0);
    v4d lo = splat(__builtin_inf());
    v8lu sign = {0};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d v = load8x(f, kind, i);
        s += v * v;
        if (want_min) lo = vmin4(vmin4(lower4(v), upper4(v)), lo);
        else sign |= (v8lu)v;
    }
    double sum = fold8(s);
    double mn = lo[0];
    for (int k = 1; k < 4; k++) mn = lo[k] < mn ? lo[k] : mn;
    uint64_t bits = 0;
    for (int k = 0; k < 8; k++) bits |= sign[k];
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

/* ---- Fused combine: raw BF16/F16/F32/F64 inputs to encoded output, without float64 blocks ---- */

/* Every lane of a vector of doubles is finite: an all-ones exponent carries into the sign bit. */
#define all_finite8(x) (((((v8lu)(x) & 0x7FF0000000000000ull) + 0x0010000000000000ull) >> 63) == 0)

/* Tiles of the fused combine: each input is folded into a float64 tile in L1, one simple loop
 * per input, then the tile is checked and encoded. */
#define TILE 256
#define store8(p, v) (*(v8d *)(p) = (v))

/* acc (and den) ← the contribution of term t over elements [start, start + m), m a multiple of 8.
 * Always inlined with constant `mode`, `first` and `kind`s, so each use is a tight loop. */
static inline __attribute__((always_inline)) void fold_term(double *acc, double *den, const wsk_term *t, int mode,
                                                             int first, int kind, int fisher_kind,
                                                             double epsilon, size_t start, size_t m) {
    for (size_t i = 0; i < m; i += 8) {
        v8d x = load8x(t->x, kind, start + i);
        if (mode == WSK_AVERAGE) {
            v8d w = splat8(t->weight);
            store8(acc + i, first ? w * x : load8d(acc + i) + w * x);
        } else if (mode == WSK_RESCALE) {
            v8d w = splat8(t->weight), mu = splat8(t->mean);
            store8(acc + i, first ? (x - mu) * w : load8d(acc + i) + (x - mu) * w);
        } else {
            v8d c = splat8(t->weight), e = splat8(epsilon);
            v8d f = load8x(t->fisher, fisher_kind, start + i);
            v8d a = c * (f + e);
            store8(acc + i, first ? a * x : load8d(acc + i) + a * x);
            store8(den + i, first ? a : load8d(den + i) + a);
        }
    }
}

/* fold_term with its run-time choices made constant, one instantiation each. */
static inline __attribute__((always_inline)) void fold_term_dispatch(double *acc, double *den, const wsk_term *t,
                                                                      int mode, int first, double epsilon,
                                                                      size_t start, size_t m) {
#define FOLD(mode_, first_, kind_, fkind_) fold_term(acc, den, t, mode_, first_, kind_, fkind_, epsilon, start, m)
#define FOLD_FISHER_KIND(mode_, first_, kind_)                                                  \
    do {                                                                                        \
        if (mode_ != WSK_FISHER || t->fisher_kind == WSK_BF16)                                  \
            FOLD(mode_, first_, kind_, WSK_BF16);                                               \
        else if (t->fisher_kind == WSK_F16)                                                     \
            FOLD(mode_, first_, kind_, WSK_F16);                                                \
        else if (t->fisher_kind == WSK_F32)                                                     \
            FOLD(mode_, first_, kind_, WSK_F32);                                                \
        else                                                                                    \
            FOLD(mode_, first_, kind_, WSK_F64);                                                \
    } while (0)
#define FOLD_KINDS(mode_, first_)                                                               \
    do {                                                                                        \
        if (t->kind == WSK_BF16)                                                                \
            FOLD_FISHER_KIND(mode_, first_, WSK_BF16);                                          \
        else if (t->kind == WSK_F16)                                                            \
            FOLD_FISHER_KIND(mode_, first_, WSK_F16);                                           \
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
    } else {
        acc = acc / target;
    }
    *y = acc;
    return acc - acc == 0; /* finite */
}

/* ---- The task-vector family: the counter-based draws and |δ| bits ---- */

#define DRAW_GAMMA 0x9E3779B97F4A7C15ull

/* SplitMix64's finaliser, on one value and on eight lanes. */
static inline uint64_t mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
#define mix8(v)                                  \
    ({                                           \
        v8lu z_ = (v);                           \
        z_ ^= z_ >> 30;                          \
        z_ *= 0xBF58476D1CE4E5B9ull;             \
        z_ ^= z_ >> 27;                          \
        z_ *= 0x94D049BB133111EBull;             \
        z_ ^ (z_ >> 31);                         \
    })

/* u_j = (mix(key + (j+1)·γ) >> 11)·2⁻⁵³ for element j, and for the eight elements j … j+7
 * (the value is below 2⁵³, so converting it as signed is exact). */
static inline double draw_one(uint64_t key, uint64_t j) { return (double)(int64_t)(mix64(key + (j + 1) * DRAW_GAMMA) >> 11) * 0x1p-53; }
#define draw8(key, j)                                                                                       \
    ({                                                                                                      \
        v8lu i_ = (v8lu){0, 1, 2, 3, 4, 5, 6, 7} + (uint64_t)(j) + 1;                                        \
        __builtin_convertvector((v8l)(mix8((key) + i_ * DRAW_GAMMA) >> 11), v8d) * 0x1p-53;                   \
    })

/* Whether u_j < density, as an integer compare: u_j = m·2⁻⁵³ with m = mix(…) >> 11 < 2⁵³, and
 * density·2⁵³ is exact, so u_j < density exactly when m < ⌈density·2⁵³⌉ (the limit, clamped to
 * [0, 2⁵³]; NaN keeps nothing, as u_j < NaN is false). The eight-lane form walks the counters
 * key + (j+1)·γ of consecutive elements by adding 8γ (the same values, mod 2⁶⁴). */
static inline uint64_t draw_limit(double density) {
    if (!(density > 0)) return 0;
    if (density >= 1) return 1ull << 53;
    double scaled = density * 0x1p53;
    uint64_t limit = (uint64_t)scaled;
    return (double)limit < scaled ? limit + 1 : limit;
}
static inline int draw_keeps(uint64_t key, uint64_t j, uint64_t limit) { return (mix64(key + (j + 1) * DRAW_GAMMA) >> 11) < limit; }
/* The counters of elements j … j+7, and one draw step of eight lanes (advancing the counters). */
#define draw_counters8(key, j) ((key) + ((v8lu){0, 1, 2, 3, 4, 5, 6, 7} + (uint64_t)(j) + 1) * DRAW_GAMMA)
#define draw_keeps8(counters, limit)                                                                        \
    ({                                                                                                      \
        v8l keep_ = (v8l)((mix8(counters) >> 11) < ((v8lu){0} + (limit)));                                  \
        (counters) += 8 * DRAW_GAMMA;                                                                       \
        keep_;                                                                                              \
    })

/* |d| by clearing the sign bit. */
static inline double fabs_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    u &= ~SIGN64;
    memcpy(&d, &u, 8);
    return d;
}

/* The bits of |x − b|. */
static inline uint64_t key_bits(double x, double b) {
    double d = x - b;
    uint64_t u;
    memcpy(&u, &d, 8);
    return u & ~SIGN64;
}

/* Whether a window keeps the key with these bits (advancing its tie counters). */
static inline int window_keeps(wsk_window *w, uint64_t key) {
    int kept = key >= w->from && key <= w->to;
    for (int i = 0; i < w->always; i++) kept |= key == w->always_value[i];
    for (int i = 0; i < w->bands; i++) {
        if (key == w->value[i]) {
            kept |= w->seen[i] >= w->first[i] && w->seen[i] < w->end[i];
            w->seen[i]++;
        }
    }
    return kept;
}

/* SCE's variance of element i (see wsk_sce_variances). */
static inline double sce_variance_one(double *const *x, size_t inputs, const double *b, size_t i) {
    double mean = 0, var = 0, size = (double)inputs;
    for (size_t k = 0; k < inputs; k++) mean += x[k][i] - b[i];
    mean = mean / size;
    for (size_t k = 0; k < inputs; k++) {
        double d = (x[k][i] - b[i]) - mean;
        var += d * d;
    }
    return var / size;
}

/* DELLA: the bucket tables of a whole fibre (the levels below keep up to 256 buckets on their
 * own stack). DELLA_OCTAVES: the octaves of |δ| below the largest that get buckets of their own. */
#define DELLA_BUCKETS 4096
#define DELLA_OCTAVES 8
typedef struct {
    /* counts, then starts, side by side (arrays 16 KB apart alias in the store buffer) */
    struct { uint32_t count, start; } ranks[DELLA_BUCKETS];
    uint8_t needed[DELLA_BUCKETS];
    uint16_t wanted[DELLA_BUCKETS]; /* the needed buckets, listed */
} della_tables;

/* DELLA: the smallest, largest and smallest nonzero key of a range (~0 when all are zero). */
typedef struct {
    uint64_t lo, hi, lo_nonzero;
} della_range;

/* DELLA: one fibre's ranking state: keys[r] and order[r] (the element's index) for ranks r, where a
 * range of ranks holds one bucket's elements in index order until it is split. */
typedef struct {
    uint64_t *keys, *order, *spare_keys, *spare_order;
    /* u[i]: element i's draw; p[r]: the keep probability at rank r */
    const double *u, *p;
    size_t stride;
    uint8_t *keep;
    /* ids[r]: the bucket of the element at position r in the current split (up to 2048);
     * links[r]: the position of the previous element of its bucket */
    uint16_t *ids;
    uint32_t *links;
    della_tables *tables;
} della_fibre;

/* A rank window unpacked for the 8-lane loops (see window8_open/_keep/_close). */
typedef struct {
    v8lu from, to, value[2], always[2];
    int bands;
    int64_t seen[2], first[2], last[2];
} window8;

/* ---- One copy of the loops per level ---- */

/* The kernels of one instruction-set level. */
typedef struct {
    void (*decode_bf16)(const void *src, size_t n, double *dst);
    void (*decode_f32)(const void *src, size_t n, double *dst);
    void (*decode_f16)(const void *src, size_t n, double *dst);
    int (*encode_f16)(const double *src, size_t n, void *dst);
    int (*encode_bf16)(const double *src, size_t n, void *dst);
    void (*encode_f32)(const double *src, size_t n, void *dst);
    void (*scale)(double *out, const double *x, double w, size_t n);
    void (*axpy)(double *out, const double *x, double w, size_t n);
    int (*nonfinite)(const double *x, size_t n);
    void (*moments_pass1)(const double *x, size_t n, wsk_pass1 *out);
    void (*moments_pass2)(const double *x, size_t n, double mu, wsk_pass2 *out);
    void (*scope_pass1)(const void *x, int kind, size_t n, double *copy, double *sum, double *min, double *max);
    void (*scope_pass2)(const double *x, size_t n, double mu, double *s1, double *s2);
    void (*fisher_accumulate)(double *out, double *den, const double *x, const double *f, double c, double eps, size_t n, int first);
    size_t (*fisher_divide)(double *out, const double *den, size_t n);
    void (*squares_min)(const void *f, int kind, size_t n, double *squares, double *min);
    void (*squares_signs)(const void *f, int kind, size_t n, double *squares, int *signs);
    int (*combine)(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t n, int out_kind, void *dst);
    size_t (*bracket)(const double *keys, size_t n, uint64_t lo, uint64_t hi, int64_t counts[3], uint64_t *inside);
    void (*bracket_deltas)(wsk_bracket_span *brackets, size_t count, const void *b, int base_kind, size_t n);
    int64_t (*trim_all)(double *x, const double *b, size_t n, double scale);
    int64_t (*trim_window)(double *x, const double *b, size_t n, double scale, wsk_window *window);
    int64_t (*trim_draws)(double *x, const double *b, size_t n, double scale, uint64_t key, int64_t position, double density);
    void (*draw_sums)(const void *x, int kind, const void *b, int base_kind, size_t n, uint64_t key, int64_t position, double density, double *total, double *kept);
    int (*tv_combine)(double *const *d, const double *w, size_t inputs, const double *b, size_t n, int elect, int normalize, double lambda, double divisor, double *out, int64_t *dropped);
    int (*tv_merge)(wsk_tv_input *inputs, size_t count, const void *b, int base_kind, size_t n, int64_t position, int elect, int normalize, double lambda, double divisor, int out_kind, void *dst, int64_t *dropped);
    int64_t (*trim_mask)(double *x, const double *b, size_t n, double scale, const uint8_t *keep);
    int64_t (*trim_bits)(double *x, const double *b, size_t n, double scale, const uint8_t *bits);
    void (*mark_sums)(const void *x, int kind, const void *b, int base_kind, const uint8_t *marks, size_t n, double *total, double *kept);
    void (*sce_variances)(double *const *x, size_t inputs, const double *b, size_t n, double *var);
    void (*sce_squares)(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, double *squares, int64_t *selected);
    int (*sce_merge)(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, const double *weights, double *out);
    void (*della_mask)(const void *x, int kind, const void *b, int base_kind, size_t length, size_t stride, uint64_t key, int64_t first, const double *p, uint8_t *keep, uint64_t *scratch);
    double (*dot)(const double *x, const double *y, size_t n);
} wsk_kernels;

#define LEVEL_CAT_(name, level) name##_##level
#define LEVEL_CAT(name, level) LEVEL_CAT_(name, level)
#define LEVELED(name) LEVEL_CAT(name, LEVEL)

#define LEVEL baseline
#define LEVEL_IS_AVX512 0
#include "kernel_loops.h"
#undef LEVEL

#if WSK_X86
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#define LEVEL avx2
#include "kernel_loops.h"
#undef LEVEL
#undef LEVEL_IS_AVX512
#define LEVEL_IS_AVX512 1
#pragma clang attribute pop

/* The features tested in wsk_best_simd_level, no more. min_vector_width(512): without it clang
 * keeps 8-lane vectors in pairs of 256-bit registers. */
#pragma clang attribute push(__attribute__((target("avx2,avx512f,avx512bw,avx512dq,avx512vl"), min_vector_width(512))), apply_to = function)
#define LEVEL avx512
#include "kernel_loops.h"
#undef LEVEL
#pragma clang attribute pop
#endif

static const wsk_kernels *const levels[] = {
    &kernels_baseline,
#if WSK_X86
    &kernels_avx2,
    &kernels_avx512,
#endif
};

int wsk_best_simd_level(void) {
#if WSK_X86
    __builtin_cpu_init();
    /* Feature by feature: the "x86-64-v4" name needs clang 18 and a libgcc from GCC 12 on. These
     * bits are set only when the OS also saves the vector registers they need. */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return WSK_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2")) return WSK_SIMD_AVX2;
#endif
    return WSK_SIMD_BASELINE;
}

const char *wsk_simd_level_name(int level) {
    static const char *const names[] = {"baseline", "avx2", "avx512"};
    return level >= 0 && level <= WSK_SIMD_AVX512 ? names[level] : "unknown";
}

int wsk_simd_level_named(const char *name) {
    for (int level = 0; level <= WSK_SIMD_AVX512; level++)
        if (strcmp(wsk_simd_level_name(level), name) == 0) return level;
    return -1;
}

/* The level in use: NULL until the first call chooses one. */
static _Atomic(const wsk_kernels *) active_kernels;

int wsk_use_simd_level(int level) {
    int best = wsk_best_simd_level();
    if (level < 0 || level > best) level = best;
    atomic_store_explicit(&active_kernels, levels[level], memory_order_relaxed);
    return level;
}

int wsk_simd_level(void) {
    const wsk_kernels *k = atomic_load_explicit(&active_kernels, memory_order_relaxed);
    if (!k) {
        const char *name = getenv("WSAMERGE_SIMD");
        return wsk_use_simd_level(name && *name ? wsk_simd_level_named(name) : -1);
    }
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (levels[i] == k) return (int)i;
    return WSK_SIMD_BASELINE;
}

static inline const wsk_kernels *wsk_active(void) {
    const wsk_kernels *k = atomic_load_explicit(&active_kernels, memory_order_relaxed);
    if (__builtin_expect(k != NULL, 1)) return k;
    return levels[wsk_simd_level()];
}

/* ---- The public entry points ---- */

void wsk_decode_bf16(const void *src, size_t n, double *dst) { wsk_active()->decode_bf16(src, n, dst); }
void wsk_decode_f32(const void *src, size_t n, double *dst) { wsk_active()->decode_f32(src, n, dst); }
void wsk_decode_f16(const void *src, size_t n, double *dst) { wsk_active()->decode_f16(src, n, dst); }
int wsk_encode_f16(const double *src, size_t n, void *dst) { return wsk_active()->encode_f16(src, n, dst); }
int wsk_encode_bf16(const double *src, size_t n, void *dst) { return wsk_active()->encode_bf16(src, n, dst); }
void wsk_encode_f32(const double *src, size_t n, void *dst) { wsk_active()->encode_f32(src, n, dst); }
void wsk_scale(double *out, const double *x, double w, size_t n) { wsk_active()->scale(out, x, w, n); }
void wsk_axpy(double *out, const double *x, double w, size_t n) { wsk_active()->axpy(out, x, w, n); }
int wsk_nonfinite(const double *x, size_t n) { return wsk_active()->nonfinite(x, n); }
void wsk_moments_pass1(const double *x, size_t n, wsk_pass1 *out) { wsk_active()->moments_pass1(x, n, out); }
void wsk_moments_pass2(const double *x, size_t n, double mu, wsk_pass2 *out) { wsk_active()->moments_pass2(x, n, mu, out); }
void wsk_scope_pass1(const void *x, int kind, size_t n, double *copy, double *sum, double *min, double *max) { wsk_active()->scope_pass1(x, kind, n, copy, sum, min, max); }
void wsk_scope_pass2(const double *x, size_t n, double mu, double *s1, double *s2) { wsk_active()->scope_pass2(x, n, mu, s1, s2); }
void wsk_fisher_accumulate(double *out, double *den, const double *x, const double *f, double c, double eps, size_t n, int first) { wsk_active()->fisher_accumulate(out, den, x, f, c, eps, n, first); }
size_t wsk_fisher_divide(double *out, const double *den, size_t n) { return wsk_active()->fisher_divide(out, den, n); }
void wsk_squares_min(const void *f, int kind, size_t n, double *squares, double *min) { wsk_active()->squares_min(f, kind, n, squares, min); }
void wsk_squares_signs(const void *f, int kind, size_t n, double *squares, int *signs) { wsk_active()->squares_signs(f, kind, n, squares, signs); }
int wsk_combine(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t n, int out_kind, void *dst) { return wsk_active()->combine(terms, count, mode, target, epsilon, n, out_kind, dst); }
size_t wsk_bracket(const double *keys, size_t n, uint64_t lo, uint64_t hi, int64_t counts[3], uint64_t *inside) { return wsk_active()->bracket(keys, n, lo, hi, counts, inside); }
void wsk_bracket_deltas(wsk_bracket_span *brackets, size_t count, const void *b, int base_kind, size_t n) { wsk_active()->bracket_deltas(brackets, count, b, base_kind, n); }
int64_t wsk_trim_all(double *x, const double *b, size_t n, double scale) { return wsk_active()->trim_all(x, b, n, scale); }
int64_t wsk_trim_window(double *x, const double *b, size_t n, double scale, wsk_window *window) { return wsk_active()->trim_window(x, b, n, scale, window); }
int64_t wsk_trim_draws(double *x, const double *b, size_t n, double scale, uint64_t key, int64_t position, double density) { return wsk_active()->trim_draws(x, b, n, scale, key, position, density); }
void wsk_draw_sums(const void *x, int kind, const void *b, int base_kind, size_t n, uint64_t key, int64_t position, double density, double *total, double *kept) { wsk_active()->draw_sums(x, kind, b, base_kind, n, key, position, density, total, kept); }
int wsk_tv_merge(wsk_tv_input *inputs, size_t count, const void *b, int base_kind, size_t n, int64_t position, int elect, int normalize, double lambda, double divisor, int out_kind, void *dst, int64_t *dropped) { return wsk_active()->tv_merge(inputs, count, b, base_kind, n, position, elect, normalize, lambda, divisor, out_kind, dst, dropped); }
int wsk_tv_combine(double *const *d, const double *w, size_t inputs, const double *b, size_t n, int elect, int normalize, double lambda, double divisor, double *out, int64_t *dropped) { return wsk_active()->tv_combine(d, w, inputs, b, n, elect, normalize, lambda, divisor, out, dropped); }
int64_t wsk_trim_mask(double *x, const double *b, size_t n, double scale, const uint8_t *keep) { return wsk_active()->trim_mask(x, b, n, scale, keep); }
int64_t wsk_trim_bits(double *x, const double *b, size_t n, double scale, const uint8_t *bits) { return wsk_active()->trim_bits(x, b, n, scale, bits); }
void wsk_mark_sums(const void *x, int kind, const void *b, int base_kind, const uint8_t *marks, size_t n, double *total, double *kept) { wsk_active()->mark_sums(x, kind, b, base_kind, marks, n, total, kept); }
void wsk_sce_variances(double *const *x, size_t inputs, const double *b, size_t n, double *var) { wsk_active()->sce_variances(x, inputs, b, n, var); }
void wsk_sce_squares(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, double *squares, int64_t *selected) { wsk_active()->sce_squares(x, inputs, b, n, window, squares, selected); }
int wsk_sce_merge(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, const double *weights, double *out) { return wsk_active()->sce_merge(x, inputs, b, n, window, weights, out); }
double wsk_dot(const double *x, const double *y, size_t n) { return wsk_active()->dot(x, y, n); }
void wsk_della_mask(const void *x, int kind, const void *b, int base_kind, size_t length, size_t stride, uint64_t key, int64_t first, const double *p, uint8_t *keep, uint64_t *scratch) { wsk_active()->della_mask(x, kind, b, base_kind, length, stride, key, first, p, keep, scratch); }

/* Whether some of n elements of `type` at p has every bit of `mask` (the exponent) set;
 * branch-free, so the compiler vectorises it. */
#define ANY_EXPONENT_ALL_ONES(type, p, n, mask)                 \
    do {                                                        \
        type hits_ = 0;                                         \
        for (size_t i_ = 0; i_ < (n); i_++) {                   \
            type v_;                                            \
            memcpy(&v_, (p) + sizeof(type) * i_, sizeof(type)); \
            hits_ |= (type)((v_ & (mask)) == (mask));           \
        }                                                       \
        return hits_ != 0;                                      \
    } while (0)

int wsk_encoded_nonfinite(const void *src, size_t n, int kind) {
    const unsigned char *p = src;
    if (kind == WSK_F64) ANY_EXPONENT_ALL_ONES(uint64_t, p, n, 0x7FF0000000000000ull);
    if (kind == WSK_F32) ANY_EXPONENT_ALL_ONES(uint32_t, p, n, 0x7F800000u);
    ANY_EXPONENT_ALL_ONES(uint16_t, p, n, (uint16_t)(kind == WSK_F16 ? 0x7C00 : 0x7F80));
}
#undef ANY_EXPONENT_ALL_ONES

void wsk_pack_bits(const uint8_t *keep, size_t n, uint8_t *bits, size_t offset) {
    bits += offset / 8;
    unsigned shift = (unsigned)(offset % 8);
    size_t i = 0;
    if (shift) { /* the first byte's remaining bits */
        uint8_t byte = (uint8_t)(*bits & ((1u << shift) - 1));
        for (; i < n && shift + i < 8; i++) byte |= (uint8_t)((keep[i] != 0) << (shift + i));
        *bits++ = byte;
    }
    keep += i;
    n -= i;
    size_t end = n & ~(size_t)7;
    for (i = 0; i < end; i += 8) {
        uint64_t v;
        memcpy(&v, keep + i, 8);
        v = (v | (v >> 1) | (v >> 2) | (v >> 3) | (v >> 4) | (v >> 5) | (v >> 6) | (v >> 7)) & 0x0101010101010101ull;
        /* byte l's low bit to bit l: the multiply gathers the eight bytes' low bits in the top byte */
        bits[i / 8] = (uint8_t)((v * 0x0102040810204080ull) >> 56);
    }
    if (i < n) {
        uint8_t byte = 0;
        for (size_t l = 0; i + l < n; l++) byte |= (uint8_t)((keep[i + l] != 0) << l);
        bits[i / 8] = byte;
    }
}

/* Moves the value of ascending rank k (0-based) of v[0 … n) to v[k] and returns it (Hoare's
 * selection with a median-of-three pivot; deterministic). */
static uint64_t select_u64(uint64_t *v, size_t n, size_t k) {
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, want = (ptrdiff_t)k;
    while (lo < hi) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        uint64_t a = v[lo], b = v[mid], c = v[hi];
        uint64_t small = a < b ? a : b, large = a < b ? b : a;
        uint64_t pivot = small > (large < c ? large : c) ? small : (large < c ? large : c); /* median of three */
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) {
                uint64_t t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return v[want];
    }
    return v[want];
}

void wsk_sort_u64(uint64_t *values, size_t n, uint64_t *scratch) {
    /* LSD radix sort, a byte a pass; a pass whose byte is the same in every value is skipped
     * (the high bytes of nearby magnitudes usually are). */
    uint64_t *from = values, *to = scratch;
    for (int shift = 0; shift < 64; shift += 8) {
        size_t counts[256] = {0};
        for (size_t i = 0; i < n; i++) counts[(from[i] >> shift) & 0xFF]++;
        if (n == 0 || counts[(from[0] >> shift) & 0xFF] == n) continue;
        size_t sum = 0;
        for (int d = 0; d < 256; d++) {
            size_t c = counts[d];
            counts[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) to[counts[(from[i] >> shift) & 0xFF]++] = from[i];
        uint64_t *t = from;
        from = to;
        to = t;
    }
    if (from != values) memcpy(values, from, n * sizeof *values);
}

uint64_t wsk_rank_inside(const uint64_t *keys, const size_t *sizes, size_t count, size_t k, int64_t *less, int64_t *equal_before,
                         uint64_t *scratch) {
    /* 4096 buckets evenly from the smallest key to the largest; the bucket holding rank k is
     * gathered (in block order, so its equal keys can be counted per block) and selected in. */
    enum { BUCKETS = 4096 };
    size_t total = 0;
    for (size_t b = 0; b < count; b++) total += sizes[b];
    if (k >= total) { /* no such key: every key is below the rank */
        *less += (int64_t)total;
        for (size_t b = 0; b <= count; b++) equal_before[b] = 0;
        return ~(uint64_t)0;
    }
    uint64_t first = ~(uint64_t)0, last = 0;
    for (size_t i = 0; i < total; i++) {
        first = keys[i] < first ? keys[i] : first;
        last = keys[i] > last ? keys[i] : last;
    }
    int shift = 0;
    while (((last - first) >> shift) >= BUCKETS) shift++;
    size_t counts[BUCKETS] = {0};
    for (size_t i = 0; i < total; i++) counts[(keys[i] - first) >> shift]++;
    size_t below = 0, bucket = 0;
    while (below + counts[bucket] <= k) below += counts[bucket++];
    /* the bucket's keys in block order (equal_before[b + 1] holding, for now, how many precede
     * block b's end), and a copy for the selection to permute */
    size_t m = 0;
    uint64_t *candidates = scratch;
    equal_before[0] = 0;
    for (size_t b = 0, i = 0; b < count; b++) {
        for (size_t end = i + sizes[b]; i < end; i++) {
            candidates[m] = keys[i];
            m += ((keys[i] - first) >> shift) == bucket;
        }
        equal_before[b + 1] = (int64_t)m;
    }
    uint64_t *selected = scratch + m;
    memcpy(selected, candidates, m * sizeof *selected);
    uint64_t value = select_u64(selected, m, k - below);
    int64_t smaller = (int64_t)below, equal = 0;
    size_t c = 0;
    for (size_t b = 0; b < count; b++) {
        for (size_t end = (size_t)equal_before[b + 1]; c < end; c++) {
            smaller += candidates[c] < value;
            equal += candidates[c] == value;
        }
        equal_before[b + 1] = equal;
    }
    *less += smaller;
    return value;
}

/* DELLA's keep probabilities by rank (see kernels.h). */
void wsk_della_probabilities(size_t length, double density, double epsilon, double *p) {
    double low_p = density - epsilon, span = 2 * epsilon;
    for (size_t r = 0; r < length; r++) p[r] = length == 1 ? low_p : low_p + span * (double)r / (double)(length - 1);
}

/* ---- Arcee Fusion. The exponentials and logarithms are libm's (scalar), so one copy. ---- */

double wsk_row_divergence(const double *c, const double *b, size_t length, double *scratch, int64_t *negatives) {
    double mc = -INFINITY, mb = -INFINITY;
    for (size_t j = 0; j < length; j++) {
        if (isnan(c[j]) || c[j] > mc) mc = c[j];
        if (isnan(b[j]) || b[j] > mb) mb = b[j];
    }
    double *ec = scratch, *eb = scratch + length, zc = 0, zb = 0;
    for (size_t j = 0; j < length; j++) {
        ec[j] = exp(c[j] - mc);
        eb[j] = exp(b[j] - mb);
        zc += ec[j];
        zb += eb[j];
    }
    double kl = 0;
    for (size_t j = 0; j < length; j++) {
        double p = ec[j] / zc + 1e-8, q = eb[j] / zb + 1e-8;
        kl += p * log(p / q);
    }
    int64_t below = 0;
    for (size_t j = 0; j < length; j++) below += fabs(c[j] - b[j]) * kl < 0;
    *negatives += below;
    return kl;
}

/* The KL of element first + i's row: kl[row], or for rows of one element (kl NULL) exactly 0
 * (NaN when c or b is not finite). Runs the statement (with i and the KL k) for i in [0, n), row
 * segment by segment. */
#define ARCEE_ROWS(kl, length, first, n, ...)                                                    \
    do {                                                                                          \
        if (!(kl)) {                                                                              \
            for (size_t i = 0; i < (n); i++) {                                                    \
                double k = 0 * ((c[i] - c[i]) + (b[i] - b[i]));                                   \
                __VA_ARGS__                                                                       \
            }                                                                                     \
            break;                                                                                \
        }                                                                                         \
        size_t row = (size_t)(first) / (length), i = 0;                                           \
        while (i < (n)) {                                                                         \
            size_t stop = (row + 1) * (length) - (size_t)(first);                                 \
            if (stop > (n)) stop = (n);                                                           \
            double k = (kl)[row];                                                                 \
            for (; i < stop; i++) __VA_ARGS__                                                     \
            row++;                                                                                \
        }                                                                                         \
    } while (0)

void wsk_arcee_keys(const double *c, const double *b, size_t n, const double *kl, size_t length, int64_t first,
                    int negative, double *keys) {
    if (negative)
        ARCEE_ROWS(kl, length, first, n, {
            double imp = fabs(c[i] - b[i]) * k;
            keys[i] = imp < 0 ? -imp : INFINITY;
        });
    else
        ARCEE_ROWS(kl, length, first, n, {
            double imp = fabs(c[i] - b[i]) * k;
            keys[i] = isnan(imp) ? NAN : (imp > 0 ? imp : 0);
        });
}

int wsk_arcee_merge(const double *c, const double *b, size_t n, const double *kl, size_t length, int64_t first,
                    double threshold, double *out, int64_t counts[2]) {
    int64_t moved = 0, kept = 0;
    ARCEE_ROWS(kl, length, first, n, {
        int keep = fabs(c[i] - b[i]) * k >= threshold, differs = c[i] != b[i];
        out[i] = b[i] + (c[i] - b[i]) * (keep ? 1.0 : 0.0);
        moved += differs;
        kept += differs & keep;
    });
    counts[0] += moved;
    counts[1] += kept;
    return wsk_nonfinite(out, n);
}
