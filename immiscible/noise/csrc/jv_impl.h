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

static void JV_NAME(augment)(int n, const JV_COST *C, int *x, int *y, double *v, const int *free_rows, int nfree,
                            int *ready, int *pred, double *dist, double *ready_dist) {
    /* 4. Shortest augmenting path from each free row. dist_j is the path length to column j; a scanned column
          gets dist_j = -JV_BIG (so that no later relaxation touches it) and its length goes to ready_dist.
          Exact from any state in which every assigned row's column attains min_j (C_ij - v_j). */
    for (int f = 0; f < nfree; f++) {
        int fr = free_rows[f], nready = 0, end;
        const JV_COST *c = C + (size_t)fr * n;
        double mn = JV_BIG;
        for (int j = 0; j < n; j++) { double t = c[j] - v[j]; dist[j] = t; pred[j] = fr; mn = t < mn ? t : mn; }
        for (;;) {
            int j1 = n;  /* the first unscanned column at the minimal distance */
            for (int j = 0; j < n; j++) { int k = dist[j] == mn ? j : n; j1 = k < j1 ? k : j1; }
            if (y[j1] < 0) { end = j1; break; }
            dist[j1] = -JV_BIG; ready_dist[nready] = mn; ready[nready++] = j1;
            int i = y[j1];
            const JV_COST *ci = C + (size_t)i * n;
            double hh = ci[j1] - v[j1] - mn, m = JV_BIG;
            for (int j = 0; j < n; j++) {  /* relax through row i, and the next minimum in the same pass */
                double t = ci[j] - v[j] - hh, dj = dist[j];
                int lt = t < dj;
                dj = lt ? t : dj;
                dist[j] = dj; pred[j] = lt ? i : pred[j];
                double w = dj == -JV_BIG ? JV_BIG : dj;
                m = w < m ? w : m;
            }
            mn = m;
        }
        for (int k = 0; k < nready; k++) v[ready[k]] += ready_dist[k] - mn;  /* keep slackness on the scanned */
        for (;;) {  /* flip the path back to the free row */
            int i = pred[end], jn = x[i];
            y[end] = i; x[i] = end;
            if (i == fr) break;
            end = jn;
        }
    }
}

int JV_NAME(jv_solve)(int n, const JV_COST *C, int *x, int *y, double *v, int arr_passes) {
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
    JV_NAME(augment)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist);
done:
    free(free_rows); free(matches); free(ready); free(pred); free(colarg); free(dist); free(h); free(ready_dist);
    return ok ? 0 : -1;
}

int JV_NAME(jv_finish)(int n, const JV_COST *C, int *x, int *y, double *v) {
    /* Warm start: x (row -> column or -1), y (column -> row or -1) and the column prices v come from elsewhere (the
       GPU auction's duals); every assigned row must attain its row minimum of C_ij - v_j (the caller checks it in
       the same double arithmetic). Step 4 then assigns the free rows optimally. Returns 0, or -1 without memory. */
    int *free_rows = malloc(sizeof(int) * n), *ready = malloc(sizeof(int) * n), *pred = malloc(sizeof(int) * n);
    double *dist = malloc(sizeof(double) * n), *ready_dist = malloc(sizeof(double) * n);
    int ok = free_rows && ready && pred && dist && ready_dist, nfree = 0;
    if (ok) {
        for (int i = 0; i < n; i++) if (x[i] < 0) free_rows[nfree++] = i;
        JV_NAME(augment)(n, C, x, y, v, free_rows, nfree, ready, pred, dist, ready_dist);
    }
    free(free_rows); free(ready); free(pred); free(dist); free(ready_dist);
    return ok ? 0 : -1;
}
