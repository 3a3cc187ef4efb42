/* One precision of the dense Jonker-Volgenant solver; jv.c includes this file once per cost type.
 *
 * Jonker & Volgenant (1987), "A shortest augmenting path algorithm for dense and sparse linear assignment
 * problems": column reduction, reduction transfer, two passes of augmenting row reduction, then one shortest
 * augmenting path (Dijkstra on reduced costs) per row still free. Only column prices v are stored; a row's
 * price is implicit, u_i = min_j (C_ij - v_j), and every assigned pair attains it (complementary slackness),
 * so the result is an optimal permutation.
 *
 * Written for the compiler's auto-vectorizer: every loop over the n columns of a row is a branch-free map
 * or a min-reduction over contiguous arrays (no index lists), so with -O3 -march=native each pass runs 8
 * (double) or 16 (float) columns per instruction on AVX-512. The cost matrix may be float or double; prices
 * and distances are always double. Costs must be finite and below JV_BIG in magnitude (the caller checks).
 */

static void JV_NAME(row_min2)(const JV_COST *restrict c, const double *restrict v, int n, double *restrict h,
                              double *m1, int *j1, double *m2, int *j2) {
    /* h = c - v; its minimum m1 (first at j1) and the minimum m2 over the other columns (at j2, found only on
       a tie m1 == m2, the one case where the caller needs it). */
    double a = JV_BIG, b = JV_BIG;
    for (int j = 0; j < n; j++) { double t = c[j] - v[j]; h[j] = t; a = t < a ? t : a; }
    int ja = n, jb = n;
    for (int j = 0; j < n; j++) { int k = h[j] == a ? j : n; ja = k < ja ? k : ja; }
    for (int j = 0; j < n; j++) { double t = j == ja ? JV_BIG : h[j]; b = t < b ? t : b; }
    if (b == a)
        for (int j = 0; j < n; j++) { int k = (h[j] == b && j != ja) ? j : n; jb = k < jb ? k : jb; }
    *m1 = a; *j1 = ja; *m2 = b; *j2 = jb < n ? jb : -1;
}

/* Step 4's pieces, on the columns [lo, hi) of a scan (all of them with one thread, a block with several): */
static inline double JV_NAME(path_start)(const JV_COST *restrict c, const double *restrict v, double *restrict dist,
                                         int *restrict pred, int fr, int lo, int hi) {
    /* a path from free row fr: dist = C_fr - v, every column reached from fr; returns the minimum */
    double m = JV_BIG;
    for (int j = lo; j < hi; j++) { double d = c[j] - v[j]; dist[j] = d; pred[j] = fr; m = d < m ? d : m; }
    return m;
}

static inline int JV_NAME(first_at)(const double *restrict dist, double m, int lo, int hi) {
    /* the first column at distance m (hi if none) */
    int k1 = hi;
    for (int j = lo; j < hi; j++) { int k = dist[j] == m ? j : hi; k1 = k < k1 ? k : k1; }
    return k1;
}

static inline double JV_NAME(relax)(const JV_COST *restrict ci, const double *restrict v, double *restrict dist,
                                    int *restrict pred, int i, double hh, int lo, int hi) {
    /* relax through row i (hh: its reduced cost's offset), and the next minimum in the same pass; a scanned column
       holds dist = -JV_BIG, so no relaxation touches it and the minimum skips it */
    double m = JV_BIG;
    for (int j = lo; j < hi; j++) {
        double d = ci[j] - v[j] - hh, dj = dist[j];
        int lt = d < dj;
        dj = lt ? d : dj;
        dist[j] = dj; pred[j] = lt ? i : pred[j];
        double w = dj == -JV_BIG ? JV_BIG : dj;
        m = w < m ? w : m;
    }
    return m;
}

static inline void JV_NAME(path_end)(int *x, int *y, double *v, const int *pred, const int *ready,
                                     const double *ready_dist, int nready, double mn, int end, int fr) {
    /* keep slackness on the scanned columns, then flip the path back to the free row */
    for (int k = 0; k < nready; k++) v[ready[k]] += ready_dist[k] - mn;
    for (;;) {
        int i = pred[end], jn = x[i];
        y[end] = i; x[i] = end;
        if (i == fr) break;
        end = jn;
    }
}

static void JV_NAME(augment)(int n, const JV_COST *C, int *x, int *y, double *v, const int *free_rows, int nfree,
                            int *ready, int *pred, double *dist, double *ready_dist) {
    /* 4. Shortest augmenting path from each free row. dist_j is the path length to column j; a scanned column
          gets dist_j = -JV_BIG (so that no later relaxation touches it) and its length goes to ready_dist.
          Exact from any state in which every assigned row's column attains min_j (C_ij - v_j). */
    for (int f = 0; f < nfree; f++) {
        int fr = free_rows[f], nready = 0, end;
        double mn = JV_NAME(path_start)(C + (size_t)fr * n, v, dist, pred, fr, 0, n);
        for (;;) {
            int j1 = JV_NAME(first_at)(dist, mn, 0, n);  /* the first unscanned column at the minimal distance */
            if (y[j1] < 0) { end = j1; break; }
            dist[j1] = -JV_BIG; ready_dist[nready] = mn; ready[nready++] = j1;
            int i = y[j1];
            const JV_COST *ci = C + (size_t)i * n;
            mn = JV_NAME(relax)(ci, v, dist, pred, i, ci[j1] - v[j1] - mn, 0, n);
        }
        JV_NAME(path_end)(x, y, v, pred, ready, ready_dist, nready, mn, end, fr);
    }
}

static void JV_NAME(augment_threads)(int n, const JV_COST *C, int *x, int *y, double *v, const int *free_rows,
                                     int nfree, int *ready, int *pred, double *dist, double *ready_dist, int threads) {
    /* Step 4 with every scan split over `threads` threads (OpenMP): each thread owns a contiguous block of columns,
       relaxes it, and publishes its block's minimum, the first column attaining it and whether that column is free;
       every thread then combines the published triples in block order, which gives the first column at the overall
       minimum. So the arithmetic and every choice are augment's: the same result, bit for bit, on any number of
       threads. A scan costs one exchange of flags (jv_slot, double-buffered: a thread may publish the next scan
       while another still reads this one), not an OpenMP barrier, which costs more than a scan of a few thousand
       columns. Thread 0 updates the prices and flips each path while the others wait. */
    jv_slot slot[2][JV_MAX_THREADS] __attribute__((aligned(64)));
    long path_done = 0;
    for (int u = 0; u < JV_MAX_THREADS; u++) slot[0][u].seq = slot[1][u].seq = 0;
    #pragma omp parallel num_threads(threads)
    {
        const int t = JV_THREAD, nt = JV_THREADS;
        const int lo = (int)((long)n * t / nt), hi = (int)((long)n * (t + 1) / nt);
        long scan = 0;  /* scans published so far: the same count on every thread */
        for (int f = 0; f < nfree; f++) {
            if (t != 0) jv_wait(&path_done, f);  /* thread 0 has flipped the previous path */
            int fr = free_rows[f], nready = 0, end, j1 = n;
            double m = JV_NAME(path_start)(C + (size_t)fr * n, v, dist, pred, fr, lo, hi), mn = JV_BIG;
            for (;;) {
                int k1 = JV_NAME(first_at)(dist, m, lo, hi);  /* the block's first column at its minimum */
                jv_slot *mine = &slot[++scan & 1][t];
                mine->m = m; mine->col = k1; mine->free_col = k1 < hi && y[k1] < 0;
                __atomic_store_n(&mine->seq, scan, __ATOMIC_RELEASE);
                int j1_free = 0;
                mn = JV_BIG; j1 = n;
                for (int u = 0; u < nt; u++) {
                    jv_slot *other = &slot[scan & 1][u];
                    jv_wait(&other->seq, scan);
                    if (other->m < mn) { mn = other->m; j1 = other->col; j1_free = other->free_col; }
                }
                if (j1_free) { end = j1; break; }
                if (t == 0) { ready_dist[nready] = mn; ready[nready] = j1; }
                nready++;
                if (j1 >= lo && j1 < hi) dist[j1] = -JV_BIG;
                int i = y[j1];
                const JV_COST *ci = C + (size_t)i * n;
                m = JV_NAME(relax)(ci, v, dist, pred, i, ci[j1] - v[j1] - mn, lo, hi);
            }
            if (t == 0) {  /* the others published their last scan (so their pred) and now wait for path_done */
                JV_NAME(path_end)(x, y, v, pred, ready, ready_dist, nready, mn, end, fr);
                __atomic_store_n(&path_done, (long)f + 1, __ATOMIC_RELEASE);
            }
        }
    }
}

static void JV_NAME(augment_on)(int n, const JV_COST *C, int *x, int *y, double *v, const int *free_rows, int nfree,
                                int *ready, int *pred, double *dist, double *ready_dist, int threads) {
    /* augment, on `threads` threads from JV_SCAN_MIN_N columns on (below that a scan is too short to split), at most
       one per core (a spinning thread without a core of its own would stall every scan) */
    if (threads > JV_PROCS) threads = JV_PROCS;
    if (threads > JV_MAX_THREADS) threads = JV_MAX_THREADS;
    if (threads > 1 && n >= JV_SCAN_MIN_N)
        JV_NAME(augment_threads)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist, threads);
    else
        JV_NAME(augment)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist);
}

int JV_NAME(jv_solve)(int n, const JV_COST *C, int *x, int *y, double *v, int arr_passes, int threads) {
    /* Optimal assignment of the n x n row-major matrix C: row i gets column x[i], column j row y[j]; v gets the
       column prices. arr_passes: passes of step 3 (2 in the paper; 0 sends every free row to step 4, which
       the tests use to check step 4 on its own). Returns 0, or -1 when memory runs out. */
    int *free_rows = malloc(sizeof(int) * n), *matches = calloc(n, sizeof(int)), *ready = malloc(sizeof(int) * n);
    int *pred = malloc(sizeof(int) * n), *colarg = malloc(sizeof(int) * n);
    double *dist = malloc(sizeof(double) * n), *h = malloc(sizeof(double) * n);
    double *ready_dist = malloc(sizeof(double) * n);
    int ok = free_rows && matches && ready && pred && colarg && dist && h && ready_dist;
    if (!ok) goto done;

    /* 1. Column reduction: v_j = min_i C_ij (one row-wise pass); each row takes at most one of its minimal columns. */
    for (int j = 0; j < n; j++) { v[j] = JV_BIG; colarg[j] = 0; y[j] = -1; }
    for (int i = 0; i < n; i++) {
        const JV_COST *c = C + (size_t)i * n;
        x[i] = -1;
        for (int j = 0; j < n; j++) { int lt = c[j] < v[j]; v[j] = lt ? c[j] : v[j]; colarg[j] = lt ? i : colarg[j]; }
    }
    for (int j = n - 1; j >= 0; j--) {
        int i = colarg[j];
        if (++matches[i] == 1) { x[i] = j; y[j] = i; }
        else if (v[j] < v[x[i]]) { y[x[i]] = -1; x[i] = j; y[j] = i; }
    }
    /* 2. Reduction transfer: a row matched once lowers its column's price by its second-best reduced cost. */
    int nfree = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] < 0) { free_rows[nfree++] = i; continue; }
        if (matches[i] != 1) continue;
        int j1 = x[i];
        const JV_COST *c = C + (size_t)i * n;
        double m = JV_BIG;
        for (int j = 0; j < n; j++) { double t = j == j1 ? JV_BIG : c[j] - v[j]; m = t < m ? t : m; }
        v[j1] -= m;
    }
    /* 3. Augmenting row reduction, arr_passes (2) passes: a free row takes its best column, lowering that
          column's price to make the row's best and second-best reduced costs equal, and evicts the column's row.
          An evicted row is retried at once while prices strictly drop, at most JV_ARR_STEPS * n times per pass
          (on costs where most columns share one minimal row, the raw L2 image-noise matrix, it could bounce for
          long); the rest goes to step 4, which is exact from any state that keeps the slackness above. */
    for (int pass = 0; pass < arr_passes && nfree > 0; pass++) {
        int k = 0, prev = nfree;
        long steps = 0;
        nfree = 0;
        while (k < prev) {
            int i = free_rows[k++], j1, j2;
            double umin, usub;
            JV_NAME(row_min2)(C + (size_t)i * n, v, n, h, &umin, &j1, &usub, &j2);
            int i0 = y[j1];
            if (umin < usub) v[j1] -= usub - umin;
            else if (i0 >= 0) { j1 = j2; i0 = y[j2]; }
            x[i] = j1; y[j1] = i;
            if (i0 >= 0) {
                x[i0] = -1;
                if (umin < usub && ++steps < JV_ARR_STEPS * (long)n) free_rows[--k] = i0;
                else free_rows[nfree++] = i0;
            }
        }
    }
    JV_NAME(augment_on)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist, threads);
done:
    free(free_rows); free(matches); free(ready); free(pred); free(colarg); free(dist); free(h); free(ready_dist);
    return ok ? 0 : -1;
}

int JV_NAME(jv_finish)(int n, const JV_COST *C, int *x, int *y, double *v, int threads) {
    /* Warm start: x (row -> column or -1), y (column -> row or -1) and the column prices v come from elsewhere (the
       GPU auction's duals); every assigned row must attain its row minimum of C_ij - v_j (the caller checks it in
       the same double arithmetic). Step 4 then assigns the free rows optimally. Returns 0, or -1 without memory. */
    int *free_rows = malloc(sizeof(int) * n), *ready = malloc(sizeof(int) * n), *pred = malloc(sizeof(int) * n);
    double *dist = malloc(sizeof(double) * n), *ready_dist = malloc(sizeof(double) * n);
    int ok = free_rows && ready && pred && dist && ready_dist, nfree = 0;
    if (ok) {
        for (int i = 0; i < n; i++) if (x[i] < 0) free_rows[nfree++] = i;
        JV_NAME(augment_on)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist, threads);
    }
    free(free_rows); free(ready); free(pred); free(dist); free(ready_dist);
    return ok ? 0 : -1;
}

static int JV_NAME(best2)(const JV_COST *restrict c, const double *restrict p, int n, double *restrict h,
                          double *a_out, double *b_out) {
    /* The smallest h_j = c_j + p_j (first at the returned column) and the smallest over the other columns, in three
       branch-free passes that the compiler vectorizes (one pass with the index in its loop-carried chain does not). */
    double a = JV_BIG, b = JV_BIG;
    for (int j = 0; j < n; j++) { double t = c[j] + p[j]; h[j] = t; a = t < a ? t : a; }
    int ja = n;
    for (int j = 0; j < n; j++) { int k = h[j] == a ? j : n; ja = k < ja ? k : ja; }
    for (int j = 0; j < n; j++) { double t = j == ja ? JV_BIG : h[j]; b = t < b ? t : b; }
    *a_out = a; *b_out = b;
    return ja;
}

int JV_NAME(auction_solve)(int n, const JV_COST *C, int *x, int *y, double *v, double eps_final, double scaling,
                           int stop_free, int threads, int *stats) {
    /* The certified auction on the CPU (the GPU one is immiscible/noise/auction.py): Jacobi rounds of bids with
       epsilon scaling (the first epsilon the row-and-column-reduced matrix's largest entry over `scaling`, the last
       `eps_final` times that entry), each phase stopped once at most `stop_free` rows are free; then every row
       whose column does not attain its row minimum of C_ij - v_j (double) is freed and step 4 assigns the free
       rows optimally from those duals. `threads` 1: Gauss-Seidel bids (one at a time); > 1: Jacobi rounds whose
       bids are computed in parallel (OpenMP, where the library was built with it). stats: bids (threads 1) or
       rounds, phases, rows left by the auction, rows freed, then microseconds of the auction, the certificate
       and the finish. Returns 0, or -1
       without memory. */
    double *p = malloc(sizeof(double) * n), *rowmin = malloc(sizeof(double) * n), *bid = malloc(sizeof(double) * n);
    double *top = malloc(sizeof(double) * n);
    int *free_rows = malloc(sizeof(int) * n), *next_free = malloc(sizeof(int) * n), *target = malloc(sizeof(int) * n);
    int *winner = malloc(sizeof(int) * n), *ready = malloc(sizeof(int) * n), *pred = malloc(sizeof(int) * n);
    double *dist = malloc(sizeof(double) * n), *ready_dist = malloc(sizeof(double) * n);
    double *hbuf = malloc(sizeof(double) * n * (size_t)(threads > 1 ? threads : 1));
    int ok = p && rowmin && bid && top && free_rows && next_free && target && winner && ready && pred && dist
             && ready_dist && hbuf;
    if (!ok) goto done;
    /* reduction: row minima, then the column minima of the row-reduced matrix (their negatives: the first prices) */
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int i = 0; i < n; i++) {
        const JV_COST *c = C + (size_t)i * n;
        double m = JV_BIG;
        for (int j = 0; j < n; j++) { double t = c[j]; m = t < m ? t : m; }
        rowmin[i] = m;
    }
    for (int j = 0; j < n; j++) p[j] = JV_BIG;
    for (int i = 0; i < n; i++) {
        const JV_COST *c = C + (size_t)i * n;
        double r = rowmin[i];
        for (int j = 0; j < n; j++) { double t = c[j] - r; p[j] = t < p[j] ? t : p[j]; }
    }
    double largest = 0.0;
    for (int i = 0; i < n; i++) {
        const JV_COST *c = C + (size_t)i * n;
        double r = rowmin[i], m = 0.0;
        for (int j = 0; j < n; j++) { double t = c[j] - r - p[j]; m = t > m ? t : m; }
        largest = m > largest ? m : largest;
    }
    for (int j = 0; j < n; j++) p[j] = -p[j];  /* C_ij + p_j is the reduced matrix's entry plus a row constant */
    int rounds = 0, phases = 0, nfree = 0;
    double t0 = jv_now();
    for (int i = 0; i < n; i++) x[i] = -1;
    for (int j = 0; j < n; j++) y[j] = -1;
    if (largest > 0.0) {
        double eps = largest / scaling, last = largest * eps_final;
        if (eps < last) eps = last;
        for (;;) {
            phases++;
            for (int i = 0; i < n; i++) { x[i] = -1; free_rows[i] = i; }
            for (int j = 0; j < n; j++) { y[j] = -1; top[j] = -JV_BIG; winner[j] = -1; }
            nfree = n;
            /* A phase ends early after JV_AUCTION_BIDS * n bids: where the prices dwarf epsilon (costs with a huge
               common offset) a bid can stop moving a price; the certificate and step 4 finish exactly anyway. */
            long budget = JV_AUCTION_BIDS * (long)n;
            if (threads <= 1) {  /* Gauss-Seidel: one bid at a time, the evicted row bids next (fewer bids) */
                while (nfree > stop_free && budget-- > 0) {
                    int i = free_rows[--nfree];
                    double a, b;
                    int ja = JV_NAME(best2)(C + (size_t)i * n, p, n, hbuf, &a, &b);
                    rounds++;
                    p[ja] += (b - a) + eps;
                    int old = y[ja];
                    y[ja] = i; x[i] = ja;
                    if (old >= 0) { x[old] = -1; free_rows[nfree++] = old; }
                }
            }
            while (nfree > stop_free && budget > 0) {
                rounds++;
                budget -= nfree;
                #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nfree > 64)
                for (int k = 0; k < nfree; k++) {  /* each free row's bid: its best column, raised by its margin */
                    double a, b;
                    int ja = JV_NAME(best2)(C + (size_t)free_rows[k] * n, p, n, hbuf + (size_t)JV_THREAD * n, &a, &b);
                    target[k] = ja;
                    bid[k] = p[ja] + (b - a) + eps;
                }
                for (int k = 0; k < nfree; k++) {  /* each column's highest bid (the first row on a tie) */
                    int j = target[k];
                    if (bid[k] > top[j]) { top[j] = bid[k]; winner[j] = free_rows[k]; }
                }
                int m = 0;
                for (int k = 0; k < nfree; k++) {
                    int j = target[k], i = free_rows[k];
                    if (winner[j] == i) {
                        int old = y[j];
                        if (old >= 0) { x[old] = -1; next_free[m++] = old; }
                        y[j] = i; x[i] = j; p[j] = top[j];
                    } else {
                        next_free[m++] = i;  /* outbid: bids again */
                    }
                }
                for (int k = 0; k < nfree; k++) { int j = target[k]; top[j] = -JV_BIG; winner[j] = -1; }
                for (int k = 0; k < m; k++) free_rows[k] = next_free[k];
                nfree = m;
            }
            if (eps <= last) break;
            eps /= scaling;
            if (eps < last) eps = last;
        }
    } else {  /* C_ij = a_i + b_j: every permutation costs the same */
        for (int i = 0; i < n; i++) { x[i] = i; y[i] = i; }
    }
    int left = 0;
    for (int i = 0; i < n; i++) left += x[i] < 0;
    double t1 = jv_now();
    /* the certificate: every row's column at its row minimum of C_ij - v_j (v = -p), else the row is freed */
    for (int j = 0; j < n; j++) v[j] = -p[j];
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int i = 0; i < n; i++) {  /* rowmin now holds each row's minimum of C_ij - v_j */
        const JV_COST *c = C + (size_t)i * n;
        double m = JV_BIG;
        for (int j = 0; j < n; j++) { double t = c[j] - v[j]; m = t < m ? t : m; }
        rowmin[i] = m;
    }
    int nf = 0;
    for (int i = 0; i < n; i++) {
        const JV_COST *c = C + (size_t)i * n;
        if (x[i] < 0 || c[x[i]] - v[x[i]] > rowmin[i]) {
            if (x[i] >= 0) { y[x[i]] = -1; x[i] = -1; }
            free_rows[nf++] = i;
        }
    }
    double t2 = jv_now();
    JV_NAME(augment_on)(n, C, x, y, v, free_rows, nf, ready, pred, dist, ready_dist, threads);
    stats[0] = rounds; stats[1] = phases; stats[2] = left; stats[3] = nf;
    stats[4] = (int)(1e6 * (t1 - t0)); stats[5] = (int)(1e6 * (t2 - t1)); stats[6] = (int)(1e6 * (jv_now() - t2));
done:
    free(p); free(rowmin); free(bid); free(top); free(free_rows); free(next_free); free(target); free(winner);
    free(ready); free(pred); free(dist); free(ready_dist); free(hbuf);
    return ok ? 0 : -1;
}
