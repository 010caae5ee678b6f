#include <string.h>
#include "kernels.h"

/* C order walks the last axis fastest; in Fortran order its stride is the product of the other
 * dimensions. An odometer over the indices keeps the source offset up to date with one add per
 * step (and one subtract per wrap), so the cost is linear in the element count, whatever the
 * rank. */
void wsk_fortran_to_c(const void *from, void *to, const int64_t *shape, int rank, int64_t width) {
    const unsigned char *src = from;
    unsigned char *dst = to;
    int64_t count = 1;
    for (int k = 0; k < rank; k++) count *= shape[k];
    if (count == 0) return;
    if (rank <= 1) { memcpy(dst, src, (size_t)(count * width)); return; }
    int64_t strides[64], index[64];
    strides[0] = width;
    for (int k = 1; k < rank; k++) strides[k] = strides[k - 1] * shape[k - 1];
    for (int k = 0; k < rank; k++) index[k] = 0;
    const int last = rank - 1;
    const int64_t inner = shape[last], step = strides[last];
    int64_t source = 0;
    for (int64_t done = 0; done < count; done += inner) {
        int64_t s = source;
        if (width == 4) {
            for (int64_t i = 0; i < inner; i++, s += step, dst += 4) memcpy(dst, src + s, 4);
        } else if (width == 2) {
            for (int64_t i = 0; i < inner; i++, s += step, dst += 2) memcpy(dst, src + s, 2);
        } else if (width == 8) {
            for (int64_t i = 0; i < inner; i++, s += step, dst += 8) memcpy(dst, src + s, 8);
        } else {
            for (int64_t i = 0; i < inner; i++, s += step, dst += width) memcpy(dst, src + s, (size_t)width);
        }
        for (int k = last - 1; k >= 0; k--) {
            if (++index[k] < shape[k]) { source += strides[k]; break; }
            source -= (shape[k] - 1) * strides[k];
            index[k] = 0;
        }
    }
}
