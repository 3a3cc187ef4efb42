/* Exact dense linear assignment (Jonker-Volgenant) for float and double cost matrices; see jv_impl.h.
 * Built on first use by immiscible/native.py and called through ctypes, which releases the GIL. */
#include <float.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#define JV_THREAD omp_get_thread_num()
#define JV_THREADS omp_get_num_threads()
#define JV_PROCS omp_get_num_procs()
#else
#define JV_THREAD 0
#define JV_THREADS 1
#define JV_PROCS 1
#endif

static double jv_now(void) {  /* seconds, monotonic: the auction's stats say where its time goes */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define JV_BIG (DBL_MAX / 4)   /* "infinity" that stays finite, so -ffinite-math-only holds */
#define JV_ARR_STEPS 8         /* augmenting-row-reduction retries per pass, times n */
#define JV_MAX_THREADS 64      /* most threads of a split scan (more are capped, and so are more than the cores) */
#define JV_SCAN_MIN_N 2048     /* a scan split over threads from this many columns on (break-even on 2 cores) */
#define JV_AUCTION_BIDS 64     /* most bids of one auction phase, times n (CIFAR-10 batches need about 2) */

typedef struct {       /* one thread's result of one scan in a split scan (jv_impl.h, augment_threads) */
    long seq;          /* the scan it belongs to; written last (release), read first (acquire) */
    double m;          /* the thread's block's minimal distance */
    int col, free_col; /* the block's first column at it, and whether that column is unassigned */
    char pad[40];      /* one cache line per slot */
} jv_slot;

static void jv_wait(const long *flag, long value) {  /* spin until *flag == value, yielding the core after a few
                                                        microseconds (a busy host: the awaited thread may be descheduled) */
    for (long k = 1; __atomic_load_n(flag, __ATOMIC_ACQUIRE) != value; k++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if ((k & 63) == 0) sched_yield();
    }
}

#define JV_CAT(a, b) a##_##b
#define JV_CAT2(a, b) JV_CAT(a, b)
#define JV_NAME(f) JV_CAT2(f, JV_COST)

#define JV_COST float
#include "jv_impl.h"
#undef JV_COST

#define JV_COST double
#include "jv_impl.h"
#undef JV_COST
