/*
 * hist.c - lock-free fixed-bucket histograms (see hist.h).
 *
 * Bucket search is linear: a histogram has a couple of dozen bounds at
 * most and the common values sit in the first few, so a scan beats a
 * binary search's branches. Counters use relaxed ordering: each is an
 * independent tally, and nothing is published through them.
 */
#include "common/hist.h"

#include <time.h>

uint64_t hist_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void hist_observe_us(struct hist *h, uint64_t us)
{
    size_t n = h->nbounds < HIST_BUCKETS_MAX ? h->nbounds : HIST_BUCKETS_MAX;
    size_t i = 0;
    while (i < n && us > h->bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

void hist_observe_since(struct hist *h, uint64_t start_us)
{
    uint64_t now = hist_clock_us();
    hist_observe_us(h, now > start_us ? now - start_us : 0);
}

void hist_snapshot(const struct hist *h, struct hist_snap *out)
{
    size_t n = h->nbounds < HIST_BUCKETS_MAX ? h->nbounds : HIST_BUCKETS_MAX;
    uint64_t run = 0;
    out->nbounds = n;
    for (size_t i = 0; i <= n; i++) {
        /* the cast drops const only to read: C17's atomic_load takes a
         * non-const pointer on some libcs */
        run += atomic_load_explicit((atomic_uint_least64_t *)&h->bucket[i], memory_order_relaxed);
        out->cumulative[i] = run;
    }
    out->count = run;
    out->sum_us = atomic_load_explicit((atomic_uint_least64_t *)&h->sum_us, memory_order_relaxed);
}

int hist_write(const struct hist *h, const char *name, const char *help, const char *labels, struct buf *out)
{
    struct hist_snap s;
    hist_snapshot(h, &s);
    const char *sep = labels && *labels ? "," : "";
    const char *lab = labels ? labels : "";
    int rc = 0;
    if (help)
        rc |= buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i < s.nbounds; i++)
        rc |= buf_printf(out, "%s_bucket{%s%sle=\"%.6g\"} %llu\n", name, lab, sep,
                         (double)h->bounds_us[i] / 1e6, (unsigned long long)s.cumulative[i]);
    rc |= buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, lab, sep, (unsigned long long)s.count);
    if (*lab) {
        rc |= buf_printf(out, "%s_sum{%s} %.6f\n", name, lab, (double)s.sum_us / 1e6);
        rc |= buf_printf(out, "%s_count{%s} %llu\n", name, lab, (unsigned long long)s.count);
    } else {
        rc |= buf_printf(out, "%s_sum %.6f\n", name, (double)s.sum_us / 1e6);
        rc |= buf_printf(out, "%s_count %llu\n", name, (unsigned long long)s.count);
    }
    return rc ? -1 : 0;
}
