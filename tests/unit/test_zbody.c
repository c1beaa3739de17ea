/*
 * test_zbody.c - unit tests for common/zbody.c: stored bodies are packed
 * only when that pays, unpack to exactly the original bytes, and a
 * damaged or oversized packed body is refused rather than half-read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/zbody.h"

/* mail_text - n bytes of a plausible rendered message (headers, then
 * varied words), deterministic. */
static char *mail_text(size_t n)
{
    static const char *const words[] = {"order", "receipt", "shipped", "total", "thank", "you",
                                        "account", "password", "reset", "link", "expires", "in",
                                        "hours", "questions", "reply", "support", "item", "qty"};
    char *s = malloc(n + 1);
    size_t o = (size_t)snprintf(s, n + 1, "From: shop@example.com\r\nTo: ann@example.org\r\n"
                                          "Subject: Your receipt\r\n\r\n");
    unsigned x = 12345;
    while (o < n) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % (sizeof(words) / sizeof(*words))];
        for (; *w && o < n; w++)
            s[o++] = *w;
        if (o < n)
            s[o++] = (x >> 8) % 11 == 0 ? '\n' : ' ';
    }
    s[n] = '\0';
    return s;
}

static void test_round_trip(void **state)
{
    (void)state;
    static const size_t sizes[] = {ZBODY_MIN + 1, 2227, 65536, 3 * 1024 * 1024};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(*sizes); k++) {
        char *text = mail_text(sizes[k]);
        struct buf z, back;
        buf_init(&z, 0);
        buf_init(&back, 0);
        assert_int_equal(zbody_pack(text, sizes[k], &z), 1);
        assert_true(z.len < sizes[k] - sizes[k] / 8);
        assert_true(zbody_packed(z.data, z.len));
        assert_int_equal(zbody_unpack(z.data, z.len, sizes[k], &back), 1);
        assert_int_equal(back.len, sizes[k]);
        assert_memory_equal(back.data, text, sizes[k]);
        assert_int_equal(back.data[back.len], '\0');
        /* the same thread's streams are reused: a second body is right too */
        assert_int_equal(zbody_pack(text, sizes[k] - 1, &z), 1);
        assert_int_equal(zbody_unpack(z.data, z.len, sizes[k], &back), 1);
        assert_int_equal(back.len, sizes[k] - 1);
        assert_memory_equal(back.data, text, sizes[k] - 1);
        buf_free(&z);
        buf_free(&back);
        free(text);
    }
}

static void test_not_packed_when_it_does_not_pay(void **state)
{
    (void)state;
    struct buf z;
    buf_init(&z, 0);
    char *small = mail_text(ZBODY_MIN - 1);
    assert_int_equal(zbody_pack(small, strlen(small), &z), 0);
    assert_int_equal(z.len, 0);
    free(small);
    /* noise does not shrink by an eighth */
    unsigned char noise[4096];
    unsigned x = 7;
    for (size_t i = 0; i < sizeof(noise); i++) {
        x = x * 1664525u + 1013904223u;
        noise[i] = (unsigned char)(x >> 24);
    }
    assert_int_equal(zbody_pack((const char *)noise, sizeof(noise), &z), 0);
    assert_int_equal(z.len, 0);
    buf_free(&z);
}

static void test_plain_bodies_are_left_alone(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 0);
    const char *plain = "From: a@example.com\r\n\r\nhello\r\n";
    assert_int_equal(zbody_packed(plain, strlen(plain)), 0);
    assert_int_equal(zbody_unpack(plain, strlen(plain), 1000, &out), 0);
    assert_int_equal(zbody_unpack("\0MZ", 3, 1000, &out), 0); /* not even the magic */
    assert_null(out.data);
    buf_free(&out);
}

static void test_damage_is_refused(void **state)
{
    (void)state;
    char *text = mail_text(8000);
    struct buf z, out;
    buf_init(&z, 0);
    buf_init(&out, 0);
    assert_int_equal(zbody_pack(text, 8000, &z), 1);
    /* over the caller's limit */
    assert_int_equal(zbody_unpack(z.data, z.len, 7999, &out), -1);
    /* cut short */
    assert_int_equal(zbody_unpack(z.data, z.len - 10, 8000, &out), -1);
    /* a recorded length that does not match what the stream holds */
    char *bad = malloc(z.len);
    memcpy(bad, z.data, z.len);
    bad[7] = (char)(bad[7] + 1);
    assert_int_equal(zbody_unpack(bad, z.len, 100000, &out), -1);
    bad[7] = (char)(bad[7] - 2);
    assert_int_equal(zbody_unpack(bad, z.len, 100000, &out), -1);
    /* the magic with nothing (or no data) after it, and an empty body */
    assert_int_equal(zbody_unpack(z.data, 4, 100000, &out), -1);
    assert_int_equal(zbody_unpack(z.data, 6, 100000, &out), -1);
    assert_int_equal(zbody_unpack(z.data, ZBODY_HEADER, 100000, &out), -1);
    static const char empty[] = {0, 'M', 'Z', '1', 0, 0, 0, 0, 3, 0}; /* raw DEFLATE of "" */
    assert_int_equal(zbody_unpack(empty, sizeof(empty), 100000, &out), -1);
    /* garbage after the header */
    memcpy(bad, z.data, z.len);
    memset(bad + ZBODY_HEADER, 0xff, z.len - ZBODY_HEADER);
    assert_int_equal(zbody_unpack(bad, z.len, 100000, &out), -1);
    /* and the streams still work afterwards */
    assert_int_equal(zbody_unpack(z.data, z.len, 8000, &out), 1);
    assert_memory_equal(out.data, text, 8000);
    free(bad);
    free(text);
    buf_free(&z);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_not_packed_when_it_does_not_pay),
        cmocka_unit_test(test_plain_bodies_are_left_alone),
        cmocka_unit_test(test_damage_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
