/*
 * merge.c - writes that only fill gaps (tismet.h, tsm_merge_archive).
 *
 * `tismet import-whisper --merge` copies old whisper files into a database
 * that carbon is already writing.  There a file's point must never replace
 * what the live writer stored: it lands only in a slot that is empty or that
 * holds an older interval (which the point's interval would replace in
 * whisper too).  The filter reads the archive's stored slots, keeps the
 * points that qualify and hands them to tsm_series_write_archive, all under
 * one write lock, so no live write can slip in between.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int64_t floor_mod64(int64_t a, int64_t b)
{
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

/* Keep the points whose slot is empty or older; *kept receives how many,
 * written in place at the front of `pts` (pairs of doubles). */
static int filter(struct tsm_db *db, const tsm_metric *m, unsigned archive, double *pts,
                  size_t n, size_t *kept)
{
    const tsm_archive *a = &m->arch[archive];
    double *stored = NULL;
    size_t nstored = 0;
    int rc = tsm_series_read_archive(db, m, archive, &stored, &nstored);
    if (rc)
        return rc;
    int64_t *have = malloc((size_t)a->points * sizeof *have);
    if (!have) {
        free(stored);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    for (uint32_t s = 0; s < a->points; s++)
        have[s] = -1;
    int64_t step = a->seconds_per_point;
    for (size_t i = 0; i < nstored; i++) {
        int64_t iv = (int64_t)stored[2 * i];
        have[(iv / step) % a->points] = iv;
    }
    free(stored);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t t = (int64_t)pts[2 * i];
        int64_t iv = t - floor_mod64(t, step);
        if (have[(iv / step) % a->points] >= iv)
            continue;      /* the slot holds this interval or a newer one */
        pts[2 * k] = pts[2 * i];
        pts[2 * k + 1] = pts[2 * i + 1];
        k++;
    }
    free(have);
    *kept = k;
    return TSM_OK;
}

static int check_points(const double *pts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double t = pts[2 * i], v = pts[2 * i + 1];
        if (!isfinite(v) || !(t >= 0 && t <= 4294967294.0))
            return tsm_fail(TSM_EBADPOINT, 0, "", -1,
                            "point %zu (%g, %g): NaN/infinite value or timestamp outside "
                            "0..2^32-2", i, t, v);
    }
    return TSM_OK;
}

int tsm_merge_archive(tsm_db *db, const char *name, size_t len, unsigned archive,
                      const void *points, size_t npoints, size_t *written)
{
    *written = 0;
    if (npoints > TSM_MAX_POINTS)
        return tsm_fail(TSM_ETOOBIG, 0, "", -1, "at most %d points per call", TSM_MAX_POINTS);
    double *pts = malloc((npoints ? npoints : 1) * 2 * sizeof *pts);
    if (!pts)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    memcpy(pts, points, npoints * 2 * sizeof *pts);
    int rc = check_points(pts, npoints);
    if (rc) {
        free(pts);
        return rc;
    }
    if ((rc = tsm_db_lock_write(db))) {
        free(pts);
        return rc;
    }
    tsm_metric *m;
    size_t kept = 0;
    rc = tsm_db_lookup(db, name, len, &m);
    if (!rc && archive >= m->narch)
        rc = tsm_fail(TSM_EINVAL, 0, "", -1, "metric has no archive %u", archive);
    if (!rc)
        rc = filter(db, m, archive, pts, npoints, &kept);
    if (!rc && kept)
        rc = tsm_series_write_archive(db, m, archive, pts, kept);
    rc = tsm_db_finish_write(db, rc);
    tsm_db_unlock(db);
    free(pts);
    if (!rc)
        *written = kept;
    return rc;
}
