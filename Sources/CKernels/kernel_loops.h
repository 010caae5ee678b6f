/* The loops of every kernel, compiled once per instruction-set level: kernels.c includes this
 * file with LEVEL set (baseline, avx2, avx512) and the matching target attribute in force, so
 * each function here is named name_LEVEL and uses the shared helpers inlined at that level. The
 * public wsk_* functions (kernels.h documents them) call the level chosen at run time. */

static void LEVELED(decode_bf16)(const void *src, size_t n, double *dst) {
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

static void LEVELED(decode_f32)(const void *src, size_t n, double *dst) {
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, s + 4 * i, 4);
        dst[i] = f;
    }
}

static void LEVELED(decode_f16)(const void *src, size_t n, double *dst) {
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d x = load8x(src, WSK_F16, i);
        memcpy(dst + i, &x, 64);
    }
    for (; i < n; i++) dst[i] = load_one(src, WSK_F16, i);
}

static int LEVELED(encode_f16)(const double *src, size_t n, void *dst) { return encode_halves(src, n, dst, WSK_F16); }

static int LEVELED(encode_bf16)(const double *src, size_t n, void *dst) { return encode_halves(src, n, dst, WSK_BF16); }

static void LEVELED(encode_f32)(const double *src, size_t n, void *dst) {
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        float f = (float)src[i];
        memcpy(d + 4 * i, &f, 4);
    }
}

static void LEVELED(scale)(double *out, const double *x, double w, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = w * x[i];
}

static void LEVELED(axpy)(double *out, const double *x, double w, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] += w * x[i];
}

static int LEVELED(nonfinite)(const double *x, size_t n) {
    uint64_t high = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t u;
        memcpy(&u, &x[i], 8);
        /* an all-ones exponent carries into the sign bit */
        high |= (u & 0x7FF0000000000000ull) + 0x0010000000000000ull;
    }
    return (high >> 63) != 0;
}

static void LEVELED(moments_pass1)(const double *x, size_t n, wsk_pass1 *out) {
    v8d s = splat8(0), a = splat8(0);
    v4d lo = splat(__builtin_inf()), hi = splat(-__builtin_inf());
    v8l z = {0};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d v = load8d(x + i);
        v4d x0 = lower4(v), x1 = upper4(v);
        s += v;
        a += (v8d)((v8lu)v & 0x7FFFFFFFFFFFFFFFull);
        lo = vmin4(vmin4(x0, x1), lo);
        hi = vmax4(vmax4(x0, x1), hi);
        z -= (v8l)(v == 0); /* comparisons give −1 per true lane */
    }
    double sum = fold8(s), abs_sum = fold8(a);
    double mn = lo[0], mx = hi[0];
    for (int k = 1; k < 4; k++) {
        mn = lo[k] < mn ? lo[k] : mn;
        mx = hi[k] > mx ? hi[k] : mx;
    }
    int64_t zeros = 0;
    for (int k = 0; k < 8; k++) zeros += z[k];
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

static void LEVELED(moments_pass2)(const double *x, size_t n, double mu, wsk_pass2 *out) {
    v8d m = splat8(mu), p = splat8(0), q = splat8(0), t = splat8(0), f = splat8(0);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - m, e = d * d;
        p += d;
        q += e;
        t += e * d;
        f += e * e;
    }
    double s1 = fold8(p), s2 = fold8(q), s3 = fold8(t), s4 = fold8(f);
    for (; i < n; i++) {
        double d = x[i] - mu, e = d * d;
        s1 += d; s2 += e; s3 += e * d; s4 += e * e;
    }
    out->s1 = s1;
    out->s2 = s2;
    out->s3 = s3;
    out->s4 = s4;
}

static void LEVELED(scope_pass1)(const void *x, int kind, size_t n, double *copy, double *sum, double *min, double *max) {
    BY_KIND(kind, scope_pass1_impl, x, n, copy, sum, min, max);
}

static void LEVELED(scope_pass2)(const double *x, size_t n, double mu, double *s1, double *s2) {
    v8d m = splat8(mu), p = splat8(0), q = splat8(0);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - m;
        p += d;
        q += d * d;
    }
    double a = fold8(p), b = fold8(q);
    for (; i < n; i++) {
        double d = x[i] - mu;
        a += d; b += d * d;
    }
    *s1 = a;
    *s2 = b;
}

static void LEVELED(fisher_accumulate)(double *out, double *den, const double *x, const double *f, double c, double eps,
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

static size_t LEVELED(fisher_divide)(double *out, const double *den, size_t n) {
    size_t empty = 0;
    for (size_t i = 0; i < n; i++) {
        int ok = den[i] > 0;
        out[i] = ok ? out[i] / den[i] : out[i];
        empty += !ok;
    }
    return empty;
}

static void LEVELED(squares_min)(const void *f, int kind, size_t n, double *squares, double *min) {
    BY_KIND(kind, squares_min_impl, f, n, squares, min);
}

static void LEVELED(squares_signs)(const void *f, int kind, size_t n, double *squares, int *signs) {
    BY_KIND(kind, squares_signs_impl, f, n, squares, signs);
}

static int LEVELED(combine)(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t n,
                       int out_kind, void *dst) {
    unsigned char *d = dst;
    double acc[TILE] __attribute__((aligned(32))), den[TILE] __attribute__((aligned(32)));
    v8i outside8 = {0, 0, 0, 0, 0, 0, 0, 0};
    v8l bad = {0};
    size_t end = n & ~(size_t)7;
    for (size_t start = 0; start < end; start += TILE) {
        size_t m = end - start < TILE ? end - start : TILE;
        for (size_t k = 0; k < count; k++) fold_term_dispatch(acc, den, &terms[k], mode, k == 0, epsilon, start, m);
        for (size_t i = 0; i < m; i += 8) {
            v8d y = load8d(acc + i);
            if (mode == WSK_FISHER) {
                v8d q = load8d(den + i);
                bad |= (v8l)(q > 0) == 0;
                y = y / q;
            } else if (mode == WSK_RESCALE) {
                y = y + target;
            } else {
                y = y / target;
            }
            bad |= (v8l)all_finite8(y) == 0;
            store8(acc + i, y);
        }
        if (out_kind == WSK_BF16) {
            for (size_t i = 0; i < m; i += 8) encode8_bf16(load8d(acc + i), d + 2 * (start + i), outside8);
        } else if (out_kind == WSK_F16) {
            for (size_t i = 0; i < m; i += 8) encode8_f16(load8d(acc + i), d + 2 * (start + i), outside8);
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
    for (int k = 0; k < 8; k++) redo |= bad[k] != 0;
    for (size_t i = end; i < n; i++) {
        double y = 0;
        redo |= !combine_one(terms, count, mode, target, epsilon, i, &y);
        if (out_kind == WSK_BF16) {
            uint16_t half = encode_bf16_one(y, &redo);
            memcpy(d + 2 * i, &half, 2);
        } else if (out_kind == WSK_F16) {
            uint16_t half = encode_f16_one(y, &redo);
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

/* ---- Selection and the task-vector family ---- */

/* Bit l set where lane l of a comparison result is true. */
#undef lane_bits8
#if LEVEL_IS_AVX512
#define lane_bits8(v) ((unsigned)_mm512_movepi64_mask((__m512i)(v)))
#else
#define lane_bits8(v)                                                   \
    ({                                                                  \
        v8l v_ = (v);                                                   \
        unsigned r_ = 0;                                                \
        for (int l_ = 0; l_ < 8; l_++) r_ |= (unsigned)(v_[l_] != 0) << l_; \
        r_;                                                             \
    })
#endif

/* The bracket scan of key bits k (a v8lu, sign cleared): counts into the lane vectors and the
 * inside keys compressed to `inside + m`. */
#undef BRACKET8
#undef BRACKET_TAIL
#if LEVEL_IS_AVX512
#define BRACKET8(k)                                                                                       \
    do {                                                                                                  \
        below -= (v8l)((k) < lo);                                                                         \
        at_lo -= (v8l)((k) == lo);                                                                        \
        at_hi -= (v8l)((k) == hi);                                                                        \
        /* compressed in a register and stored whole (a compressing store to memory is slow on some      \
         * CPUs): the lanes past the kept ones are overwritten by the next store */                       \
        __mmask8 bits_ = (__mmask8)lane_bits8((v8l)(((k) > lo) & ((k) < hi)));                             \
        _mm512_storeu_si512(inside + m, _mm512_maskz_compress_epi64(bits_, (__m512i)(k)));                \
        m += (size_t)__builtin_popcount(bits_);                                                           \
    } while (0)
#else
#define BRACKET8(k)                                                                                       \
    do {                                                                                                  \
        below -= (v8l)((k) < lo);                                                                         \
        at_lo -= (v8l)((k) == lo);                                                                        \
        at_hi -= (v8l)((k) == hi);                                                                        \
        v8l in_ = (v8l)(((k) > lo) & ((k) < hi));                                                         \
        for (int l = 0; l < 8; l++) { /* branch-free: every lane stored, the kept ones advance */         \
            inside[m] = (k)[l];                                                                           \
            m += in_[l] != 0;                                                                             \
        }                                                                                                 \
    } while (0)
#endif

/* The end of a bracket scan: folds the lanes, scans the tail keys (tail(i) gives key i's bits),
 * adds to counts and returns how many keys went inside. */
#define BRACKET_TAIL(tail)                                                                                \
    do {                                                                                                  \
        int64_t b_ = 0, l0_ = 0, h0_ = 0;                                                                 \
        for (int l = 0; l < 8; l++) {                                                                     \
            b_ += below[l];                                                                               \
            l0_ += at_lo[l];                                                                              \
            h0_ += at_hi[l];                                                                              \
        }                                                                                                 \
        for (; i < n; i++) {                                                                              \
            uint64_t k_ = (tail) & ~SIGN64;                                                               \
            b_ += k_ < lo;                                                                                \
            l0_ += k_ == lo;                                                                              \
            h0_ += k_ == hi;                                                                              \
            inside[m] = k_;                                                                               \
            m += k_ > lo && k_ < hi;                                                                      \
        }                                                                                                 \
        counts[0] += b_;                                                                                  \
        counts[1] += l0_;                                                                                 \
        if (hi != lo) counts[2] += h0_;                                                                   \
        return m;                                                                                         \
    } while (0)

static size_t LEVELED(bracket)(const double *keys, size_t n, uint64_t lo, uint64_t hi, int64_t counts[3], uint64_t *inside) {
    v8l below = {0}, at_lo = {0}, at_hi = {0};
    size_t m = 0, end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8lu k;
        memcpy(&k, keys + i, 64);
        k &= ~SIGN64;
        BRACKET8(k);
    }
    uint64_t bits;
    BRACKET_TAIL((memcpy(&bits, keys + i, 8), bits));
}

/* Decodes elements [start, start + m) of stored kind `kind` into dst. */
static void LEVELED(decode_tile)(const void *src, int kind, size_t start, size_t m, double *dst) {
    const unsigned char *s = src;
    if (kind == WSK_BF16) LEVELED(decode_bf16)(s + 2 * start, m, dst);
    else if (kind == WSK_F32) LEVELED(decode_f32)(s + 4 * start, m, dst);
    else if (kind == WSK_F16) LEVELED(decode_f16)(s + 2 * start, m, dst);
    else memcpy(dst, s + 8 * start, 8 * m);
}

/* wsk_bracket_deltas, with `kind` the kind of the base and every stream when it is a constant
 * (the common case, compiled tight for each), or −1 for each span's own: per 256-element tile,
 * the base decoded once, each stream's key bits once (into `keys`), then every bracket of that
 * stream over them. */
static inline __attribute__((always_inline)) void LEVELED(bracket_deltas_impl)(int kind, wsk_bracket_span *spans, size_t count,
                                                                               const void *b, int base_kind, size_t n) {
    double base[TILE] __attribute__((aligned(64)));
    uint64_t keys[TILE] __attribute__((aligned(64)));
    for (size_t s = 0; s < count; s++) spans[s].held = 0;
    for (size_t start = 0; start < n; start += TILE) {
        size_t t = n - start < TILE ? n - start : TILE, end = t & ~(size_t)7;
        LEVELED(decode_tile)(b, kind >= 0 ? kind : base_kind, start, t, base);
        for (size_t s = 0; s < count; s++) {
            if (s == 0 || spans[s].x != spans[s - 1].x || spans[s].kind != spans[s - 1].kind) {
                int own = kind >= 0 ? kind : spans[s].kind;
                size_t i = 0;
                for (; i < end; i += 8) {
                    v8lu k = (v8lu)(load8x(spans[s].x, own, start + i) - load8d(base + i)) & ~SIGN64;
                    memcpy(keys + i, &k, 64);
                }
                for (; i < t; i++) {
                    double d = load_one(spans[s].x, own, start + i) - base[i];
                    memcpy(keys + i, &d, 8);
                    keys[i] &= ~SIGN64;
                }
            }
            spans[s].held += LEVELED(bracket)((const double *)keys, t, spans[s].lo, spans[s].hi, spans[s].counts,
                                              spans[s].inside + spans[s].held);
        }
    }
}

#if LEVEL_IS_AVX512
/* wsk_bracket_deltas when the base and every stream hold floats (BF16, F16 or F32, all exact in
 * float): a float prefilter, 16 lanes at a time, settles most keys, and only the rest are keyed
 * in double. Why it is exact: the float difference k = fl32(x − b) and the double key
 * K = fl64(x − b) round the same exact difference, and rounding is monotone, so K ≥ lo gives
 * |k| ≥ pred32(fl32(lo)) and K ≤ hi gives |k| ≤ succ32(fl32(hi)) (a float step is 2^29 double
 * steps). Keys with |k| below pred32(fl32(lo)) are counted below the bracket, keys above
 * succ32(fl32(hi)) are past it, and the keys between (the bracket's own, a few percent, and the
 * floats next to its ends) have their x and b compressed, in order, for `bracket` on the double
 * keys: the same counts and the same inside keys in the same order. Comparing the floats' bits
 * as unsigned integers orders them as |k| does, NaN above infinity as for the double keys. A
 * bracket end that is not finite sends every key through the double path. */
#ifndef FLOAT_SCAN_SPANS
/* The most brackets one float scan takes (their float bounds are held on the stack). */
#define FLOAT_SCAN_SPANS 64
#endif
static inline __attribute__((always_inline)) void LEVELED(decode_tile_f32)(const void *src, int kind, size_t start, size_t m, float *dst) {
    const unsigned char *p = src;
    size_t end = m & ~(size_t)15, i = 0;
    for (; i < end; i += 16) {
        __m512 f;
        if (kind == WSK_BF16) f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * (start + i)))), 16));
        else if (kind == WSK_F16) f = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * (start + i))));
        else f = _mm512_loadu_ps(p + 4 * (start + i));
        _mm512_store_ps(dst + i, f);
    }
    for (; i < m; i++) dst[i] = (float)load_one(src, kind, start + i);
}

/* The float bits at or below which no key of the bracket's lower end lies (0: none), and at or
 * above which none of its upper end does (UINT32_MAX: none). */
static inline void LEVELED(float_bounds)(uint64_t lo, uint64_t hi, uint32_t *below, uint32_t *above) {
    double l, h;
    memcpy(&l, &lo, 8);
    memcpy(&h, &hi, 8);
    *below = 0;
    *above = UINT32_MAX;
    if (!isfinite(l) || !isfinite(h)) return;
    float fl = (float)l, fh = (float)h;
    uint32_t bl, bh;
    memcpy(&bl, &fl, 4);
    memcpy(&bh, &fh, 4);
    *below = bl == 0 ? 0 : bl - 1;
    *above = bh >= 0x7F800000u ? UINT32_MAX : bh + 1;
}

static void LEVELED(bracket_floats)(wsk_bracket_span *spans, size_t count, const void *b, int base_kind, size_t n) {
    float base[TILE] __attribute__((aligned(64))), x[TILE] __attribute__((aligned(64)));
    float band_x[TILE + 16] __attribute__((aligned(64))), band_b[TILE + 16] __attribute__((aligned(64)));
    double keys[TILE] __attribute__((aligned(64)));
    uint32_t below[FLOAT_SCAN_SPANS], above[FLOAT_SCAN_SPANS];
    for (size_t s = 0; s < count; s++) {
        spans[s].held = 0;
        LEVELED(float_bounds)(spans[s].lo, spans[s].hi, &below[s], &above[s]);
    }
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    for (size_t start = 0; start < n; start += TILE) {
        size_t t = n - start < TILE ? n - start : TILE, end = t & ~(size_t)15;
        LEVELED(decode_tile_f32)(b, base_kind, start, t, base);
        for (size_t s = 0; s < count; s++) {
            if (s == 0 || spans[s].x != spans[s - 1].x || spans[s].kind != spans[s - 1].kind)
                LEVELED(decode_tile_f32)(spans[s].x, spans[s].kind, start, t, x);
            const __m512i lower = _mm512_set1_epi32((int)below[s]), upper = _mm512_set1_epi32((int)above[s]);
            int64_t settled = 0;
            size_t m = 0, i = 0;
            for (; i < end; i += 16) {
                __m512 xv = _mm512_load_ps(x + i), bv = _mm512_load_ps(base + i);
                __m512i k = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(xv, bv)), magnitude);
                __mmask16 under = _mm512_cmplt_epu32_mask(k, lower);
                __mmask16 band = _mm512_cmpge_epu32_mask(k, lower) & _mm512_cmple_epu32_mask(k, upper);
                settled += __builtin_popcount(under);
                /* compressed in a register and stored whole, as in BRACKET8 */
                _mm512_storeu_ps(band_x + m, _mm512_maskz_compress_ps(band, xv));
                _mm512_storeu_ps(band_b + m, _mm512_maskz_compress_ps(band, bv));
                m += (size_t)__builtin_popcount(band);
            }
            for (; i < t; i++) {
                float d = x[i] - base[i];
                uint32_t k;
                memcpy(&k, &d, 4);
                k &= 0x7FFFFFFFu;
                settled += k < below[s];
                band_x[m] = x[i];
                band_b[m] = base[i];
                m += k >= below[s] && k <= above[s];
            }
            for (size_t j = 0; j < m; j++) keys[j] = (double)band_x[j] - (double)band_b[j];
            spans[s].counts[0] += settled;
            spans[s].held += LEVELED(bracket)(keys, m, spans[s].lo, spans[s].hi, spans[s].counts, spans[s].inside + spans[s].held);
        }
    }
}
#endif

static void LEVELED(bracket_deltas)(wsk_bracket_span *spans, size_t count, const void *b, int base_kind, size_t n) {
#if LEVEL_IS_AVX512
    int floats = count <= FLOAT_SCAN_SPANS && (base_kind == WSK_BF16 || base_kind == WSK_F16 || base_kind == WSK_F32);
    for (size_t s = 0; s < count; s++) floats &= spans[s].kind == WSK_BF16 || spans[s].kind == WSK_F16 || spans[s].kind == WSK_F32;
    if (floats) {
        LEVELED(bracket_floats)(spans, count, b, base_kind, n);
        return;
    }
#endif
    int same = 1;
    for (size_t s = 0; s < count; s++) same &= spans[s].kind == base_kind;
    if (same && base_kind == WSK_BF16) LEVELED(bracket_deltas_impl)(WSK_BF16, spans, count, b, base_kind, n);
    else if (same && base_kind == WSK_F16) LEVELED(bracket_deltas_impl)(WSK_F16, spans, count, b, base_kind, n);
    else if (same && base_kind == WSK_F32) LEVELED(bracket_deltas_impl)(WSK_F32, spans, count, b, base_kind, n);
    else if (same) LEVELED(bracket_deltas_impl)(WSK_F64, spans, count, b, base_kind, n);
    else LEVELED(bracket_deltas_impl)(-1, spans, count, b, base_kind, n);
}

static int64_t LEVELED(trim_all)(double *x, const double *b, size_t n, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (x[i] - b[i]) * scale;
    return (int64_t)n;
}

/* A window over 8 keys at a time: open it at a block's start, ask which lanes it keeps (in C
 * order, advancing the bands' tie counters), close it to store the counters back. */
static inline __attribute__((always_inline)) void LEVELED(window8_open)(window8 *s, const wsk_window *w) {
    s->from = (v8lu){0} + w->from;
    s->to = (v8lu){0} + w->to;
    s->bands = w->bands;
    s->value[0] = (v8lu){0} + (w->bands > 0 ? w->value[0] : (uint64_t)-1);
    s->value[1] = (v8lu){0} + (w->bands > 1 ? w->value[1] : (uint64_t)-1);
    s->always[0] = (v8lu){0} + (w->always > 0 ? w->always_value[0] : (uint64_t)-1);
    s->always[1] = (v8lu){0} + (w->always > 1 ? w->always_value[1] : (uint64_t)-1);
    for (int band = 0; band < 2; band++) {
        s->seen[band] = w->seen[band];
        s->first[band] = w->first[band];
        s->last[band] = w->end[band];
    }
}

static inline __attribute__((always_inline)) void LEVELED(window8_keep)(window8 *s, const v8lu *key, v8l *kept) {
    v8lu k = *key;
    v8l keep = (v8l)(((k >= s->from) & (k <= s->to)) | (k == s->always[0]) | (k == s->always[1]));
    for (int band = 0; band < s->bands; band++) {
        v8l tie = (v8l)(k == s->value[band]);
        unsigned lanes = lane_bits8(tie);
        int64_t ties = __builtin_popcount(lanes), seen = s->seen[band], first = s->first[band], last = s->last[band];
        /* Branch-free in the common cases: all these ties in the band's range, or none. */
        int64_t all = -(int64_t)(seen >= first && seen + ties <= last);
        keep |= tie & all;
        if (!all && ties && seen < last && seen + ties > first) {
            /* the range starts or ends inside these lanes: rank them one by one */
            int64_t rank = seen;
            for (int l = 0; l < 8; l++) {
                if (!(lanes >> l & 1)) continue;
                if (rank >= first && rank < last) keep[l] = -1;
                rank++;
            }
        }
        s->seen[band] = seen + ties;
    }
    *kept = keep;
}

static inline __attribute__((always_inline)) void LEVELED(window8_close)(const window8 *s, wsk_window *w) {
    w->seen[0] = s->seen[0];
    w->seen[1] = s->seen[1];
}

/* trim_window for a window that is a range of keys [from, to] alone (no band ranks its ties and
 * none is kept whole: most blocks), with `bounded` false when `to` is the largest key (a
 * magnitude cut-off), so one compare decides. */
static inline __attribute__((always_inline)) int64_t LEVELED(trim_range_impl)(double *x, const double *b, size_t n, double scale,
                                                                                uint64_t from, uint64_t to, int bounded) {
    v8l kept8 = {0};
    v8lu lo = (v8lu){0} + from, hi = (v8lu){0} + to;
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - load8d(b + i);
        v8lu k = (v8lu)d & ~SIGN64;
        v8l keep = bounded ? (v8l)((k >= lo) & (k <= hi)) : (v8l)(k >= lo);
        store8(x + i, (v8d)((v8l)(d * scale) & keep));
        kept8 -= keep;
    }
    int64_t kept = 0;
    for (int l = 0; l < 8; l++) kept += kept8[l];
    for (; i < n; i++) {
        double d = x[i] - b[i];
        uint64_t k = key_bits(x[i], b[i]);
        int keep = k >= from && k <= to;
        x[i] = keep ? d * scale : 0;
        kept += keep;
    }
    return kept;
}

static int64_t LEVELED(trim_window)(double *x, const double *b, size_t n, double scale, wsk_window *w) {
    if (w->bands == 0) {
        /* keys kept whole that border the range (a cut-off's ties in a block before the cut:
         * from − 1, or to + 1) widen it; then a range alone takes the short loop */
        uint64_t from = w->from, to = w->to;
        int others = 0;
        for (int a = 0; a < w->always; a++) {
            uint64_t v = w->always_value[a];
            if (from <= to && from > 0 && v == from - 1) from = v;
            else if (from <= to && to < ~(uint64_t)0 && v == to + 1) to = v;
            else others++;
        }
        if (others == 0) return LEVELED(trim_range_impl)(x, b, n, scale, from, to, to != ~(uint64_t)0);
    }
    v8l kept8 = {0};
    window8 s;
    LEVELED(window8_open)(&s, w);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - load8d(b + i);
        v8lu k = (v8lu)d & ~SIGN64;
        v8l keep;
        LEVELED(window8_keep)(&s, &k, &keep);
        store8(x + i, (v8d)((v8l)(d * scale) & keep));
        kept8 -= keep;
    }
    LEVELED(window8_close)(&s, w);
    int64_t kept = 0;
    for (int l = 0; l < 8; l++) kept += kept8[l];
    for (; i < n; i++) {
        double d = x[i] - b[i];
        int keep = window_keeps(w, key_bits(x[i], b[i]));
        x[i] = keep ? d * scale : 0;
        kept += keep;
    }
    return kept;
}

static int64_t LEVELED(trim_draws)(double *x, const double *b, size_t n, double scale, uint64_t key, int64_t position,
                                   double density) {
    v8l kept8 = {0};
    uint64_t limit = draw_limit(density);
    v8lu counters = draw_counters8(key, (uint64_t)position);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - load8d(b + i);
        v8l keep = draw_keeps8(counters, limit);
        store8(x + i, (v8d)((v8l)(d * scale) & keep));
        kept8 -= keep;
    }
    int64_t kept = 0;
    for (int l = 0; l < 8; l++) kept += kept8[l];
    for (; i < n; i++) {
        double d = x[i] - b[i];
        int keep = draw_keeps(key, (uint64_t)position + i, limit);
        x[i] = keep ? d * scale : 0;
        kept += keep;
    }
    return kept;
}

/* The rescale's L1 sums over |x − b| (elements of kinds `kind` and `base_kind`): total of every
   element, kept of those kept, by the counter-based draws (DARE; `marks` unused) or, when
   `by_marks`, by the byte marks (DELLA). `by_marks` is a constant at every call. */
static inline __attribute__((always_inline)) void LEVELED(abs_sums_impl)(int kind, int base_kind, int by_marks, const void *x,
                                                                          const void *b, size_t n, const uint8_t *marks,
                                                                          uint64_t key, int64_t position, double density,
                                                                          double *total, double *kept) {
    v8d t8 = splat8(0), k8 = splat8(0);
    uint64_t limit = draw_limit(density);
    v8lu counters = draw_counters8(key, (uint64_t)position);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d a = (v8d)((v8lu)(load8x(x, kind, i) - load8x(b, base_kind, i)) & ~SIGN64);
        v8l keep;
        if (by_marks) {
            keep = (v8l){marks[i] ? -1 : 0, marks[i + 1] ? -1 : 0, marks[i + 2] ? -1 : 0, marks[i + 3] ? -1 : 0,
                         marks[i + 4] ? -1 : 0, marks[i + 5] ? -1 : 0, marks[i + 6] ? -1 : 0, marks[i + 7] ? -1 : 0};
        } else {
            keep = draw_keeps8(counters, limit);
        }
        t8 += a;
        k8 += (v8d)((v8l)a & keep);
    }
    double t = fold8(t8), k = fold8(k8);
    for (; i < n; i++) {
        double a = fabs_bits(load_one(x, kind, i) - load_one(b, base_kind, i));
        t += a;
        if (by_marks ? marks[i] != 0 : draw_keeps(key, (uint64_t)position + i, limit)) k += a;
    }
    *total += t;
    *kept += k;
}

static void LEVELED(draw_sums)(const void *x, int kind, const void *b, int base_kind, size_t n, uint64_t key,
                               int64_t position, double density, double *total, double *kept) {
    if (kind == WSK_BF16 && base_kind == WSK_BF16)
        LEVELED(abs_sums_impl)(WSK_BF16, WSK_BF16, 0, x, b, n, NULL, key, position, density, total, kept);
    else if (kind == WSK_F16 && base_kind == WSK_F16)
        LEVELED(abs_sums_impl)(WSK_F16, WSK_F16, 0, x, b, n, NULL, key, position, density, total, kept);
    else if (kind == WSK_F32 && base_kind == WSK_F32)
        LEVELED(abs_sums_impl)(WSK_F32, WSK_F32, 0, x, b, n, NULL, key, position, density, total, kept);
    else if (kind == WSK_F64 && base_kind == WSK_F64)
        LEVELED(abs_sums_impl)(WSK_F64, WSK_F64, 0, x, b, n, NULL, key, position, density, total, kept);
    else
        LEVELED(abs_sums_impl)(kind, base_kind, 0, x, b, n, NULL, key, position, density, total, kept);
}

static void LEVELED(mark_sums)(const void *x, int kind, const void *b, int base_kind, const uint8_t *marks, size_t n,
                               double *total, double *kept) {
    if (kind == WSK_BF16 && base_kind == WSK_BF16)
        LEVELED(abs_sums_impl)(WSK_BF16, WSK_BF16, 1, x, b, n, marks, 0, 0, 0, total, kept);
    else if (kind == WSK_F64 && base_kind == WSK_F64)
        LEVELED(abs_sums_impl)(WSK_F64, WSK_F64, 1, x, b, n, marks, 0, 0, 0, total, kept);
    else
        LEVELED(abs_sums_impl)(kind, base_kind, 1, x, b, n, marks, 0, 0, 0, total, kept);
}

static inline __attribute__((always_inline)) int LEVELED(tv_combine_impl)(double *const *d, const double *w, size_t inputs,
                                                                            const double *b, size_t n, int elect, int normalize,
                                                                            double lambda, double divisor, double *out,
                                                                            int64_t *dropped) {
    /* 8 elements at a time through every input, the sums in registers (from 0, k ascending, as
     * in the scalar tail), then the rest one by one. */
    size_t end = n & ~(size_t)7, i = 0;
    v8d lam = splat8(lambda);
    /* non-finite outputs, as in `nonfinite`, gathered as they are stored */
    v8lu high8 = {0};
    uint64_t high = 0;
#define TV_FLAG8(y) (high8 |= ((v8lu)(y) & 0x7FF0000000000000ull) + 0x0010000000000000ull)
#define TV_FLAG1(y)                                                        \
    do {                                                                   \
        uint64_t u_;                                                       \
        double y_ = (y);                                                   \
        memcpy(&u_, &y_, 8);                                               \
        high |= (u_ & 0x7FF0000000000000ull) + 0x0010000000000000ull;     \
    } while (0)
    if (elect) {
        v8l lost8 = {0};
        for (; i < end; i += 8) {
            v8d sum = splat8(0), mixed = splat8(0), den = splat8(0);
            v8l lost = {0};
            for (size_t k = 0; k < inputs; k++) sum += splat8(w[k]) * load8d(d[k] + i);
            v8l positive = (v8l)(sum >= 0);
            for (size_t k = 0; k < inputs; k++) {
                v8d wk = splat8(w[k]), v = wk * load8d(d[k] + i);
                v8l nonzero = (v8l)(v != 0), agree = nonzero & ~((v8l)(v > 0) ^ positive);
                mixed += (v8d)((v8l)v & agree);
                den += (v8d)((v8l)wk & agree);
                lost |= nonzero & ~agree;
            }
            v8l zero = (v8l)(den == 0);
            v8d q = (v8d)(((v8l)splat8(1.0) & zero) | ((v8l)den & ~zero));
            v8d y = normalize ? mixed / q : mixed, o = load8d(b + i) + lam * y;
            store8(out + i, o);
            TV_FLAG8(o);
            lost8 -= lost;
        }
        int64_t drops = 0;
        for (int l = 0; l < 8; l++) drops += lost8[l];
        for (; i < n; i++) {
            double sum = 0, mixed = 0, den = 0;
            int lost = 0;
            for (size_t k = 0; k < inputs; k++) sum += w[k] * d[k][i];
            for (size_t k = 0; k < inputs; k++) {
                double v = w[k] * d[k][i];
                int nonzero = v != 0, agree = nonzero & ((v > 0) == (sum >= 0));
                mixed += agree ? v : 0;
                den += agree ? w[k] : 0;
                lost |= nonzero & !agree;
            }
            double q = den == 0 ? 1 : den;
            out[i] = b[i] + lambda * (normalize ? mixed / q : mixed);
            TV_FLAG1(out[i]);
            drops += lost;
        }
        *dropped += drops;
    } else {
        v8d div = splat8(divisor);
        for (; i < end; i += 8) {
            v8d mixed = splat8(0);
            for (size_t k = 0; k < inputs; k++) mixed += splat8(w[k]) * load8d(d[k] + i);
            v8d o = load8d(b + i) + lam * (normalize ? mixed / div : mixed);
            store8(out + i, o);
            TV_FLAG8(o);
        }
        for (; i < n; i++) {
            double mixed = 0;
            for (size_t k = 0; k < inputs; k++) mixed += w[k] * d[k][i];
            out[i] = b[i] + lambda * (normalize ? mixed / divisor : mixed);
            TV_FLAG1(out[i]);
        }
    }
#undef TV_FLAG8
#undef TV_FLAG1
    for (int l = 0; l < 8; l++) high |= high8[l];
    return (high >> 63) != 0;
}

/* With the number of inputs a constant for the common counts, so the loops over the inputs unroll
 * and their sums stay in registers. */
static int LEVELED(tv_combine)(double *const *d, const double *w, size_t inputs, const double *b, size_t n, int elect,
                               int normalize, double lambda, double divisor, double *out, int64_t *dropped) {
    switch (inputs) {
    case 2: return LEVELED(tv_combine_impl)(d, w, 2, b, n, elect, normalize, lambda, divisor, out, dropped);
    case 3: return LEVELED(tv_combine_impl)(d, w, 3, b, n, elect, normalize, lambda, divisor, out, dropped);
    case 4: return LEVELED(tv_combine_impl)(d, w, 4, b, n, elect, normalize, lambda, divisor, out, dropped);
    default: return LEVELED(tv_combine_impl)(d, w, inputs, b, n, elect, normalize, lambda, divisor, out, dropped);
    }
}

static void LEVELED(draws)(uint64_t key, int64_t first, size_t stride, size_t n, double *u) {
    if (stride == 1) {
        size_t end = n & ~(size_t)7, i = 0;
        for (; i < end; i += 8) store8(u + i, draw8(key, (uint64_t)first + i));
        for (; i < n; i++) u[i] = draw_one(key, (uint64_t)first + i);
    } else {
        for (size_t i = 0; i < n; i++) u[i] = draw_one(key, (uint64_t)first + i * stride);
    }
}

static int64_t LEVELED(trim_mask)(double *x, const double *b, size_t n, double scale, const uint8_t *keep) {
    int64_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (x[i] - b[i]) * scale;
        x[i] = keep[i] ? d : 0;
        kept += keep[i] != 0;
    }
    return kept;
}

/* trim_mask with the keep marks as bits (bit i % 8 of bits[i / 8]), a byte per 8 lanes. */
static int64_t LEVELED(trim_bits)(double *x, const double *b, size_t n, double scale, const uint8_t *bits) {
    v8l kept8 = {0};
    const v8l lane = {0, 1, 2, 3, 4, 5, 6, 7};
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d d = load8d(x + i) - load8d(b + i);
        v8l keep = -((((v8l){0} + bits[i / 8]) >> lane) & 1);
        store8(x + i, (v8d)((v8l)(d * scale) & keep));
        kept8 -= keep;
    }
    int64_t kept = 0;
    for (int l = 0; l < 8; l++) kept += kept8[l];
    for (; i < n; i++) {
        double d = (x[i] - b[i]) * scale;
        int on = (bits[i / 8] >> (i % 8)) & 1;
        x[i] = on ? d : 0;
        kept += on;
    }
    return kept;
}

static int LEVELED(tv_merge)(wsk_tv_input *in, size_t count, const void *b, int base_kind, size_t n, int64_t position,
                             int elect, int normalize, double lambda, double divisor, int out_kind, void *dst,
                             int64_t *dropped) {
    enum { MAX_INPUTS = 16 };
    if (count > MAX_INPUTS) return 1;
    double tiles[MAX_INPUTS][TILE] __attribute__((aligned(64)));
    double base[TILE] __attribute__((aligned(64))), out[TILE] __attribute__((aligned(64)));
    double *d[MAX_INPUTS], w[MAX_INPUTS];
    for (size_t k = 0; k < count; k++) {
        d[k] = tiles[k];
        w[k] = in[k].weight;
    }
    unsigned char *o = dst;
    int redo = 0;
    int64_t drops = 0;
    for (size_t start = 0; start < n; start += TILE) {
        size_t m = n - start < TILE ? n - start : TILE;
        LEVELED(decode_tile)(b, base_kind, start, m, base);
        for (size_t k = 0; k < count; k++) {
            LEVELED(decode_tile)(in[k].x, in[k].kind, start, m, tiles[k]);
            if (in[k].rule == WSK_KEEP_WINDOW) in[k].kept += LEVELED(trim_window)(tiles[k], base, m, in[k].scale, &in[k].window);
            else if (in[k].rule == WSK_KEEP_DRAWS)
                in[k].kept += LEVELED(trim_draws)(tiles[k], base, m, in[k].scale, in[k].key, position + (int64_t)start, in[k].density);
            else if (in[k].rule == WSK_KEEP_BITS) in[k].kept += LEVELED(trim_bits)(tiles[k], base, m, in[k].scale, in[k].bits + start / 8);
            else in[k].kept += LEVELED(trim_all)(tiles[k], base, m, in[k].scale);
        }
        redo |= LEVELED(tv_combine)(d, w, count, base, m, elect, normalize, lambda, divisor, out, &drops);
        if (out_kind == WSK_BF16) redo |= encode_halves(out, m, o + 2 * start, WSK_BF16);
        else if (out_kind == WSK_F16) redo |= encode_halves(out, m, o + 2 * start, WSK_F16);
        else if (out_kind == WSK_F32) LEVELED(encode_f32)(out, m, o + 4 * start);
        else memcpy(o + 8 * start, out, 8 * m);
    }
    *dropped += drops;
    return redo;
}

/* SCE: the variance of the task vectors x[k] − b over the inputs, 8 elements at a time and one by one. */
#define SCE_VARIANCE8(x, inputs, b, i, var)                                                  \
    do {                                                                                      \
        v8d b_ = load8d((b) + (i)), mean_ = splat8(0), var_ = splat8(0), size_ = splat8((double)(inputs)); \
        for (size_t k_ = 0; k_ < (inputs); k_++) mean_ += load8d((x)[k_] + (i)) - b_;          \
        mean_ = mean_ / size_;                                                                \
        for (size_t k_ = 0; k_ < (inputs); k_++) {                                            \
            v8d d_ = (load8d((x)[k_] + (i)) - b_) - mean_;                                    \
            var_ += d_ * d_;                                                                  \
        }                                                                                     \
        (var) = var_ / size_;                                                                 \
    } while (0)

static void LEVELED(sce_variances)(double *const *x, size_t inputs, const double *b, size_t n, double *var) {
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8d v;
        SCE_VARIANCE8(x, inputs, b, i, v);
        store8(var + i, v);
    }
    for (; i < n; i++) var[i] = sce_variance_one(x, inputs, b, i);
}

/* The lanes of 8 elements from i that SCE selects: all without a window, else by variance. */
#define SCE_SELECT8(x, inputs, b, i, window, s, keep)                                          \
    do {                                                                                      \
        if (window) {                                                                         \
            v8d v_;                                                                           \
            SCE_VARIANCE8(x, inputs, b, i, v_);                                               \
            v8lu k_ = (v8lu)v_ & ~SIGN64;                                                     \
            LEVELED(window8_keep)(&(s), &k_, &(keep));                                        \
        } else {                                                                              \
            (keep) = (v8l){0} - 1;                                                            \
        }                                                                                     \
    } while (0)

static void LEVELED(sce_squares)(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window,
                                 double *squares, int64_t *selected) {
    window8 s = {0};
    if (window) LEVELED(window8_open)(&s, window);
    v8l masks[TILE / 8], count8 = {0};
    int64_t chosen = 0;
    uint8_t tail[8];
    size_t end = n & ~(size_t)7;
    for (size_t start = 0; start < n; start += TILE) {
        size_t stop = start + TILE < end ? start + TILE : end, i;
        for (i = start; i < stop; i += 8) {
            SCE_SELECT8(x, inputs, b, i, window, s, masks[(i - start) / 8]);
            count8 -= masks[(i - start) / 8];
        }
        if (stop == end && end < n) { /* the last elements, one by one (the window's counters closed first) */
            if (window) LEVELED(window8_close)(&s, window);
            for (size_t j = end; j < n; j++) {
                tail[j - end] = window ? window_keeps(window, key_bits(sce_variance_one(x, inputs, b, j), 0)) : 1;
                chosen += tail[j - end];
            }
        }
        for (size_t k = 0; k < inputs; k++) {
            v8d acc = splat8(0);
            for (i = start; i < stop; i += 8) {
                v8d d = load8d(x[k] + i) - load8d(b + i);
                acc += (v8d)((v8l)(d * d) & masks[(i - start) / 8]);
            }
            double sum = fold8(acc);
            if (stop == end)
                for (size_t j = end; j < n; j++) {
                    double d = x[k][j] - b[j];
                    if (tail[j - end]) sum += d * d;
                }
            squares[k] += sum;
        }
        if (stop == end) break;
    }
    if (window && end == n) LEVELED(window8_close)(&s, window);
    for (int l = 0; l < 8; l++) chosen += count8[l];
    *selected += chosen;
}

static int LEVELED(sce_merge)(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window,
                              const double *weights, double *out) {
    window8 s = {0};
    if (window) LEVELED(window8_open)(&s, window);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) {
        v8l keep;
        SCE_SELECT8(x, inputs, b, i, window, s, keep);
        v8d bb = load8d(b + i), sum = splat8(0), mixed = splat8(0), divisor = splat8(0);
        for (size_t k = 0; k < inputs; k++) sum += (v8d)((v8l)(load8d(x[k] + i) - bb) & keep);
        v8l positive = (v8l)(sum >= 0);
        for (size_t k = 0; k < inputs; k++) {
            v8d d = (v8d)((v8l)(load8d(x[k] + i) - bb) & keep), w = splat8(weights[k]);
            v8l agrees = (positive & (v8l)(d > 0)) | (~positive & (v8l)(d < 0));
            mixed += (v8d)((v8l)(w * d) & agrees);
            divisor += (v8d)((v8l)w & agrees);
        }
        v8d floor = splat8(1e-6);
        v8l small = (v8l)(floor >= divisor);
        v8d q = (v8d)(((v8l)floor & small) | ((v8l)divisor & ~small));
        store8(out + i, bb + mixed / q);
    }
    if (window) LEVELED(window8_close)(&s, window);
    for (; i < n; i++) {
        int keep = window ? window_keeps(window, key_bits(sce_variance_one(x, inputs, b, i), 0)) : 1;
        double sum = 0, mixed = 0, divisor = 0;
        for (size_t k = 0; k < inputs; k++) sum += keep ? x[k][i] - b[i] : 0;
        for (size_t k = 0; k < inputs; k++) {
            double d = keep ? x[k][i] - b[i] : 0;
            int agrees = sum >= 0 ? d > 0 : d < 0;
            mixed += agrees ? weights[k] * d : 0;
            divisor += agrees ? weights[k] : 0;
        }
        out[i] = b[i] + mixed / (1e-6 >= divisor ? 1e-6 : divisor);
    }
    return LEVELED(nonfinite)(out, n);
}

/* DELLA. */
/* The smallest and largest of n keys, and the smallest nonzero one (~0 when all are zero; found
 * as the smallest k − 1, which wraps a zero key to the top): min/max reductions the compiler
 * vectorises. */
static della_range LEVELED(della_key_range)(const uint64_t *keys, size_t n) {
    uint64_t lo = ~(uint64_t)0, below_nonzero = ~(uint64_t)0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t k = keys[i];
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
        below_nonzero = k - 1 < below_nonzero ? k - 1 : below_nonzero;
    }
    return (della_range){lo, hi, below_nonzero == ~(uint64_t)0 ? below_nonzero : below_nonzero + 1};
}

/* Decides the undecided elements (keep 2) of ranks [from, from + n), which hold every key of
 * some range in index order: each element's rank lies in its bucket's ranks, and p is monotone
 * in the rank, so u below the p of both ends of that range keeps it and u at or above both
 * drops it whatever its exact rank. Buckets that still hold an undecided element are split the
 * same way (each level narrows the key range at least 2-fold; a few elements are sorted
 * outright). */
static void LEVELED(della_resolve)(const della_fibre *f, size_t from, size_t n) {
    uint64_t *keys = f->keys + from, *order = f->order + from;
    const double *p = f->p + from;
    della_range range = LEVELED(della_key_range)(keys, n);
    uint64_t lo = range.lo, hi = range.hi, lo_nonzero = range.lo_nonzero;
    int sorted = lo == hi;
    if (!sorted && n <= 24) { /* a stable insertion sort gives every rank */
        for (size_t i = 1; i < n; i++) {
            uint64_t k = keys[i], o = order[i];
            size_t j = i;
            for (; j > 0 && keys[j - 1] > k; j--) {
                keys[j] = keys[j - 1];
                order[j] = order[j - 1];
            }
            keys[j] = k;
            order[j] = o;
        }
        sorted = 1;
    }
    if (sorted) { /* sorted, or all equal (index order): the ranks are the positions */
        for (size_t r = 0; r < n; r++) {
            size_t i = (size_t)order[r], j = i * f->stride;
            if (f->keep[j] == 2) f->keep[j] = f->u[i] < p[r];
        }
        return;
    }
    /* Up to 256 buckets spread evenly over the key bits from the smallest to the largest key
     * (so about evenly over the octaves of |δ|), zeros in a bucket of their own. */
    int bits = 64 - __builtin_clzll((uint64_t)n) - 1;
    bits = bits > 8 ? 8 : bits;
    uint64_t buckets = (uint64_t)1 << bits;
    uint64_t base = lo, offset = 0;
    if (lo == 0) {
        base = lo_nonzero;
        offset = 1;
    }
    int shift = 0;
    while (((hi - base) >> shift) > buckets - 1 - offset) shift++;
    size_t counts[256], starts[256];
    uint32_t head[256]; /* each bucket's last element; links[i] the one before i (none: ~0) */
    double first_p[256], last_p[256];
    uint8_t needed[256];
    memset(needed, 0, buckets);
    int any_needed = 0;
#define DELLA_BUCKET(k) ((k) == 0 && offset ? 0 : offset + (((k) - base) >> shift))
    memset(counts, 0, buckets * sizeof counts[0]);
    memset(head, 0xFF, buckets * sizeof head[0]);
    uint16_t *ids = f->ids + from; /* each element's bucket */
    uint32_t *links = f->links + from;
    for (size_t i = 0; i < n; i++) {
        uint16_t d = (uint16_t)DELLA_BUCKET(keys[i]);
        ids[i] = d;
        counts[d]++;
        links[i] = head[d];
        head[d] = (uint32_t)i;
    }
#undef DELLA_BUCKET
    size_t sum = 0;
    for (unsigned d = 0; d < buckets; d++) { /* branch-free (an empty bucket's p is never read) */
        size_t first = sum < n ? sum : n - 1, last = sum + counts[d] - (counts[d] != 0);
        double a = p[first], b = p[last < n ? last : n - 1];
        /* p rises with the rank, or falls when ε < 0: the bucket's smallest and largest p */
        starts[d] = sum;
        first_p[d] = a < b ? a : b;
        last_p[d] = a < b ? b : a;
        sum += counts[d];
    }
    /* Each open element: kept (1) when u is below every p of its bucket's ranks, dropped (0)
     * when it is at or above all of them, else still open (2): 2 − [u < first_p] −
     * 2·[u ≥ last_p], as both cannot hold (first_p ≤ last_p). */
    const double *u = f->u;
    uint8_t *keep = f->keep;
    size_t stride = f->stride;
    for (size_t i = 0; i < n; i++) { /* branch-free: the draws are random */
        size_t e = (size_t)order[i], j = e * stride;
        uint16_t d = ids[i];
        uint8_t open = keep[j] == 2, value = (uint8_t)(2 - (u[e] < first_p[d]) - 2 * (u[e] >= last_p[d]));
        keep[j] = open ? value : keep[j];
        if (open & (value == 2)) {
            needed[d] = 1;
            any_needed = 1;
        }
    }
    if (!any_needed) return;
    /* The needed buckets' elements gathered in index order at their ranks (each bucket's list,
     * walked from its last element), all of them before any is resolved the same way (the
     * children reuse their ranges' links). */
    uint64_t *spare_keys = f->spare_keys + from, *spare_order = f->spare_order + from;
    for (unsigned d = 0; d < buckets; d++) {
        if (!needed[d]) continue;
        size_t to = starts[d] + counts[d];
        for (uint32_t i = head[d]; i != ~(uint32_t)0; i = links[i]) {
            to--;
            spare_keys[to] = keys[i];
            spare_order[to] = order[i];
        }
    }
    for (unsigned d = 0; d < buckets; d++) {
        if (!needed[d]) continue;
        memcpy(keys + starts[d], spare_keys + starts[d], counts[d] * 8);
        memcpy(order + starts[d], spare_order + starts[d], counts[d] * 8);
        LEVELED(della_resolve)(f, from + starts[d], counts[d]);
    }
}

/* A whole fibre, its keys in index order: a counting sort over fine buckets of the key bits
 * (one per element, 256 to DELLA_BUCKETS). Zeros get bucket 0; the nonzero keys are spread over
 * the others at equal key-bit widths, at most as wide as spanning DELLA_OCTAVES octaves below the
 * largest key needs (the few keys further down share bucket 1). The counts give each bucket its
 * range of ranks, which decides every element whose draw lies outside the p of that range's
 * ends; the others (about 1 %: u between the p of its bucket's ends) are resolved by splitting
 * their buckets (`della_resolve`). */
static void LEVELED(della_fibre_ranks)(const della_fibre *f, size_t n) {
    const uint64_t *keys = f->keys;
    const double *u = f->u, *p = f->p;
    uint8_t *keep = f->keep;
    size_t stride = f->stride;
    della_range range = LEVELED(della_key_range)(keys, n);
    uint64_t hi = range.hi;
    if (n <= 24 || range.lo == hi) { /* sorted outright, or one key: index order */
        for (size_t i = 0; i < n; i++) {
            f->order[i] = i;
            keep[i * stride] = 2;
        }
        LEVELED(della_resolve)(f, 0, n);
        return;
    }
    /* lo < hi, so some key is nonzero. The buckets' width: the narrowest that spans the nonzero
     * keys, but no wider than DELLA_OCTAVES octaves need (keys further down go to bucket 1). */
    size_t buckets = 256;
    while (buckets < n && buckets < DELLA_BUCKETS) buckets *= 2;
    uint64_t base = range.lo_nonzero;
    int shift = 0, widest = 0;
    while ((((uint64_t)DELLA_OCTAVES << 52) >> widest) > buckets - 3) widest++;
    while (shift < widest && ((hi - base) >> shift) > buckets - 3) shift++;
    if (((hi - base) >> shift) > buckets - 3) base = hi - ((uint64_t)(buckets - 3) << shift);
    __typeof__(f->tables->ranks[0]) *ranks = f->tables->ranks; /* each bucket's count and first rank */
    uint8_t *needed = f->tables->needed;
    uint16_t *ids = f->ids;
    /* each element's bucket: 0 for zero, 1 below base, else 2 + (k − base) >> shift */
    for (size_t i = 0; i < n; i++) {
        uint64_t k = keys[i];
        uint64_t d = k < base ? (k != 0) : 2 + ((k - base) >> shift);
        ids[i] = (uint16_t)d;
    }
    size_t used = 3 + ((hi - base) >> shift);
    memset(ranks, 0, used * sizeof ranks[0]);
    uint32_t *place = f->links; /* each element's place among its bucket's, in index order */
    for (size_t i = 0; i < n; i++) place[i] = ranks[ids[i]].count++;
    uint32_t sum = 0;
    for (size_t d = 0; d < used; d++) {
        ranks[d].start = sum;
        sum += ranks[d].count;
    }
    /* Each element: kept (1) when u is below every p of the fibre, dropped (0) when at or above
     * all of them (a vectorised loop over the draws alone); the others (2ε of them) listed, in
     * index order, and looked up below. p rises with the rank, or falls when ε < 0. */
    double p_first = p[0], p_last = p[n - 1];
    double p_low = p_first < p_last ? p_first : p_last, p_high = p_first < p_last ? p_last : p_first;
    uint32_t *middle = (uint32_t *)f->spare_keys; /* free until the scatter below */
    size_t middles = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t value = (uint8_t)(2 - (u[i] < p_low) - 2 * (u[i] >= p_high));
        keep[i * stride] = value;
    }
    size_t i = 0;
#if LEVEL_IS_AVX512
    { /* the open draws' indices compressed in a register and stored whole (8 words: the list has room) */
        const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
        const __m512d low = _mm512_set1_pd(p_low), high = _mm512_set1_pd(p_high);
        for (; i + 8 <= n; i += 8) {
            __m512d draws = _mm512_loadu_pd(u + i);
            __mmask8 open = _mm512_cmp_pd_mask(draws, low, _CMP_GE_OQ) & _mm512_cmp_pd_mask(draws, high, _CMP_LT_OQ);
            __m512i index = _mm512_add_epi64(_mm512_set1_epi64((long long)i), lanes);
            _mm256_storeu_si256((__m256i *)(middle + middles), _mm512_cvtepi64_epi32(_mm512_maskz_compress_epi64(open, index)));
            middles += (size_t)__builtin_popcount(open);
        }
    }
#endif
    for (; i < n; i++) { /* branch-free append */
        middle[middles] = (uint32_t)i;
        middles += keep[i * stride] == 2;
    }
    /* Each listed element: kept (1) when u is below the p of both ends of its bucket's ranks,
     * dropped (0) when at or above both, else open (2), its bucket then needed. */
    uint16_t *wanted = f->tables->wanted; /* the needed buckets, in the order first needed */
    size_t wants = 0;
    memset(needed, 0, used);
    for (size_t m = 0; m < middles; m++) {
        size_t e = middle[m];
        uint16_t d = ids[e];
        double a = p[ranks[d].start], b = p[ranks[d].start + ranks[d].count - 1];
        double low = a < b ? a : b, high = a < b ? b : a;
        uint8_t value = (uint8_t)(2 - (u[e] < low) - 2 * (u[e] >= high));
        keep[e * stride] = value;
        if (value == 2 && !needed[d]) { /* rare: a predictable branch */
            needed[d] = 1;
            wanted[wants++] = d;
        }
    }
    if (!wants) return;
    /* The needed buckets' elements at their bucket's ranks, in index order (the counting sort's
     * second half, for them alone), then each needed bucket resolved on those arrays (the
     * index-order keys serve as the spare). */
    uint64_t *sorted_keys = f->spare_keys, *sorted_order = f->spare_order;
    size_t held = 0;
    for (size_t w = 0; w < wants; w++) held += ranks[wanted[w]].count;
    if (held > n / 16) /* many (ties of bf16 data): every element, branch-free */
        for (size_t e = 0; e < n; e++) {
            size_t r = ranks[ids[e]].start + place[e];
            sorted_keys[r] = keys[e];
            sorted_order[r] = e;
        }
    else
        for (size_t e = 0; e < n; e++) {
            uint16_t d = ids[e];
            if (!needed[d]) continue; /* rare: a predictable branch */
            size_t r = ranks[d].start + place[e];
            sorted_keys[r] = keys[e];
            sorted_order[r] = e;
        }
    della_fibre g = *f;
    g.keys = sorted_keys;
    g.order = sorted_order;
    g.spare_keys = f->keys;
    g.spare_order = f->order;
    for (size_t w = 0; w < wants; w++) {
        uint16_t d = wanted[w];
        LEVELED(della_resolve)(&g, ranks[d].start, ranks[d].count);
    }
}

/* |x − b| as key bits for a fibre of elements i·stride of kinds `kind` and `base_kind`. */
static inline __attribute__((always_inline)) void LEVELED(della_keys_impl)(int kind, int base_kind, const void *x, const void *b,
                                                                            size_t n, size_t stride, uint64_t *keys) {
    size_t i = 0;
    if (stride == 1) { /* the common case, 8 at a time */
        size_t end = n & ~(size_t)7;
        for (; i < end; i += 8) {
            v8lu k = (v8lu)(load8x(x, kind, i) - load8x(b, base_kind, i)) & ~SIGN64;
            memcpy(keys + i, &k, 64);
        }
    }
    for (; i < n; i++) {
        double d = load_one(x, kind, i * stride) - load_one(b, base_kind, i * stride);
        uint64_t k;
        memcpy(&k, &d, 8);
        keys[i] = k & ~SIGN64;
    }
}

static void LEVELED(della_keys)(const void *x, int kind, const void *b, int base_kind, size_t n, size_t stride, uint64_t *keys) {
    if (kind == WSK_BF16 && base_kind == WSK_BF16) LEVELED(della_keys_impl)(WSK_BF16, WSK_BF16, x, b, n, stride, keys);
    else if (kind == WSK_F64 && base_kind == WSK_F64) LEVELED(della_keys_impl)(WSK_F64, WSK_F64, x, b, n, stride, keys);
    else LEVELED(della_keys_impl)(kind, base_kind, x, b, n, stride, keys);
}

static void LEVELED(della_mask)(const void *x, int kind, const void *b, int base_kind, size_t length, size_t stride, uint64_t key,
                                int64_t first, const double *p, uint8_t *keep, uint64_t *scratch) {
    double *u = (double *)(scratch + 4 * length);
    LEVELED(draws)(key, first, stride, length, u);
    della_tables tables;
    della_fibre f = {scratch, scratch + length, scratch + 2 * length, scratch + 3 * length, u, p, stride, keep,
                     (uint16_t *)(scratch + 5 * length), (uint32_t *)(scratch + 5 * length + (2 * length + 7) / 8), &tables};
    LEVELED(della_keys)(x, kind, b, base_kind, length, stride, f.keys);
    LEVELED(della_fibre_ranks)(&f, length);
}

static double LEVELED(dot)(const double *x, const double *y, size_t n) {
    v8d acc = splat8(0);
    size_t end = n & ~(size_t)7, i = 0;
    for (; i < end; i += 8) acc += load8d(x + i) * load8d(y + i);
    double sum = fold8(acc);
    for (; i < n; i++) sum += x[i] * y[i];
    return sum;
}

static const wsk_kernels LEVELED(kernels) = {
    .decode_bf16 = LEVELED(decode_bf16),
    .decode_f32 = LEVELED(decode_f32),
    .decode_f16 = LEVELED(decode_f16),
    .encode_f16 = LEVELED(encode_f16),
    .encode_bf16 = LEVELED(encode_bf16),
    .encode_f32 = LEVELED(encode_f32),
    .scale = LEVELED(scale),
    .axpy = LEVELED(axpy),
    .nonfinite = LEVELED(nonfinite),
    .moments_pass1 = LEVELED(moments_pass1),
    .moments_pass2 = LEVELED(moments_pass2),
    .scope_pass1 = LEVELED(scope_pass1),
    .scope_pass2 = LEVELED(scope_pass2),
    .fisher_accumulate = LEVELED(fisher_accumulate),
    .fisher_divide = LEVELED(fisher_divide),
    .squares_min = LEVELED(squares_min),
    .squares_signs = LEVELED(squares_signs),
    .combine = LEVELED(combine),
    .bracket = LEVELED(bracket),
    .bracket_deltas = LEVELED(bracket_deltas),
    .trim_all = LEVELED(trim_all),
    .trim_window = LEVELED(trim_window),
    .trim_draws = LEVELED(trim_draws),
    .draw_sums = LEVELED(draw_sums),
    .tv_combine = LEVELED(tv_combine),
    .tv_merge = LEVELED(tv_merge),
    .trim_mask = LEVELED(trim_mask),
    .trim_bits = LEVELED(trim_bits),
    .mark_sums = LEVELED(mark_sums),
    .sce_variances = LEVELED(sce_variances),
    .sce_squares = LEVELED(sce_squares),
    .sce_merge = LEVELED(sce_merge),
    .della_mask = LEVELED(della_mask),
    .dot = LEVELED(dot),
};
