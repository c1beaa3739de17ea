/*
 * test_hist.c - unit tests for common/hist.c: bucket choice at and around
 * every bound (Prometheus "le" is inclusive), values past the last bound,
 * cumulative snapshots, the sum, exact counts under concurrent observers
 * (no lost updates without a lock), and the exact text hist_write prints,
 * with and without labels.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/hist.h"

static const uint64_t bounds[] = {1000, 5000, 250000, 1000000}; /* 1 ms, 5 ms, 0.25 s, 1 s */

static void buckets_at_bounds(void **state)
{
    (void)state;
    static struct hist h = HIST_INIT(bounds);
    /* value -> expected bucket index (4 = +Inf) */
    static const struct { uint64_t v; size_t b; } cases[] = {
        {0, 0}, {1, 0}, {999, 0}, {1000, 0}, {1001, 1}, {5000, 1}, {5001, 2},
        {250000, 2}, {250001, 3}, {1000000, 3}, {1000001, 4}, {UINT64_C(1) << 40, 4},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hist_snap before, after;
        hist_snapshot(&h, &before);
        hist_observe_us(&h, cases[i].v);
        hist_snapshot(&h, &after);
        for (size_t k = 0; k <= 4; k++)
            assert_int_equal(after.cumulative[k] - before.cumulative[k], k >= cases[i].b ? 1 : 0);
        assert_int_equal(after.count, before.count + 1);
        assert_int_equal(after.sum_us - before.sum_us, cases[i].v);
    }
}

static void snapshot_cumulative(void **state)
{
    (void)state;
    static struct hist h = HIST_INIT(bounds);
    for (int i = 0; i < 3; i++)
        hist_observe_us(&h, 500);     /* <= 1 ms */
    for (int i = 0; i < 2; i++)
        hist_observe_us(&h, 100000);  /* <= 0.25 s */
    hist_observe_us(&h, 2000000);     /* +Inf */
    struct hist_snap s;
    hist_snapshot(&h, &s);
    assert_int_equal(s.nbounds, 4);
    assert_int_equal(s.cumulative[0], 3);
    assert_int_equal(s.cumulative[1], 3);
    assert_int_equal(s.cumulative[2], 5);
    assert_int_equal(s.cumulative[3], 5);
    assert_int_equal(s.cumulative[4], 6);
    assert_int_equal(s.count, 6);
    assert_int_equal(s.sum_us, 3 * 500 + 2 * 100000 + 2000000);
}

#define THREADS 4
#define PER_THREAD 200000

static struct hist shared = HIST_INIT(bounds);

static void *observer(void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    for (int i = 0; i < PER_THREAD; i++)
        hist_observe_us(&shared, v + (uint64_t)(i % 3));
    return NULL;
}

static void concurrent_exact(void **state)
{
    (void)state;
    static const uint64_t vals[THREADS] = {10, 3000, 200000, 5000000};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, observer, (void *)(uintptr_t)vals[i]), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    struct hist_snap s;
    hist_snapshot(&shared, &s);
    assert_int_equal(s.count, (uint64_t)THREADS * PER_THREAD);
    assert_int_equal(s.cumulative[0], PER_THREAD);
    assert_int_equal(s.cumulative[1], 2 * PER_THREAD);
    assert_int_equal(s.cumulative[2], 3 * PER_THREAD);
    assert_int_equal(s.cumulative[3], 3 * PER_THREAD);
    uint64_t want = 0;
    for (int k = 0; k < THREADS; k++)
        for (int i = 0; i < PER_THREAD; i++)
            want += vals[k] + (uint64_t)(i % 3);
    assert_int_equal(s.sum_us, want);
}

static void write_text(void **state)
{
    (void)state;
    static const uint64_t b2[] = {500, 2500000};
    static struct hist h = HIST_INIT(b2);
    hist_observe_us(&h, 400);
    hist_observe_us(&h, 1500000);
    hist_observe_us(&h, 3000000);
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(hist_write(&h, "x_seconds", "A test.", NULL, &out), 0);
    assert_string_equal(out.data,
                        "# HELP x_seconds A test.\n"
                        "# TYPE x_seconds histogram\n"
                        "x_seconds_bucket{le=\"0.0005\"} 1\n"
                        "x_seconds_bucket{le=\"2.5\"} 2\n"
                        "x_seconds_bucket{le=\"+Inf\"} 3\n"
                        "x_seconds_sum 4.500400\n"
                        "x_seconds_count 3\n");
    buf_reset(&out);
    assert_int_equal(hist_write(&h, "x_seconds", NULL, "relay=\"r1\"", &out), 0);
    assert_string_equal(out.data,
                        "x_seconds_bucket{relay=\"r1\",le=\"0.0005\"} 1\n"
                        "x_seconds_bucket{relay=\"r1\",le=\"2.5\"} 2\n"
                        "x_seconds_bucket{relay=\"r1\",le=\"+Inf\"} 3\n"
                        "x_seconds_sum{relay=\"r1\"} 4.500400\n"
                        "x_seconds_count{relay=\"r1\"} 3\n");
    buf_free(&out);
    /* a full buffer is reported */
    struct buf small;
    buf_init(&small, 16);
    assert_int_equal(hist_write(&h, "x_seconds", "A test.", NULL, &small), -1);
    buf_free(&small);
}

static void since_clamps(void **state)
{
    (void)state;
    static struct hist h = HIST_INIT(bounds);
    uint64_t t0 = hist_clock_us();
    assert_true(hist_clock_us() >= t0);
    hist_observe_since(&h, t0 + 60000000u); /* a start in the future counts as 0 */
    struct hist_snap s;
    hist_snapshot(&h, &s);
    assert_int_equal(s.cumulative[0], 1);
    assert_int_equal(s.sum_us, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buckets_at_bounds), cmocka_unit_test(snapshot_cumulative),
        cmocka_unit_test(concurrent_exact),  cmocka_unit_test(write_text),
        cmocka_unit_test(since_clamps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
