#ifndef WSAMERGE_KERNELS_H
#define WSAMERGE_KERNELS_H
/*
 * The C part of wsamerge: the hot loops, and two Linux calls Swift's Glibc module lacks.
 *
 * The hot loops are in C so that each can be compiled once per instruction-set level (baseline;
 * on x86-64 also AVX2 and AVX-512) and picked at run time (see wsk_simd_level): Swift has no
 * per-function target attributes, and baseline SSE2 code runs these loops two to three times
 * slower.
 *
 * Every kernel works on caller-owned buffers of `n` elements and allocates nothing. Reductions
 * use a fixed lane layout (8 lanes folded pairwise in a fixed order) and floating-point
 * contraction is off (no FMA), so every level gives bit-identical results.
 */
#include <stddef.h>
#include <stdint.h>

/// dst[i] = BF16 src[i] as double (little-endian, any alignment).
void wsk_decode_bf16(const void *src, size_t n, double *dst);
/// dst[i] = F32 src[i] as double (little-endian, any alignment).
void wsk_decode_f32(const void *src, size_t n, double *dst);
/// dst[i] = F16 src[i] as double (little-endian, any alignment; subnormals and infinities
/// exact, NaNs stay NaNs of the same sign).
void wsk_decode_f16(const void *src, size_t n, double *dst);
/// BF16 bits of src[i], rounded to nearest even. Correct for every element whose result is a
/// normal BF16 or ±0; returns nonzero when some result is subnormal, infinite or NaN (the caller
/// then redoes the call with a careful encoder).
int wsk_encode_bf16(const double *src, size_t n, void *dst);
/// dst[i] = (float)src[i] (round to nearest even).
void wsk_encode_f32(const double *src, size_t n, void *dst);
/// F16 bits of src[i], rounded to nearest even: correct for every element whose result is
/// finite (subnormals included); returns nonzero when some result overflows or is infinite or
/// NaN (the caller then redoes the call with a careful encoder).
int wsk_encode_f16(const double *src, size_t n, void *dst);

/// Σ x[i]·y[i]: 8 lanes over the first n − n % 8 elements, folded, then the rest in order.
double wsk_dot(const double *x, const double *y, size_t n);
/// out[i] = w * x[i].
void wsk_scale(double *out, const double *x, double w, size_t n);
/// out[i] += w * x[i].
void wsk_axpy(double *out, const double *x, double w, size_t n);
/// Whether some x[i] is NaN or infinite.
int wsk_nonfinite(const double *x, size_t n);

/// Element kinds the kernels read in place (decoded exactly) and the fused combine writes.
enum { WSK_BF16 = 0, WSK_F32 = 1, WSK_F64 = 2, WSK_F16 = 3 };

/// First pass of a block's moments: Σx, Σ|x|, min, max and the number of zeros.
typedef struct {
    double sum, abs_sum, min, max;
    int64_t zeros;
} wsk_pass1;
void wsk_moments_pass1(const double *x, size_t n, wsk_pass1 *out);

/// Second pass: Σd, Σd², Σd³, Σd⁴ with d = x[i] − mu.
typedef struct {
    double s1, s2, s3, s4;
} wsk_pass2;
void wsk_moments_pass2(const double *x, size_t n, double mu, wsk_pass2 *out);

/// The scope part of the two passes, with their lanes and folds (so the same sums): Σx, min and
/// max of n elements of `kind`, also stored decoded in `copy` unless it is NULL; then Σd and
/// Σd² with d = x[i] − mu.
void wsk_scope_pass1(const void *x, int kind, size_t n, double *copy, double *sum, double *min, double *max);
void wsk_scope_pass2(const double *x, size_t n, double mu, double *s1, double *s2);

/// Fisher accumulation with a = c (f[i] + eps): out[i] = a x[i] and den[i] = a when `first`,
/// else out[i] += a x[i] and den[i] += a.
void wsk_fisher_accumulate(double *out, double *den, const double *x, const double *f, double c, double eps,
                           size_t n, int first);
/// out[i] /= den[i] where den[i] > 0; returns how many den[i] are not > 0 (left untouched).
size_t wsk_fisher_divide(double *out, const double *den, size_t n);
/// Σ f[i]² and the minimum of f, n elements of `kind` (for the Fisher check pass).
void wsk_squares_min(const void *f, int kind, size_t n, double *squares, double *min);
/// The same Σ f[i]², and whether some f[i] has its sign bit set (a negative value or −0).
void wsk_squares_signs(const void *f, int kind, size_t n, double *squares, int *signs);

/// What the fused combine computes (see `wsk_combine`).
enum { WSK_AVERAGE = 0, WSK_RESCALE = 1, WSK_FISHER = 2 };

/// One input of the fused combine.
typedef struct {
    /// The input's elements, of kind `kind`.
    const void *x;
    /// WSK_FISHER: the input's Fisher elements, of kind `fisher_kind`.
    const void *fisher;
    int kind, fisher_kind;
    /// w_k (WSK_FISHER: c_k).
    double weight;
    /// WSK_RESCALE: m_k.
    double mean;
} wsk_term;

/// Combines element i of `count` terms in float64 and writes it to dst as `out_kind`:
///   WSK_AVERAGE  y = (w_0 x_0 + w_1 x_1 + …) / target          (running sum, left to right; target 1: no division)
///   WSK_RESCALE  y = ((x_0 − m_0) w_0 + (x_1 − m_1) w_1 + …) + target
///   WSK_FISHER   y = (a_0 x_0 + a_1 x_1 + …) / (a_0 + a_1 + …),  a_k = c_k (F_k + epsilon)
/// These are the operations, in the order, of the decoded kernels (decode, scale/axpy, Fisher
/// accumulate/divide, encode), done over 256-element tiles in L1 instead of decoded blocks, so the bytes are the
/// same. Returns nonzero when some y is not finite, a Fisher denominator is not > 0 or a BF16 or
/// F16 result needs the careful encoder: the caller then redoes the whole call on the decoded path.
int wsk_combine(const wsk_term *terms, size_t count, int mode, double target, double epsilon, size_t n, int out_kind,
                void *dst);

/* ---- Selection and the task-vector family. Keys are non-negative doubles compared by their
 * bits (so a NaN key sorts above +inf, as in the radix selection). ---- */

/// Scans `keys` against the bracket [lo, hi] of key bits (lo ≤ hi): counts[0] += keys below lo,
/// counts[1] += keys equal to lo, counts[2] += keys equal to hi (when hi ≠ lo); the bits of the
/// keys strictly between go to `inside` (room for n + 8), in order. Returns how many went there.
size_t wsk_bracket(const double *keys, size_t n, uint64_t lo, uint64_t hi, int64_t counts[3], uint64_t *inside);

/// One bracket of `wsk_bracket_deltas`: the keys |x[i] − b[i]| of one stream against [lo, hi].
typedef struct {
    /// The stream's stored elements, of kind `kind`; the brackets of one stream are adjacent and
    /// share x.
    const void *x;
    int kind;
    uint64_t lo, hi;
    /// Added to, as by `wsk_bracket`.
    int64_t counts[3];
    /// Room for n + 8 keys; `held` is set to how many went inside.
    uint64_t *inside;
    size_t held;
} wsk_bracket_span;

/// Every bracket of a block at once, each as `wsk_bracket` over its stream's decoded keys
/// |x − b| (the same counts and keys), on the stored elements of the streams and of the base
/// (kind `base_kind`; kinds WSK_BF16 … WSK_F16, any mix): each tile of the base is decoded once
/// and each stream's keys computed once, however many brackets read them.
void wsk_bracket_deltas(wsk_bracket_span *brackets, size_t count, const void *b, int base_kind, size_t n);

/// The key of ascending rank k among `keys`, `count` blocks of sizes[b]
/// keys one after another: *less += how many keys are below it, equal_before[b] = how many keys
/// equal to it the blocks before b hold (b = 0 … count). A histogram of 4096 buckets from the
/// smallest key to the largest finds the bucket of rank k, whose keys alone are selected in
/// (Hoare's selection); `scratch` holds twice the keys plus one. With k at or past the number of
/// keys there is no such key: *less += the number of keys, equal_before is all 0, and the result
/// is all ones.
uint64_t wsk_rank_inside(const uint64_t *keys, const size_t *sizes, size_t count, size_t k, int64_t *less, int64_t *equal_before,
                         uint64_t *scratch);
/// Sorts values[0 … n) ascending (`scratch` holds n values).
void wsk_sort_u64(uint64_t *values, size_t n, uint64_t *scratch);

/// Which task-vector elements a rank window keeps, by the bits of |δ|: those in [from, to], and
/// of the keys equal to value[i] (outside [from, to]), those whose rank among them in C order
/// is in [first[i], end[i]). `seen[i]` counts the keys equal to value[i] before the block and
/// is advanced past it; keys equal to always_value[i] (i < always) are kept.
typedef struct {
    uint64_t from, to;
    int bands;
    uint64_t value[2];
    int64_t first[2], end[2], seen[2];
    /// Keys equal to these are kept whatever their rank (a band whose ties in this block all
    /// fall in its range).
    int always;
    uint64_t always_value[2];
} wsk_window;

/// The trimmed task vector in place of the input: x[i] ← (x[i] − b[i])·scale where element i is
/// kept, 0 where it is not. Kept: every element (_all), by `window` (_window), or where the
/// counter-based draw u(position + i) < density (_draws; see `Draws` in Random.swift). Each
/// returns how many elements were kept.
int64_t wsk_trim_all(double *x, const double *b, size_t n, double scale);
int64_t wsk_trim_window(double *x, const double *b, size_t n, double scale, wsk_window *window);
int64_t wsk_trim_draws(double *x, const double *b, size_t n, double scale, uint64_t key, int64_t position, double density);
/// DARE's rescale sums over a block of stored elements of kinds `kind` and `base_kind`
/// (WSK_BF16 … WSK_F64): total += Σ|x[i] − b[i]|, kept += the same over the elements whose draw
/// u(position + i) < density (8 lanes folded as everywhere).
void wsk_draw_sums(const void *x, int kind, const void *b, int base_kind, size_t n, uint64_t key, int64_t position,
                   double density, double *total, double *kept);

/// Merges trimmed task vectors d[k] (unweighted) with weights w[k] into out = b + λ·mixed:
///   elect:  S = Σ w_k d_k (from 0, k ascending), s = S ≥ 0; mixed = Σ w_k d_k over the nonzero
///           w_k d_k whose sign is s, divisor = Σ of their w_k (1 when it is 0); *dropped += the
///           elements where some nonzero w_k d_k had the other sign
///   else:   mixed = Σ w_k d_k, divisor = `divisor`
/// mixed is divided by the divisor when `normalize`. Returns nonzero when some output is not finite.
int wsk_tv_combine(double *const *d, const double *w, size_t inputs, const double *b, size_t n, int elect, int normalize,
                   double lambda, double divisor, double *out, int64_t *dropped);

/// How an input of `wsk_tv_merge` is trimmed: every element, by a rank window, by draws, or by
/// marks.
enum { WSK_KEEP_ALL = 0, WSK_KEEP_WINDOW = 1, WSK_KEEP_DRAWS = 2, WSK_KEEP_BITS = 3 };

/// One input of `wsk_tv_merge`.
typedef struct {
    /// The input's stored elements, of kind `kind`.
    const void *x;
    int kind, rule;
    double weight, scale;
    /// WSK_KEEP_WINDOW: the window at the block's start (advanced).
    wsk_window window;
    /// WSK_KEEP_DRAWS: the draws' key and the keep probability.
    uint64_t key;
    double density;
    /// WSK_KEEP_BITS: the keep marks of the block, bit i % 8 of bits[i / 8] for element i.
    const uint8_t *bits;
    /// How many elements were kept (added to).
    int64_t kept;
} wsk_tv_input;

/// The task-vector merge of a block of n elements from C-order `position`, on stored elements
/// (BF16/F32/F64/F16), in 256-element tiles: each input decoded and trimmed like
/// `wsk_trim_all`/`_window`/`_draws`, then `wsk_tv_combine`, then encoded as `out_kind` to dst:
/// the same operations in the same order as on decoded blocks, so the same bytes. Returns nonzero
/// when the caller must redo the block on decoded values: some output is not finite, a BF16 or
/// F16 result needs the careful encoder, or there are more than 16 inputs.
int wsk_tv_merge(wsk_tv_input *inputs, size_t count, const void *b, int base_kind, size_t n, int64_t position, int elect,
                 int normalize, double lambda, double divisor, int out_kind, void *dst, int64_t *dropped);

/// DELLA's keep probabilities by rank: p[r] = (density − ε) + 2ε·r/(length − 1) for r < length,
/// or density − ε when length is 1.
void wsk_della_probabilities(size_t length, double density, double epsilon, double *p);
/// DELLA's keep decisions for one fibre of `length` task-vector elements δ_i = x[i·stride] −
/// b[i·stride] (stored elements of kinds `kind` and `base_kind`, WSK_BF16 … WSK_F16): with the
/// elements ranked by |δ| ascending (equal keys in index order), element i is kept
/// (keep[i·stride] = 1, else 0) iff the draw u(first + i·stride) < p[its rank] (`p` from
/// `wsk_della_probabilities`). Since p is monotone in the rank, most elements are decided from
/// the range of ranks of their bucket of key bits, without a sort. `scratch` holds 7·length words.
void wsk_della_mask(const void *x, int kind, const void *b, int base_kind, size_t length, size_t stride, uint64_t key,
                    int64_t first, const double *p, uint8_t *keep, uint64_t *scratch);
/// Whether some of the n stored elements of kind `kind` (WSK_BF16 … WSK_F16) is infinite or NaN.
int wsk_encoded_nonfinite(const void *src, size_t n, int kind);
/// keep[i] ≠ 0 as bit `offset + i` of a bitmap (bit j % 8 of byte j / 8); the bitmap's bits
/// before `offset` are kept, those of its last byte after offset + n are cleared.
void wsk_pack_bits(const uint8_t *keep, size_t n, uint8_t *bits, size_t offset);
/// The trimmed task vector from a keep mask: x[i] ← keep[i] ? (x[i] − b[i])·scale : 0; returns
/// how many were kept.
int64_t wsk_trim_mask(double *x, const double *b, size_t n, double scale, const uint8_t *keep);
/// wsk_trim_mask with the marks as bits (bit i % 8 of bits[i / 8]).
int64_t wsk_trim_bits(double *x, const double *b, size_t n, double scale, const uint8_t *bits);
/// DELLA's rescale sums: as wsk_draw_sums, kept over the elements with marks[i] ≠ 0.
void wsk_mark_sums(const void *x, int kind, const void *b, int base_kind, const uint8_t *marks, size_t n, double *total,
                   double *kept);

/// SCE over a block of n elements of decoded inputs x[0 … inputs) and base b, d_k = x_k[i] − b[i]:
///   var[i] = population variance of the d_k (mean = (Σ_k d_k)/inputs first, then
///            Σ_k (d_k − mean)²/inputs; sums from 0, k ascending)                 (_variances)
///   selected: where `window` keeps the bits of var[i] (every element when window is NULL);
///   squares[k] += Σ d_k² over the selected elements (8 lanes folded per 256-element tile),
///   *selected += their count                                                      (_squares)
///   out[i] = b + Σ_k ω_k a_k d_k / max(Σ_k ω_k a_k, 1e-6) with d_k zeroed where not selected,
///            S = Σ_k d_k and a_k = (S ≥ 0 ? d_k > 0 : d_k < 0); returns nonzero when some
///            out[i] is not finite                                                 (_merge)
/// The window is advanced past the block.
void wsk_sce_variances(double *const *x, size_t inputs, const double *b, size_t n, double *var);
void wsk_sce_squares(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, double *squares,
                     int64_t *selected);
int wsk_sce_merge(double *const *x, size_t inputs, const double *b, size_t n, wsk_window *window, const double *weights,
                  double *out);

/// Arcee Fusion. The KL of one row of `length` elements, Σ p log(p/q) with p = softmax(c) + 1e-8
/// and q = softmax(b) + 1e-8 (each softmax with its row's maximum subtracted; every sum in
/// order; `scratch` holds 2·length); *negatives += how many |c − b|·KL are below 0.
double wsk_row_divergence(const double *c, const double *b, size_t length, double *scratch, int64_t *negatives);
/// Over elements first … first + n − 1 of rows of `length` whose KLs are kl[row] (kl NULL: rows
/// of one element, whose KL is exactly 0, NaN when c or b is not finite), imp = |c − b|·KL:
///   keys[i] = imp < 0 ? −imp : +∞ (negative ≠ 0), else NaN (the default NaN) if imp is NaN,
///   else max(imp, 0)                                                                     (_keys)
///   out[i] = b + (c − b)·[imp ≥ threshold]; counts[0] += elements where c ≠ b, counts[1] +=
///   those kept; returns nonzero when some out[i] is not finite                          (_merge)
void wsk_arcee_keys(const double *c, const double *b, size_t n, const double *kl, size_t length, int64_t first,
                    int negative, double *keys);
int wsk_arcee_merge(const double *c, const double *b, size_t n, const double *kl, size_t length, int64_t first,
                    double threshold, double *out, int64_t counts[2]);

/// Instruction-set levels of the kernels. Every level computes the same bits; higher levels hold
/// more lanes per instruction. WSK_SIMD_AVX512 means AVX2 and AVX-512 F, BW, DQ and VL.
enum { WSK_SIMD_BASELINE = 0, WSK_SIMD_AVX2 = 1, WSK_SIMD_AVX512 = 2 };
/// The highest level this CPU runs.
int wsk_best_simd_level(void);
/// The level in use. The first call (or the first kernel call) chooses the best level, capped
/// by the level named in the environment variable WSAMERGE_SIMD when it names one (empty: unset).
int wsk_simd_level(void);
/// Uses `level`, capped at the best level (−1: the best); returns the level now in use.
int wsk_use_simd_level(int level);
/// "baseline", "avx2" or "avx512"; and back (−1 for another name).
const char *wsk_simd_level_name(int level);
int wsk_simd_level_named(const char *name);

/// Starts asynchronous write-back of a file range (Linux `sync_file_range`, which Swift's Glibc
/// module does not export); a no-op elsewhere.
int wsk_start_writeback(int fd, int64_t offset, int64_t count);
/// Turns direct I/O (`O_DIRECT`, which Swift's Glibc module does not export) on or off for `fd`;
/// returns −1 with errno set where that is not possible.
int wsk_set_direct(int fd, int on);

/// What `wsk_cleanup_run` does with a registered path: rename it back to its target (a backup
/// of a replaced file), unlink it, or remove it as a directory; in that order.
enum { WSK_CLEANUP_RESTORE = 0, WSK_CLEANUP_UNLINK = 1, WSK_CLEANUP_RMDIR = 2 };
/// Registers a path to clean up if SIGINT, SIGTERM or SIGHUP arrives; returns its slot (−1 when
/// the table is full). `target` only for WSK_CLEANUP_RESTORE.
int wsk_cleanup_add(int kind, const char *path, const char *target);
/// Forgets a slot (−1 is ignored).
void wsk_cleanup_remove(int slot);
/// Runs every registered action (async-signal-safe).
void wsk_cleanup_run(void);
/// Installs the cleanup handlers for SIGINT, SIGTERM and SIGHUP (unless ignored), which clean up
/// and re-raise, and ignores SIGPIPE and SIGXFSZ so that writes report EPIPE and EFBIG.
void wsk_install_signal_handlers(void);

/// Copies a Fortran-order array (`rank` dimensions `shape`, no unit dimensions needed) of
/// `width`-byte elements from `from` into C order at `to`, in time linear in the element count.
void wsk_fortran_to_c(const void *from, void *to, const int64_t *shape, int rank, int64_t width);

#endif
