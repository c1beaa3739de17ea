/*
 * test_events.c - unit tests for the pure helpers of the event store and
 * the log queries (queue/queue_events.c, queue/queue_evstats.c): cursors
 * (round trip, one spelling per cursor, rejection of anything this API
 * did not make), the filter vocabularies, the stats bucket span and the
 * rates, including their zero denominators.
 *
 * Nothing here talks to Redis; the indexes themselves are tested end to
 * end in tests/e2e/test_events.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "queue/queue.h"

static void cursor_round_trip(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "ev_0190a1b2c3d4e5f60718293a4b5c6d7e8f90", "0190a1b2c3d4e5f60718293a4b5c6d7e", "a", "ab", "abc",
        "A-_z9", "0123456789012345678901234567890123456789012345678901234567890123", /* 64 */
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char cur[QUEUE_CURSOR_MAX], back[80];
        assert_int_equal(queue_cursor_encode('e', keys[i], cur, sizeof(cur)), 0);
        for (const char *p = cur; *p; p++)
            assert_true((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                        *p == '-' || *p == '_');
        assert_int_equal(queue_cursor_decode(cur, 'e', back, sizeof(back)), 0);
        assert_string_equal(back, keys[i]);
        /* a cursor of one list is not accepted by the other */
        assert_int_equal(queue_cursor_decode(cur, 'm', back, sizeof(back)), -1);
    }
}

static void cursor_encode_refuses(void **state)
{
    (void)state;
    char cur[QUEUE_CURSOR_MAX];
    assert_int_equal(queue_cursor_encode('e', "", cur, sizeof(cur)), -1);
    assert_int_equal(queue_cursor_encode('e', "has space", cur, sizeof(cur)), -1);
    assert_int_equal(queue_cursor_encode('e', "(ev_x", cur, sizeof(cur)), -1);
    assert_int_equal(queue_cursor_encode('e', "0123456789012345678901234567890123456789012345678901234567890123x",
                                         cur, sizeof(cur)), -1); /* 65 */
    assert_int_equal(queue_cursor_encode('e', "abc", cur, 4), -1); /* too small */
}

static void cursor_decode_rejects(void **state)
{
    (void)state;
    char key[80], good[QUEUE_CURSOR_MAX];
    assert_int_equal(queue_cursor_encode('m', "0190a1b2c3d4", good, sizeof(good)), 0);
    static const char *const bad[] = {
        "", "garbage\xff", "////", "a", "abcde", "e:x", "ZZZZ", "bTo", /* "m:" with no id */
        "bTooZXZfeA==", /* padding is not ours */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(queue_cursor_decode(bad[i], 'm', key, sizeof(key)), -1);
    /* too long */
    char longc[300];
    memset(longc, 'Z', sizeof(longc) - 1);
    longc[sizeof(longc) - 1] = '\0';
    assert_int_equal(queue_cursor_decode(longc, 'm', key, sizeof(key)), -1);
    /* non-zero trailing bits: a second spelling of the same bytes */
    char alt[QUEUE_CURSOR_MAX];
    snprintf(alt, sizeof(alt), "%s", good);
    size_t n = strlen(alt);
    if (n % 4 != 0) {
        alt[n - 1] = alt[n - 1] == 'A' ? 'B' : (char)(alt[n - 1] + 1);
        assert_int_equal(queue_cursor_decode(alt, 'm', key, sizeof(key)), -1);
    }
    /* a valid cursor whose id does not fit the caller's buffer */
    assert_int_equal(queue_cursor_decode(good, 'm', key, 5), -1);
    assert_int_equal(queue_cursor_decode(good, 'm', key, sizeof(key)), 0);
    assert_string_equal(key, "0190a1b2c3d4");
}

static void vocabularies(void **state)
{
    (void)state;
    static const char *const types[] = {"queued", "delivered", "deferred", "bounced", "suppressed",
                                        "cancelled", "opened", "clicked", "unsubscribed"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        assert_true(queue_event_type_ok(types[i]));
    assert_false(queue_event_type_ok("exploded"));
    assert_false(queue_event_type_ok(""));
    assert_false(queue_event_type_ok(NULL));
    assert_false(queue_event_type_ok("Delivered"));
    static const char *const st[] = {"queued",  "scheduled",  "sending",   "delivered", "partially_delivered",
                                     "bounced", "suppressed", "cancelled"};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++)
        assert_true(queue_message_status_ok(st[i]));
    assert_false(queue_message_status_ok("deferred")); /* a recipient status, not a message's */
    assert_false(queue_message_status_ok("weird"));
}

static void stats_span(void **state)
{
    (void)state;
    const int64_t H = 3600000, D = 86400000;
    int64_t start;
    /* whole hours: since rounds down, until up */
    assert_int_equal(queue_stats_span(10 * H + 5, 12 * H, H, &start), 2);
    assert_int_equal(start, 10 * H);
    assert_int_equal(queue_stats_span(10 * H, 12 * H + 1, H, &start), 3);
    assert_int_equal(queue_stats_span(10 * H, 10 * H + 1, H, &start), 1);
    assert_int_equal(queue_stats_span(10 * H, 10 * H, H, &start), 0);
    assert_int_equal(queue_stats_span(10 * H, 9 * H, H, &start), 0);
    /* 7 days not on a day boundary touch 8 days */
    assert_int_equal(queue_stats_span(20000 * D + 5 * H, 20007 * D + 5 * H, D, &start), 8);
    assert_int_equal(start, 20000 * D);
    assert_int_equal(queue_stats_span(20000 * D, 20007 * D, D, &start), 7);
    /* the hourly cap is 31 days */
    assert_true(queue_stats_span(0, 31 * D, H, &start) == QUEUE_STATS_HOURS_MAX);
}

static void stats_rates(void **state)
{
    (void)state;
    struct queue_rates r;
    queue_stats_rates(0, 0, 0, 0, &r);
    assert_true(r.delivery == 0 && r.bounce == 0 && r.open == 0 && r.click == 0 && r.click_to_open == 0);
    queue_stats_rates(3, 1, 2, 1, &r);
    assert_true(r.delivery == 0.75);
    assert_true(r.bounce == 0.25);
    assert_true(r.open == 0.6667);  /* 2/3, 4 decimals */
    assert_true(r.click == 0.3333);
    assert_true(r.click_to_open == 0.5);
    queue_stats_rates(0, 5, 0, 0, &r); /* all bounced */
    assert_true(r.delivery == 0 && r.bounce == 1 && r.open == 0);
    queue_stats_rates(10, 0, 0, 3, &r); /* clicks without a counted open */
    assert_true(r.click == 0.3 && r.click_to_open == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cursor_round_trip), cmocka_unit_test(cursor_encode_refuses),
        cmocka_unit_test(cursor_decode_rejects), cmocka_unit_test(vocabularies),
        cmocka_unit_test(stats_span), cmocka_unit_test(stats_rates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
