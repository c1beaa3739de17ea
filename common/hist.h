/*
 * hist.h - lock-free latency histograms with fixed buckets, written out in
 * the Prometheus text format (0.0.4).
 *
 * A histogram is a static object: its bucket bounds are a constant array
 * the caller owns (in microseconds, ascending), its counters are atomics.
 * Observing is one relaxed atomic add per counter touched (the bucket and
 * the sum): no lock, no allocation, safe from any thread. A reader takes a
 * snapshot bucket by bucket, so a scrape that races observations may see
 * one of them in the buckets but not yet in the sum; _count is always
 * derived from the buckets it printed, so it equals the +Inf bucket.
 *
 * Limits: at most HIST_BUCKETS_MAX finite bounds; values are whole
 * microseconds (a sum overflows after some 584,000 years of latency).
 */
#ifndef MG_HIST_H
#define MG_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define HIST_BUCKETS_MAX 24 /* finite bounds of one histogram; +Inf comes on top */

struct hist {
    const uint64_t *bounds_us;                      /* borrowed, ascending, nbounds of them */
    size_t nbounds;                                 /* <= HIST_BUCKETS_MAX */
    atomic_uint_least64_t bucket[HIST_BUCKETS_MAX + 1]; /* per bucket, not cumulative;
                                                           [nbounds] counts values above the last bound */
    atomic_uint_least64_t sum_us;                   /* sum of every value observed */
};

/* HIST_INIT - a static initializer over a constant array of bounds. */
#define HIST_INIT(bounds) {.bounds_us = (bounds), .nbounds = sizeof(bounds) / sizeof((bounds)[0])}

/* A consistent-enough copy of a histogram, for printing and tests. */
struct hist_snap {
    uint64_t cumulative[HIST_BUCKETS_MAX + 1]; /* [i] = values <= bound i; [nbounds] = all */
    size_t nbounds;
    uint64_t count;                            /* == cumulative[nbounds] */
    uint64_t sum_us;
};

/* hist_clock_us - monotonic clock in microseconds, for measuring spans. */
uint64_t hist_clock_us(void);

/* hist_observe_us - count one value (microseconds) into the first bucket
 * whose bound is >= it (Prometheus "le" semantics). Lock-free. */
void hist_observe_us(struct hist *h, uint64_t us);

/* hist_observe_since - hist_observe_us(h, now - start_us), where start_us
 * came from hist_clock_us; a start in the future counts as 0. */
void hist_observe_since(struct hist *h, uint64_t start_us);

/* hist_snapshot - copy h's counters into *out, cumulatively. */
void hist_snapshot(const struct hist *h, struct hist_snap *out);

/* hist_write - append h as a Prometheus histogram named name (HELP and
 * TYPE lines, name_bucket{le=...} for every bound and +Inf, name_sum in
 * seconds, name_count). labels, when not NULL or "", is label text put
 * before le (e.g. "relay=\"r1\"") and on _sum and _count. help NULL leaves
 * out the HELP and TYPE lines, for the second and later series of one
 * labelled family. Returns 0, or -1 when out is full. */
int hist_write(const struct hist *h, const char *name, const char *help, const char *labels, struct buf *out);

#endif
