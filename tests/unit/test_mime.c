/*
 * test_mime.c - unit tests for templates/mime*.c: address parsing and
 * formatting, encoded-words, header folding, quoted-printable, base64
 * lines, attachments (strict base64 input, media types, names, RFC 2231
 * and RFC 2047 file names, the multipart shapes) and whole messages.
 * Table-driven; the decoders used to check
 * round trips are written here, independent of the code under test.
 *
 * Set MIME_TEST_DUMP=dir to also write the built messages there, for
 * checking with another parser (e.g. Python's email package).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/util.h"
#include "templates/mime.h"

/* ---- helpers ---------------------------------------------------------- */

/* b64_decode - decode base64 text into out; returns the length or -1. */
static int b64_decode(const char *s, size_t n, unsigned char *out)
{
    if (n % 4)
        return -1;
    if (n == 0)
        return 0;
    int k = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (k < 0)
        return -1;
    if (s[n - 1] == '=')
        k--;
    if (s[n - 2] == '=')
        k--;
    return k;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* qp_decode - strict decoder: only upper-case hex, "=" CRLF soft breaks,
 * CRLF hard breaks. Returns a malloc'd string, NULL on a malformed input. */
static char *qp_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=') {
            if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
                i += 2;
                continue;
            }
            if (i + 2 >= n || hexv(s[i + 1]) < 0 || hexv(s[i + 2]) < 0) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hexv(s[i + 1]) << 4 | hexv(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* assert_lines - every line ends in CRLF (no bare CR or LF) and is at most max
 * octets long. The text may end without a CRLF when allow_open. */
static void assert_lines(const char *s, size_t n, size_t max, int allow_open)
{
    size_t line = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            assert_true(i + 1 < n && s[i + 1] == '\n');
            i++;
            line = 0;
        } else {
            assert_true(s[i] != '\n');
            line++;
            if (line > max)
                fail_msg("line longer than %zu near offset %zu", max, i);
        }
    }
    if (!allow_open)
        assert_int_equal(line, 0);
}

/* unfold - remove the CRLFs of folded header lines. */
static char *unfold(const char *s)
{
    char *o = malloc(strlen(s) + 1), *p = o;
    for (; *s; s++) {
        if (s[0] == '\r' && s[1] == '\n' && (s[2] == ' ' || s[2] == '\t')) {
            s++;
            continue;
        }
        *p++ = *s;
    }
    *p = '\0';
    return o;
}

/* ew_decode_all - decode a run of encoded-words separated by folding
 * white space, checking each word: <= 75 chars, decodes alone to valid
 * UTF-8. Returns the concatenated text (malloc'd). */
static char *ew_decode_all(const char *s)
{
    struct buf b;
    buf_init(&b, 0);
    while (*s) {
        while (*s == ' ' || *s == '\r' || *s == '\n')
            s++;
        if (!*s)
            break;
        assert_memory_equal(s, "=?UTF-8?B?", 10);
        const char *e = strstr(s + 10, "?=");
        assert_non_null(e);
        size_t wlen = (size_t)(e + 2 - s);
        assert_true(wlen <= MIME_ENCODED_WORD_MAX);
        unsigned char dec[64];
        int k = b64_decode(s + 10, (size_t)(e - s - 10), dec);
        assert_true(k > 0);
        assert_true(util_utf8_valid((const char *)dec, (size_t)k));
        buf_append(&b, dec, (size_t)k);
        s = e + 2;
    }
    return buf_steal(&b);
}

/* ---- addresses -------------------------------------------------------- */

struct parse_case {
    const char *in;
    size_t n;
    const char *name[4];
    const char *email[4];
};

static const struct parse_case parse_good[] = {
    {"jane@example.com", 1, {NULL}, {"jane@example.com"}},
    {"\"Doe, Jane \\\"JJ\\\"\" <jane@example.com>", 1, {"Doe, Jane \"JJ\""}, {"jane@example.com"}},
    {"Jane <jane@example.com>, bob@example.org", 2, {"Jane", NULL}, {"jane@example.com", "bob@example.org"}},
    {"Undisclosed:;", 0, {NULL}, {NULL}},
    {"Team: a@x.example, B <b@y.example>;, c@z.example", 3, {NULL, "B", NULL},
     {"a@x.example", "b@y.example", "c@z.example"}},
    {"jane@example.com (Jane Doe)", 1, {NULL}, {"jane@example.com"}},
    {"Jane (the (nested) boss) Doe <jane@example.com>", 1, {"Jane Doe"}, {"jane@example.com"}},
    {"Jürgen Müller <j@example.de>", 1, {"Jürgen Müller"}, {"j@example.de"}},
    {"山田 太郎 <taro@例え.jp>", 1, {"山田 太郎"}, {"taro@例え.jp"}},
    {"=?UTF-8?B?SsO8cmdlbg==?= =?UTF-8?Q?_M=C3=BCller?= <j@example.de>", 1, {"Jürgen Müller"}, {"j@example.de"}},
    {"=?ISO-8859-1?Q?J=FCrgen?= <j@example.de>", 1, {"Jürgen"}, {"j@example.de"}},
    {"J. R. Doe <jr@example.com>", 1, {"J. R. Doe"}, {"jr@example.com"}},
    {"<bare@example.com>", 1, {NULL}, {"bare@example.com"}},
    {"\"\" <empty@example.com>", 1, {NULL}, {"empty@example.com"}},
    {"\"john doe\"@example.com", 1, {NULL}, {"\"john doe\"@example.com"}},
    {"  a@b.example ,\tc@d.example  ", 2, {NULL, NULL}, {"a@b.example", "c@d.example"}},
    {"user@[192.0.2.1], x@[IPv6:2001:db8::1]", 2, {NULL, NULL}, {"user@[192.0.2.1]", "x@[IPv6:2001:db8::1]"}},
    {"first.last+tag@sub.example.co.uk", 1, {NULL}, {"first.last+tag@sub.example.co.uk"}},
};

static const char *const parse_bad[] = {
    "",
    "jane.example.com",
    "Jane Doe",
    "Jane <jane.example.com>",
    "Jane <jane@example.com",
    "\"unterminated <a@b.example>",
    "a@b.example (unterminated",
    "a@b.example, ",
    "a@b.example,,c@d.example",
    "a@b.example\r\nBcc: evil@x.example",
    "a@b.example\n",
    "Jane\r <a@b.example>",
    "@example.com",
    "a@",
    "a..b@example.com",
    ".a@example.com",
    "a@example..com",
    "a@-",
    "x@[300.1.1.1]",
    "x@[IPv6:zz::1]",
    "Group: a@b.example",
    "Outer: Inner: a@b.example;;",
    "a@b.example c@d.example",
    "a b@example.com",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com", /* 65 */
    "\xff\xfe <a@b.example>",
    "Jane <\xc3@b.example>",
};

static void test_parse_list_good(void **state)
{
    for (size_t i = 0; i < sizeof(parse_good) / sizeof(parse_good[0]); i++) {
        const struct parse_case *c = &parse_good[i];
        struct mime_addr_list l = {0};
        char err[200] = "";
        int rc = mime_addr_parse_list(c->in, &l, err, sizeof(err));
        if (rc != 0)
            fail_msg("case %zu \"%s\": %s", i, c->in, err);
        assert_int_equal(l.n, c->n);
        for (size_t k = 0; k < c->n; k++) {
            assert_string_equal(l.v[k].email, c->email[k]);
            if (c->name[k])
                assert_string_equal(l.v[k].name ? l.v[k].name : "(null)", c->name[k]);
            else
                assert_null(l.v[k].name);
        }
        mime_addr_list_free(&l);
    }
}

static void test_parse_list_bad(void **state)
{
    for (size_t i = 0; i < sizeof(parse_bad) / sizeof(parse_bad[0]); i++) {
        struct mime_addr_list l = {0};
        char err[200] = "";
        int rc = mime_addr_parse_list(parse_bad[i], &l, err, sizeof(err));
        if (rc != -1)
            fail_msg("case %zu \"%s\" was accepted", i, parse_bad[i]);
        assert_true(err[0] != '\0');
        mime_addr_list_free(&l);
    }
}

static void test_parse_one(void **state)
{
    struct mime_addr a;
    char err[200];
    assert_int_equal(mime_addr_parse_one("\"Doe, Jane\" <jane@example.com>", &a, err, sizeof(err)), 0);
    assert_string_equal(a.name, "Doe, Jane");
    assert_string_equal(a.email, "jane@example.com");
    mime_addr_free(&a);
    mime_addr_free(&a); /* safe twice */

    static const char *const bad[] = {"a@b.example, c@d.example", "G: a@b.example;", "", "a@b.example >"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(mime_addr_parse_one(bad[i], &a, err, sizeof(err)), -1);
        assert_null(a.email);
        assert_null(a.name);
        assert_true(err[0] != '\0');
    }
}

static void test_check_email(void **state)
{
    char local64[80], local65[80], label63[100], label64[100], dom255[300], dom256[300];
    memset(local64, 'a', 64);
    strcpy(local64 + 64, "@example.com");
    memset(local65, 'a', 65);
    strcpy(local65 + 65, "@example.com");
    strcpy(label63, "x@");
    memset(label63 + 2, 'b', 63);
    strcpy(label63 + 65, ".example");
    strcpy(label64, "x@");
    memset(label64 + 2, 'b', 64);
    strcpy(label64 + 66, ".example");
    /* 255 octets: 4 labels of 63 with dots = 255 */
    strcpy(dom255, "x@");
    for (int i = 0; i < 4; i++) {
        memset(dom255 + 2 + i * 64, 'c', 63);
        dom255[2 + i * 64 + 63] = i < 3 ? '.' : '\0';
    }
    assert_int_equal(strlen(dom255), 2 + 255);
    strcpy(dom256, dom255);
    strcat(dom256, "d");
    dom256[2 + 3 * 64] = 'e'; /* keep labels short: replace a dot */
    dom256[2 + 3 * 64 - 1] = '.';

    const struct {
        const char *email;
        int ok;
    } cases[] = {
        {"jane@example.com", 1}, {local64, 1}, {local65, 0}, {label63, 1}, {label64, 0}, {dom255, 1},
        {dom256, 0}, {"\"a b\"@example.com", 1}, {"\"a\\\"b\"@example.com", 1}, {"\"a\"b\"@example.com", 0},
        {"a@[192.0.2.1]", 1}, {"a@[IPv6:::1]", 1}, {"a@[x-tag:stuff]", 1}, {"a@[1.2.3]", 0},
        {"ünï@ëxample.com", 1}, {"a@b", 1}, {"a", 0}, {"a@b@c", 0}, {"", 0}, {NULL, 0},
        {"a b@example.com", 0}, {"a@exa mple.com", 0}, {"a@exa!mple.com", 0}, {"a@-x.example", 0}, {"a@x-.example", 0}, {"a@x-y.example", 1}, {"a\r@example.com", 0}, {"a@example.com\n", 0},
        {"a@example.com.", 0}, {"(c)a@example.com", 0}, {"a\xc0\x80@example.com", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[200] = "";
        int rc = mime_addr_check_email(cases[i].email, err, sizeof(err));
        if ((rc == 0) != cases[i].ok)
            fail_msg("case %zu \"%s\": rc %d (%s)", i, cases[i].email ? cases[i].email : "(null)", rc, err);
        if (rc < 0)
            assert_true(err[0] != '\0');
    }
}

static void test_addr_set(void **state)
{
    struct mime_addr a;
    char err[200];
    assert_int_equal(mime_addr_set(&a, "jane@example.com", "Doe, Jane \"JJ\"", err, sizeof(err)), 0);
    assert_string_equal(a.name, "Doe, Jane \"JJ\"");
    mime_addr_free(&a);
    assert_int_equal(mime_addr_set(&a, "jane@example.com", "", err, sizeof(err)), 0);
    assert_null(a.name);
    mime_addr_free(&a);
    assert_int_equal(mime_addr_set(&a, "jane@example.com", "Jane\r\nBcc: x@y", err, sizeof(err)), -1);
    assert_int_equal(mime_addr_set(&a, "Jane <jane@example.com>", NULL, err, sizeof(err)), -1);
    assert_int_equal(mime_addr_set(&a, "jane@example.com", "\xe2\x82", err, sizeof(err)), -1);
    assert_null(a.email);
}

/* Formatting: exact output where it matters, then a round trip through
 * our own parser for each name. */
static void test_format_addr(void **state)
{
    const struct {
        const char *name, *email, *want; /* want NULL: only round trip */
    } cases[] = {
        {"Doe, Jane \"JJ\"", "jane@example.com", "\"Doe, Jane \\\"JJ\\\"\" <jane@example.com>"},
        {"Jane", "jane@example.com", "Jane <jane@example.com>"},
        {"Jane Q Public", "jane@example.com", "Jane Q Public <jane@example.com>"},
        {NULL, "jane@example.com", "jane@example.com"},
        {"J. Doe", "j@example.com", "\"J. Doe\" <j@example.com>"},
        {"back\\slash", "b@example.com", "\"back\\\\slash\" <b@example.com>"},
        {"Jürgen", "j@example.de", "=?UTF-8?B?SsO8cmdlbg==?= <j@example.de>"},
        {"=?UTF-8?B?SsO8cmdlbg==?=", "j@example.de", NULL},
        {"two  spaces", "t@example.com", "\"two  spaces\" <t@example.com>"},
        {" lead", "t@example.com", NULL},
        {"Søren Kierkegaard, Philosopher", "s@example.dk", NULL},
        {"山田太郎山田太郎山田太郎山田太郎山田太郎", "t@example.jp", NULL},
        {"A very long display name with many words that must be folded somewhere along the way, really",
         "long@example.com", NULL},
        {"tab\there", "t@example.com", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mime_addr a;
        char err[200];
        assert_int_equal(mime_addr_set(&a, cases[i].email, cases[i].name, err, sizeof(err)), 0);
        struct buf b;
        buf_init(&b, 4096);
        size_t col = 4;
        assert_int_equal(mime_format_addr(&a, &b, &col), 0);
        if (cases[i].want)
            assert_string_equal(b.data, cases[i].want);
        assert_lines(b.data, b.len, MIME_LINE_SOFT, 1);
        char *flat = unfold(b.data);
        struct mime_addr back;
        if (mime_addr_parse_one(flat, &back, err, sizeof(err)) != 0)
            fail_msg("case %zu: cannot parse back \"%s\": %s", i, flat, err);
        assert_string_equal(back.email, cases[i].email);
        if (cases[i].name)
            assert_string_equal(back.name, cases[i].name);
        else
            assert_null(back.name);
        mime_addr_free(&back);
        free(flat);
        buf_free(&b);
        mime_addr_free(&a);
    }
}

/* ---- encoded-words and headers ---------------------------------------- */

static void test_encode_words(void **state)
{
    char emoji_cjk[1024] = "";
    static const char *const pieces[] = {"😀", "漢", "字", "🎉", "テ", "ス", "ト", "👍"};
    for (int i = 0; i < 80; i++)
        strcat(emoji_cjk, pieces[i % 8]);
    const char *cases[] = {emoji_cjk, "é", "Grüße aus Köln und viele weitere Wörter, damit es lang wird",
                           "a", "\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98"
                                "\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f"
                                "\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t start = 0; start < 70; start += 23) {
            struct buf b;
            buf_init(&b, 8192);
            size_t col = start;
            assert_int_equal(mime_encode_words(cases[i], strlen(cases[i]), &b, &col), 0);
            /* the first line starts at column start */
            size_t first = strcspn(b.data, "\r");
            assert_true(start + first <= MIME_LINE_SOFT || first == 0);
            assert_lines(b.data, b.len, MIME_LINE_SOFT, 1);
            char *dec = ew_decode_all(b.data);
            assert_string_equal(dec, cases[i]);
            free(dec);
            buf_free(&b);
        }
    }
}

static void test_header(void **state)
{
    const struct {
        const char *name, *value;
        int ok, encoded;
    } cases[] = {
        {"Subject", "Hello", 1, 0},
        {"Subject", "", 1, 0},
        {"X-Long", "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                   "fifteen sixteen seventeen eighteen nineteen twenty", 1, 0},
        {"X-Tabs", "a\tb  c   d", 1, 0},
        {"Subject", "Café", 1, 1},
        {"Subject", "looks like =?UTF-8?B?QQ==?= a word", 1, 1},
        {"Subject", "bell\x07", 1, 1},
        {"Subject", "a\r\nBcc: x@y.example", 0, 0},
        {"Subject", "a\nb", 0, 0},
        {"Bad Name", "v", 0, 0},
        {"Bad:Name", "v", 0, 0},
        {"", "v", 0, 0},
        {"X-Ä", "v", 0, 0},
        {"Subject", "\xc3", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 8192);
        int rc = mime_header(&b, cases[i].name, cases[i].value);
        if ((rc == 0) != cases[i].ok)
            fail_msg("case %zu: rc %d", i, rc);
        if (rc < 0) {
            assert_int_equal(b.len, 0);
            buf_free(&b);
            continue;
        }
        assert_lines(b.data, b.len, MIME_LINE_SOFT, 0);
        char *flat = unfold(b.data);
        size_t nl = strlen(cases[i].name);
        assert_memory_equal(flat, cases[i].name, nl);
        assert_int_equal(flat[nl], ':');
        flat[strlen(flat) - 2] = '\0';
        const char *v = flat + nl + 1 + (*cases[i].value ? 1 : 0);
        if (cases[i].encoded) {
            char *dec = ew_decode_all(v);
            assert_string_equal(dec, cases[i].value);
            free(dec);
        } else {
            assert_string_equal(v, cases[i].value);
        }
        free(flat);
        buf_free(&b);
    }

    /* An unbreakable ASCII run too long for one line goes as encoded-words. */
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = '\0';
    struct buf b;
    buf_init(&b, 8192);
    assert_int_equal(mime_header(&b, "Subject", big), 0);
    assert_lines(b.data, b.len, MIME_LINE_SOFT, 0);
    b.data[b.len - 2] = '\0';
    char *dec = ew_decode_all(b.data + 9);
    assert_string_equal(dec, big);
    free(dec);

    /* A full buffer leaves it unchanged. */
    struct buf small;
    buf_init(&small, 20);
    assert_int_equal(mime_header(&small, "Subject", "this will not fit in twenty"), -1);
    assert_int_equal(small.len, 0);
    buf_free(&small);
    buf_free(&b);
}

/* ---- bodies ----------------------------------------------------------- */

/* normalize_eol - LF, CR and CRLF all become CRLF (what QP must preserve). */
static char *normalize_eol(const char *s)
{
    struct buf b;
    buf_init(&b, 0);
    for (; *s; s++) {
        if (*s == '\r' || *s == '\n') {
            if (s[0] == '\r' && s[1] == '\n')
                s++;
            buf_puts(&b, "\r\n");
        } else {
            buf_putc(&b, *s);
        }
    }
    return buf_steal(&b);
}

static void test_qp(void **state)
{
    char longline[5100];
    for (int i = 0; i < 5000; i++)
        longline[i] = "<div class=\"a\">x</div>"[i % 22];
    longline[5000] = '\0';
    char exact76[80];
    memset(exact76, 'q', 76);
    exact76[76] = '\0';
    char eq_edge[80];
    memset(eq_edge, 'q', 74);
    strcpy(eq_edge + 74, "=é");
    const struct {
        const char *in, *want; /* want NULL: round trip only */
    } cases[] = {
        {"a=b", "a=3Db"},
        {"trailing space \nnext", "trailing space=20\r\nnext"},
        {"tab\t", "tab=09"},
        {"héllo", "h=C3=A9llo"},
        {"mid space ok", "mid space ok"},
        {"cr\rlf\ncrlf\r\nend\r\n", "cr\r\nlf\r\ncrlf\r\nend\r\n"},
        {"", ""},
        {exact76, exact76},
        {longline, NULL},
        {eq_edge, NULL},
        {"    \n  \n", "   =20\r\n =20\r\n"},
        {"From the start\n.dot", "From the start\r\n.dot"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 1 << 20);
        assert_int_equal(mime_qp_encode(cases[i].in, strlen(cases[i].in), &b), 0);
        const char *out = b.data ? b.data : "";
        if (cases[i].want)
            assert_string_equal(out, cases[i].want);
        assert_lines(out, b.len, MIME_QP_LINE, 1);
        /* no white space before a line end, soft or hard */
        for (size_t k = 1; k < b.len; k++)
            if (out[k] == '\r')
                assert_true(out[k - 1] != ' ' && out[k - 1] != '\t');
        for (size_t k = 0; k < b.len; k++)
            assert_true((unsigned char)out[k] < 0x80);
        char *dec = qp_decode(out, b.len);
        assert_non_null(dec);
        char *want = normalize_eol(cases[i].in);
        assert_string_equal(dec, want);
        free(want);
        free(dec);
        buf_free(&b);
    }
}

static void test_base64_lines(void **state)
{
    unsigned char data[1000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 7 + 3);
    const size_t lens[] = {0, 1, 2, 3, 56, 57, 58, 114, 1000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct buf b;
        buf_init(&b, 8192);
        assert_int_equal(mime_base64_lines(data, lens[i], &b), 0);
        const char *s = b.data ? b.data : "";
        assert_lines(s, b.len, 76, 0);
        unsigned char dec[1100];
        size_t got = 0;
        for (const char *p = s; *p;) {
            size_t n = strcspn(p, "\r");
            if (p[n] && n < 76)
                assert_true(p[n + 2] == '\0'); /* only the last line is short */
            int k = b64_decode(p, n, dec + got);
            assert_true(k >= 0);
            got += (size_t)k;
            p += n + 2;
        }
        assert_int_equal(got, lens[i]);
        assert_memory_equal(dec, data, lens[i]);
        buf_free(&b);
    }
}

static void test_needs_encoding(void **state)
{
    char l998[1001], l999[1001];
    memset(l998, 'a', 998);
    l998[998] = '\0';
    memset(l999, 'a', 999);
    l999[999] = '\0';
    const struct {
        const char *s;
        int want;
    } cases[] = {
        {"plain\r\ntext\n", 0}, {"", 0}, {l998, 0}, {l999, 1}, {"bare\rcr", 1}, {"end cr\r", 1},
        {"é", 1}, {"ctrl \x01 ok", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(mime_body_needs_encoding(cases[i].s, strlen(cases[i].s)), cases[i].want);
    assert_int_equal(mime_body_needs_encoding("a\0b", 3), 1);
}

/* ---- whole messages --------------------------------------------------- */

static void dump(const char *name, const struct buf *b)
{
    const char *dir = getenv("MIME_TEST_DUMP");
    if (!dir)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(b->data, 1, b->len, f);
        fclose(f);
    }
}

struct msg_fixture {
    struct mime_message m;
    char subject[1024];
    char html[6000];
};

static void fixture_init(struct msg_fixture *fx)
{
    char err[200];
    memset(fx, 0, sizeof(*fx));
    assert_int_equal(mime_addr_set(&fx->m.from, "jane@example.com", "Doe, Jane \"JJ\"", err, sizeof(err)), 0);
    assert_int_equal(mime_addr_parse_list("Bob <bob@example.org>, Jürgen Müller <j@example.de>, "
                                          "carol@example.net, \"Dave, the Dev\" <dave@example.com>",
                                          &fx->m.to, err, sizeof(err)),
                     0);
    assert_int_equal(mime_addr_parse_list("cc@example.com", &fx->m.cc, err, sizeof(err)), 0);
    static const char *const pieces[] = {"😀", "漢", "字", "🎉", "テ", "ス", "ト", "👍"};
    for (int i = 0; i < 80; i++)
        strcat(fx->subject, pieces[i % 8]);
    fx->m.subject = fx->subject;
    strcpy(fx->html, "<html><body>");
    for (int i = 0; i < 5000; i++)
        strcat(fx->html, (i % 11) ? "x" : "=");
    strcat(fx->html, "</body></html>");
    fx->m.text = "Hello Jürgen,\nprice = 5 €  \n";
    fx->m.html = fx->html;
    fx->m.message_id = "0190abc@mailgate.example";
    fx->m.date_ms = 1796029200000LL; /* 2026-11-30T09:00:00Z */
}

static void fixture_free(struct msg_fixture *fx)
{
    mime_addr_free(&fx->m.from);
    mime_addr_list_free(&fx->m.to);
    mime_addr_list_free(&fx->m.cc);
    mime_addr_list_free(&fx->m.reply_to);
}

/* header_pos - offset of "\r\nName:" (or the start), or -1. */
static long header_pos(const char *msg, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(msg, name, n) == 0 && msg[n] == ':')
        return 0;
    char pat[64];
    snprintf(pat, sizeof(pat), "\r\n%s:", name);
    const char *p = strstr(msg, pat);
    const char *end = strstr(msg, "\r\n\r\n");
    return p && p < end ? (long)(p - msg) : -1;
}

static void test_build_multipart(void **state)
{
    struct msg_fixture fx;
    fixture_init(&fx);
    const struct mime_header_field extra[] = {{"X-Campaign", "q4"}, {"List-Id", "<news.example.com>"}};
    fx.m.headers = extra;
    fx.m.nheaders = 2;
    struct buf b;
    buf_init(&b, 1 << 20);
    char err[200];
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), 0);
    dump("multipart.eml", &b);
    assert_lines(b.data, b.len, MIME_LINE_HARD, 0);

    /* header lines within 78, order as documented */
    const char *end = strstr(b.data, "\r\n\r\n");
    assert_non_null(end);
    assert_lines(b.data, (size_t)(end - b.data) + 2, MIME_LINE_SOFT, 0);
    const char *order[] = {"From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "X-Campaign",
                           "List-Id", "Content-Type"};
    long last = -1;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        long p = header_pos(b.data, order[i]);
        if (p <= last)
            fail_msg("%s out of order", order[i]);
        last = p;
    }
    assert_int_equal(header_pos(b.data, "Reply-To"), -1);
    assert_null(strstr(b.data, "Bcc"));
    assert_non_null(strstr(b.data, "From: \"Doe, Jane \\\"JJ\\\"\" <jane@example.com>\r\n"));
    assert_non_null(strstr(b.data, "\r\nDate: Mon, 30 Nov 2026 09:00:00 +0000\r\n"));
    assert_non_null(strstr(b.data, "\r\nMessage-ID: <0190abc@mailgate.example>\r\n"));

    /* subject decodes back exactly */
    const char *s = strstr(b.data, "\r\nSubject: ") + 11;
    const char *se = strstr(s, "\r\nDate:");
    char *subj = strndup(s, (size_t)(se - s));
    char *dec = ew_decode_all(subj);
    assert_string_equal(dec, fx.subject);
    free(dec);
    free(subj);

    /* multipart/alternative, text/plain first, both QP, closing delimiter */
    const char *bd = strstr(b.data, "boundary=\"");
    assert_non_null(bd);
    bd += 10;
    char boundary[100];
    size_t bl = strcspn(bd, "\"");
    assert_true(bl >= 24 && bl < sizeof(boundary));
    memcpy(boundary, bd, bl);
    boundary[bl] = '\0';
    assert_non_null(strstr(b.data, "Content-Type: multipart/alternative;"));
    char delim[120], close[120];
    snprintf(delim, sizeof(delim), "--%s\r\n", boundary);
    snprintf(close, sizeof(close), "\r\n--%s--\r\n", boundary);
    const char *p1 = strstr(end, delim);
    assert_non_null(p1);
    const char *p2 = strstr(p1 + 1, delim);
    assert_non_null(p2);
    assert_null(strstr(p2 + 1, delim));
    const char *tp = strstr(b.data, "Content-Type: text/plain; charset=UTF-8");
    const char *hp = strstr(b.data, "Content-Type: text/html; charset=UTF-8");
    assert_true(tp && hp && p1 < tp && tp < p2 && p2 < hp);
    assert_string_equal(b.data + b.len - strlen(close), close);

    /* the html part (one 5,000-character line) decodes back exactly */
    const char *body = strstr(hp, "\r\n\r\n") + 4;
    size_t blen = (size_t)(b.data + b.len - strlen(close) - body);
    assert_non_null(strstr(hp, "Content-Transfer-Encoding: quoted-printable\r\n"));
    char *html = qp_decode(body, blen);
    assert_string_equal(html, fx.html);
    free(html);
    /* and the text part, final line end kept */
    const char *tb = strstr(tp, "\r\n\r\n") + 4;
    char *text = qp_decode(tb, (size_t)(p2 - 2 - tb));
    assert_string_equal(text, "Hello Jürgen,\r\nprice = 5 €  \r\n");
    free(text);

    buf_free(&b);
    fixture_free(&fx);
}

static void test_build_single_and_empty(void **state)
{
    struct msg_fixture fx;
    fixture_init(&fx);
    char err[200];
    struct buf b;

    fx.m.html = NULL;
    fx.m.text = "plain ascii\nsecond line";
    fx.m.subject = "Your receipt";
    mime_addr_list_free(&fx.m.to); /* Bcc-only message: no To at all */
    mime_addr_list_free(&fx.m.cc);
    assert_int_equal(mime_addr_parse_list("support@acme.example", &fx.m.reply_to, err, sizeof(err)), 0);
    buf_init(&b, 1 << 20);
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), 0);
    dump("single.eml", &b);
    assert_lines(b.data, b.len, MIME_LINE_HARD, 0);
    assert_int_equal(header_pos(b.data, "To"), -1);
    assert_true(header_pos(b.data, "From") < header_pos(b.data, "Reply-To"));
    assert_true(header_pos(b.data, "Reply-To") < header_pos(b.data, "Subject"));
    assert_non_null(strstr(b.data, "\r\nSubject: Your receipt\r\n"));
    assert_null(strstr(b.data, "multipart"));
    assert_non_null(strstr(b.data, "\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                                   "Content-Transfer-Encoding: 7bit\r\n\r\nplain ascii\r\nsecond line\r\n"));
    buf_free(&b);

    fx.m.text = NULL;
    fx.m.html = "<p>only html</p>";
    buf_init(&b, 1 << 20);
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), 0);
    dump("html.eml", &b);
    assert_non_null(strstr(b.data, "\r\nContent-Type: text/html; charset=UTF-8\r\n"));
    buf_free(&b);

    fx.m.html = NULL;
    fx.m.subject = NULL;
    buf_init(&b, 1 << 20);
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), 0);
    dump("empty.eml", &b);
    assert_int_equal(header_pos(b.data, "Subject"), -1);
    const char *tail = "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";
    assert_string_equal(b.data + b.len - strlen(tail), tail);
    buf_free(&b);
    fixture_free(&fx);
}

static void test_build_refuses(void **state)
{
    const struct {
        const char *name, *value;
    } bad_headers[] = {
        {"X-Evil", "a\r\nBcc: x@y.example"}, {"X-Evil", "a\nb"}, {"X Evil", "v"}, {"X-Evil:", "v"},
        {"", "v"}, {"Bcc", "x@y.example"}, {"subject", "dup"}, {"Content-Type", "text/plain"},
        {"X-Bad-UTF8", "\xc3("},
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        struct msg_fixture fx;
        fixture_init(&fx);
        struct mime_header_field h = {(char *)bad_headers[i].name, (char *)bad_headers[i].value};
        fx.m.headers = &h;
        fx.m.nheaders = 1;
        struct buf b;
        buf_init(&b, 1 << 20);
        char err[200] = "";
        if (mime_build(&fx.m, &b, err, sizeof(err)) != -1)
            fail_msg("header case %zu accepted", i);
        assert_true(err[0] != '\0');
        assert_int_equal(b.len, 0);
        buf_free(&b);
        fixture_free(&fx);
    }

    struct msg_fixture fx;
    fixture_init(&fx);
    struct buf b;
    char err[200];
    buf_init(&b, 1 << 20);
    fx.m.subject = "Hi\r\nBcc: x@y.example";
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    fx.m.subject = "ok";
    fx.m.message_id = "<no@brackets>";
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    fx.m.message_id = "id@host";
    free(fx.m.to.v[0].name);
    fx.m.to.v[0].name = strdup("Bob\r\nBcc: x@y.example"); /* filled by hand, past mime_addr_set */
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    assert_int_equal(b.len, 0);
    buf_free(&b);

    /* too large for the buffer: refused, buffer unchanged */
    free(fx.m.to.v[0].name);
    fx.m.to.v[0].name = NULL;
    buf_init(&b, 2000);
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    assert_string_equal(err, "message too large");
    assert_int_equal(b.len, 0);
    buf_free(&b);
    fixture_free(&fx);
}

/* ---- attachments ---------------------------------------------------------- */

static void test_base64_decode(void **state)
{
    const struct {
        const char *in, *out;
        size_t outlen;
    } good[] = {
        {"", "", 0},
        {"aGVsbG8=", "hello", 5},
        {"aGVsbA==", "hell", 4},
        {"aGVs", "hel", 3},
        {"aGVs\r\nbG8=\r\n", "hello", 5},
        {"aGVs\nbG8=\n", "hello", 5},
        {"AA==", "\0", 1},
        {"/+/+", "\xff\xef\xfe", 3},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        unsigned char *out = NULL;
        size_t n = 99;
        char err[200] = "";
        if (mime_base64_decode(good[i].in, strlen(good[i].in), &out, &n, err, sizeof(err)) != 0)
            fail_msg("good case %zu refused: %s", i, err);
        assert_non_null(out);
        assert_int_equal(n, good[i].outlen);
        assert_memory_equal(out, good[i].out, n);
        free(out);
    }
    const char *const bad[] = {
        "aGVsbG8",   /* length */
        "aGVs bG8=", /* space */
        "aGVsbG8==", /* 9 characters */
        "a===",      /* three pads */
        "====",
        "=AAA",
        "aG=sbG8=",  /* '=' before the end */
        "aGVsbG8*",
        "aGVs-G8_",  /* base64url */
        "aGVsbG8=\t",
        "aGVs\0bG8=",
        "\xc3\xa4GVs",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned char *out = (unsigned char *)"x";
        size_t n = 99;
        char err[200] = "";
        size_t len = i == 10 ? 9 : strlen(bad[i]);
        if (mime_base64_decode(bad[i], len, &out, &n, err, sizeof(err)) != -1)
            fail_msg("bad case %zu accepted", i);
        assert_null(out);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err, "base64"));
    }
    /* large input, wrapped as a mail client would: crosses the decoder's
     * internal chunks, and round-trips with mime_base64_lines */
    size_t big = 300 * 1024 + 1;
    unsigned char *data = malloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (unsigned char)(i * 7 + i / 251);
    struct buf enc;
    buf_init(&enc, 0);
    assert_int_equal(mime_base64_lines(data, big, &enc), 0);
    unsigned char *out;
    size_t n;
    char err[200];
    assert_int_equal(mime_base64_decode(enc.data, enc.len, &out, &n, err, sizeof(err)), 0);
    assert_int_equal(n, big);
    assert_memory_equal(out, data, big);
    free(out);
    buf_free(&enc);
    free(data);
}

static void test_attachment_checks(void **state)
{
    const struct {
        const char *name, *type;
    } types[] = {
        {"r.pdf", "application/pdf"}, {"R.PDF", "application/pdf"}, {"a.b.png", "image/png"},
        {"x.jpg", "image/jpeg"}, {"x.jpeg", "image/jpeg"}, {"x.gif", "image/gif"}, {"x.webp", "image/webp"},
        {"x.svg", "image/svg+xml"}, {"x.txt", "text/plain"}, {"x.csv", "text/csv"}, {"x.htm", "text/html"},
        {"x.ics", "text/calendar"}, {"x.json", "application/json"}, {"x.xml", "application/xml"},
        {"x.zip", "application/zip"}, {"x.gz", "application/gzip"}, {"x.doc", "application/msword"},
        {"x.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
        {"x.pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
        {"noext", "application/octet-stream"}, {"x.", "application/octet-stream"},
        {".pdf", "application/pdf"}, {"x.unknown", "application/octet-stream"}, {"pdf", "application/octet-stream"},
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        assert_string_equal(mime_type_for_filename(types[i].name), types[i].type);

    assert_true(mime_content_type_valid("application/pdf"));
    assert_true(mime_content_type_valid("application/vnd.ms-excel"));
    assert_true(mime_content_type_valid("image/svg+xml"));
    assert_true(mime_content_type_valid("X-Custom/x.y_z"));
    const char *const bad_types[] = {"pdf", "/pdf", "application/", "text/plain; charset=utf-8", "text/ plain",
                                     "text/plain\r\nBcc: x", "a/b/c", "text/pl\"ain", "multipart/mixed",
                                     "message/rfc822", "", "t\xc3\xa9xt/plain"};
    for (size_t i = 0; i < sizeof(bad_types) / sizeof(bad_types[0]); i++)
        if (mime_content_type_valid(bad_types[i]))
            fail_msg("content type %zu accepted", i);

    assert_true(mime_filename_valid("r.pdf"));
    assert_true(mime_filename_valid("Größe \"q\" \\ x.pdf"));
    const char *const bad_names[] = {"", "a\r\nb", "a\nb", "a\tb", "a\x7f", "\xc3(", NULL};
    for (size_t i = 0; bad_names[i]; i++)
        assert_false(mime_filename_valid(bad_names[i]));
    assert_false(mime_filename_valid(NULL));
    char longname[MIME_FILENAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_false(mime_filename_valid(longname));
    longname[MIME_FILENAME_MAX] = '\0';
    assert_true(mime_filename_valid(longname));

    assert_true(mime_content_id_valid("logo"));
    assert_true(mime_content_id_valid("logo.png@acme.example"));
    assert_true(mime_content_id_valid("a+b=c@x"));
    const char *const bad_ids[] = {"", "a b", "<a>", "a@b@c", "a..b", ".a", "a@", "@b", "a>\r\nX: y", "a\"b", NULL};
    for (size_t i = 0; bad_ids[i]; i++)
        if (mime_content_id_valid(bad_ids[i]))
            fail_msg("content id %zu accepted", i);

    struct mime_attachment a;
    const char *which = NULL;
    char err[200];
    assert_int_equal(mime_attachment_set(&a, "r.pdf", NULL, "aGVsbG8=", 8, "<logo@x>", &which, err, sizeof(err)), 0);
    assert_string_equal(a.filename, "r.pdf");
    assert_null(a.content_type);
    assert_string_equal(a.content_id, "logo@x");
    assert_int_equal(a.len, 5);
    assert_memory_equal(a.data, "hello", 5);
    mime_attachment_free(&a);
    mime_attachment_free(&a); /* zeroed: safe */
    mime_attachment_free(NULL);
    const struct {
        const char *fn, *ct, *b64, *cid, *which;
    } bad[] = {
        {"a\nb", NULL, "aGVsbG8=", NULL, "filename"},
        {"a", "nope", "aGVsbG8=", NULL, "content_type"},
        {"a", NULL, "aGVsbG8", NULL, "content"},
        {"a", NULL, "aGVsbG8=", "a b", "content_id"},
        {"a", NULL, "aGVsbG8=", "<>", "content_id"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (mime_attachment_set(&a, bad[i].fn, bad[i].ct, bad[i].b64, strlen(bad[i].b64), bad[i].cid, &which, err,
                                sizeof(err)) != -1)
            fail_msg("attachment case %zu accepted", i);
        assert_string_equal(which, bad[i].which);
        assert_true(err[0] != '\0');
        assert_null(a.filename);
        assert_null(a.data);
    }
}

/* content_types - the Content-Type values of msg in order, joined by ",". */
static void content_types(const char *msg, char *out, size_t outlen)
{
    out[0] = '\0';
    for (const char *p = msg; (p = strstr(p, "Content-Type: ")) != NULL; p += 14) {
        size_t n = strcspn(p + 14, ";\r");
        size_t used = strlen(out);
        snprintf(out + used, outlen - used, "%s%.*s", used ? "," : "", (int)n, p + 14);
    }
}

/* rfc2231_value - the decoded value of param (param*= or param*0*=, ...)
 * in the header block at s; malloc'd, NULL when absent. */
static char *rfc2231_value(const char *s, const char *param)
{
    char *u = unfold(s);
    struct buf b;
    buf_init(&b, 0);
    char key[64];
    int segs = 0;
    for (int seg = -1;; seg++) {
        if (seg < 0)
            snprintf(key, sizeof(key), " %s*=utf-8''", param);
        else
            snprintf(key, sizeof(key), " %s*%d*=%s", param, seg, seg ? "" : "utf-8''");
        const char *p = strstr(u, key);
        if (!p) {
            if (seg < 0)
                continue;
            break;
        }
        for (p += strlen(key); *p && *p != ';' && *p != '\r'; p++) {
            if (*p == '%') {
                char hx[3] = {p[1], p[2], 0};
                buf_putc(&b, (char)strtol(hx, NULL, 16));
                p += 2;
            } else {
                buf_putc(&b, *p);
            }
        }
        segs++;
        if (seg < 0)
            break;
    }
    free(u);
    if (!segs) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

static void test_build_attachments(void **state)
{
    static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0x0d, 'I', 'H', 'D', 'R'};
    unsigned char pdf[5000];
    for (size_t i = 0; i < sizeof(pdf); i++)
        pdf[i] = (unsigned char)(i * 31);
    char emoji_name[MIME_FILENAME_MAX + 1] = "";
    for (int i = 0; i < 62; i++)
        strcat(emoji_name, "📄");
    strcat(emoji_name, ".pdf"); /* 252 octets: 16 RFC 2231 segments */
    struct mime_attachment inl = {"logo.png", NULL, (unsigned char *)png, sizeof(png), "logo@acme.example"};
    struct mime_attachment doc = {"Größe – 2026.pdf", "application/pdf", pdf, sizeof(pdf), NULL};
    struct mime_attachment longdoc = {emoji_name, NULL, pdf, 100, NULL};
    struct mime_attachment empty = {"empty.txt", NULL, NULL, 0, NULL};
    struct mime_attachment quoted = {"a \"b\" \\c.csv", NULL, (unsigned char *)"x", 1, NULL};

    const struct {
        const char *name;
        int text, html;
        struct mime_attachment atts[5];
        size_t n;
        const char *want;
    } shapes[] = {
        {"inline-html.eml", 0, 1, {inl}, 1, "multipart/related,text/html,image/png"},
        {"inline-both.eml", 1, 1, {inl}, 1,
         "multipart/related,multipart/alternative,text/plain,text/html,image/png"},
        {"pdf-text.eml", 1, 0, {doc}, 1, "multipart/mixed,text/plain,application/pdf"},
        {"inline-text.eml", 1, 0, {inl}, 1, "multipart/mixed,text/plain,image/png"},
        {"all.eml", 1, 1, {doc, inl, longdoc, empty, quoted}, 5,
         "multipart/mixed,multipart/related,multipart/alternative,text/plain,text/html,image/png,"
         "application/pdf,application/pdf,text/plain,text/csv"},
    };
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        struct msg_fixture fx;
        fixture_init(&fx);
        if (!shapes[si].text)
            fx.m.text = NULL;
        if (!shapes[si].html)
            fx.m.html = NULL;
        fx.m.attachments = shapes[si].atts;
        fx.m.nattachments = shapes[si].n;
        struct buf b;
        buf_init(&b, 1 << 20);
        char err[200] = "";
        if (mime_build(&fx.m, &b, err, sizeof(err)) != 0)
            fail_msg("%s: %s", shapes[si].name, err);
        dump(shapes[si].name, &b);
        assert_lines(b.data, b.len, MIME_LINE_HARD, 0);
        char got[400];
        content_types(b.data, got, sizeof(got));
        if (strcmp(got, shapes[si].want) != 0)
            fail_msg("%s: structure %s, want %s", shapes[si].name, got, shapes[si].want);
        /* every part header line within 78 */
        for (const char *p = b.data; (p = strstr(p, "\r\nContent-")) != NULL; p += 2) {
            const char *e = strstr(p + 2, "\r\n\r\n");
            assert_lines(p + 2, (size_t)(e - p), MIME_LINE_SOFT, 1);
        }
        if (shapes[si].text && shapes[si].html && strstr(shapes[si].want, "related"))
            assert_non_null(strstr(b.data, "multipart/related;\r\n type=\"multipart/alternative\";"));
        /* each attachment: its headers, and base64 that decodes back */
        for (size_t k = 0; k < shapes[si].n; k++) {
            const struct mime_attachment *a = &shapes[si].atts[k];
            const char *h;
            if (a->content_id) {
                h = strstr(b.data, "Content-ID: <logo@acme.example>\r\n");
                assert_non_null(h);
                h = strstr(b.data, "Content-Type: image/png;\r\n name=\"logo.png\"\r\n"
                                   "Content-Disposition: inline;\r\n filename=\"logo.png\"\r\n");
                if (!shapes[si].html) /* no html: it still says inline, in mixed */
                    assert_non_null(h);
            } else if (a == &shapes[si].atts[k] && a->filename == empty.filename) {
                h = strstr(b.data, "filename=\"empty.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n--");
                assert_non_null(h);
                continue;
            } else if (a->filename == quoted.filename) {
                assert_non_null(strstr(b.data, " name=\"a \\\"b\\\" \\\\c.csv\"\r\n"));
                continue;
            } else {
                char *v = rfc2231_value(b.data + (strstr(b.data, a->filename == doc.filename ? "%C3%B6" : "%F0%9F") -
                                                  b.data) - 40, "filename");
                assert_non_null(v);
                assert_string_equal(v, a->filename);
                free(v);
                h = strstr(b.data, a->filename == doc.filename ? "Content-Type: application/pdf;\r\n name=\"=?UTF-8?B?"
                                                               : "Content-Type: application/pdf;\r\n name=\"=?UTF-8?B?8J");
                assert_non_null(h);
                const char *q = h + strlen("Content-Type: application/pdf;\r\n name=\"");
                const char *qe = strstr(q, "\"\r\n");
                char *words = strndup(q, (size_t)(qe - q));
                char *dec = ew_decode_all(words);
                assert_string_equal(dec, a->filename);
                free(dec);
                free(words);
            }
            const char *body = strstr(h, "\r\n\r\n") + 4;
            const char *end = strstr(body, "\r\n--");
            char *b64 = strndup(body, (size_t)(end - body));
            assert_lines(b64, strlen(b64), 76, 1);
            unsigned char *dec;
            size_t n;
            assert_int_equal(mime_base64_decode(b64, strlen(b64), &dec, &n, err, sizeof(err)), 0);
            assert_int_equal(n, a->len);
            assert_memory_equal(dec, a->data, n);
            free(dec);
            free(b64);
        }
        buf_free(&b);
        fixture_free(&fx);
    }

    /* refused: bad attachments filled by hand, too many, too large */
    struct msg_fixture fx;
    fixture_init(&fx);
    struct buf b;
    char err[200];
    buf_init(&b, 1 << 20);
    struct mime_attachment bad = {"a\r\nb", NULL, NULL, 0, NULL};
    fx.m.attachments = &bad;
    fx.m.nattachments = 1;
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    bad.filename = "ok";
    bad.content_type = "text/plain; x=y";
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    bad.content_type = NULL;
    bad.content_id = "x>";
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    bad.content_id = NULL;
    bad.len = 3; /* no data */
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    fx.m.nattachments = MIME_ATTACH_MAX + 1;
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    assert_int_equal(b.len, 0);
    buf_free(&b);
    fx.m.nattachments = 0;
    buf_init(&b, 1 << 20);
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), 0);
    size_t plain = b.len;
    buf_free(&b);
    fx.m.attachments = &doc;
    fx.m.nattachments = 1;
    buf_init(&b, plain + 2000); /* the bodies fit, the attachment does not */
    assert_int_equal(mime_build(&fx.m, &b, err, sizeof(err)), -1);
    assert_string_equal(err, "message too large");
    assert_int_equal(b.len, 0);
    buf_free(&b);
    fixture_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_list_good),
        cmocka_unit_test(test_parse_list_bad),
        cmocka_unit_test(test_parse_one),
        cmocka_unit_test(test_check_email),
        cmocka_unit_test(test_addr_set),
        cmocka_unit_test(test_format_addr),
        cmocka_unit_test(test_encode_words),
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_qp),
        cmocka_unit_test(test_base64_lines),
        cmocka_unit_test(test_needs_encoding),
        cmocka_unit_test(test_build_multipart),
        cmocka_unit_test(test_build_single_and_empty),
        cmocka_unit_test(test_build_refuses),
        cmocka_unit_test(test_base64_decode),
        cmocka_unit_test(test_attachment_checks),
        cmocka_unit_test(test_build_attachments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
