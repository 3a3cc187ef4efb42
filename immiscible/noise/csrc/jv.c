/* Exact dense linear assignment (Jonker-Volgenant) for float and double cost matrices; see jv_impl.h.
 * Built on first use by immiscible/native.py and called through ctypes, which releases the GIL. */
#include <float.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#define JV_THREAD omp_get_thread_num()
#else
#define JV_THREAD 0
#endif

static double jv_now(void) {  /* seconds, monotonic: the auction's stats say where its time goes */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define JV_BIG (DBL_MAX / 4)   /* "infinity" that stays finite, so -ffinite-math-only holds */
#define JV_ARR_STEPS 8         /* augmenting-row-reduction retries per pass, times n */
#define JV_AUCTION_BIDS 64     /* most bids of one auction phase, times n (CIFAR-10 batches need about 2) */
#define JV_CAT(a, b) a##_##b
#define JV_CAT2(a, b) JV_CAT(a, b)
#define JV_NAME(f) JV_CAT2(f, JV_COST)

#define JV_COST float
#include "jv_impl.h"
#undef JV_COST

#define JV_COST double
#include "jv_impl.h"
#undef JV_COST
