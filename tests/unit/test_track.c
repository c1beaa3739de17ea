/*
 * test_track.c - unit tests for open and click tracking: the html link
 * rewriting of templates/mime_track.c (a table: entities in queries,
 * parentheses, fragments, a 3,000-character query, quotes of both kinds,
 * upper-case names, unquoted values, mailto:, data-mailgate-notrack,
 * comments and Outlook's conditional comments, script contents, white
 * space a browser strips), character-reference decoding, the open pixel's
 * place, and the tokens of gateway/gw_track.c: sign and verify, every
 * single-character alteration, truncation, another key, malformed input;
 * and the machine heuristics for opens and clicks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/gw.h"
#include "templates/mime.h"

/* ---- link rewriting ----------------------------------------------------- */

/* The callback records the URLs it is given and answers "R<n>". */
struct seen {
    char urls[8][4096];
    int n;
    const char *answer; /* when set, returned instead of R<n> */
};

static int record_cb(void *ctx, const char *url, size_t len, struct buf *out)
{
    struct seen *s = ctx;
    if (s->n < 8) {
        size_t k = len < sizeof(s->urls[0]) - 1 ? len : sizeof(s->urls[0]) - 1;
        memcpy(s->urls[s->n], url, k);
        s->urls[s->n][k] = '\0';
    }
    int rc = s->answer ? buf_puts(out, s->answer) : buf_printf(out, "R%d", s->n);
    s->n++;
    return rc;
}

struct link_case {
    const char *html;
    const char *want;      /* the rewritten html */
    const char *url;       /* the (first) URL the callback must get, or NULL: no call */
};

static const struct link_case link_cases[] = {
    /* &amp; in the query decodes to the real URL */
    {"<a href=\"https://x.example/a?b=1&amp;c=2\">go</a>", "<a href=\"R0\">go</a>", "https://x.example/a?b=1&c=2"},
    /* numeric references, with and without ';' */
    {"<a href=\"https://x.example/?a=1&#38;b=2&#x26;c=3&#61\">", "<a href=\"R0\">", "https://x.example/?a=1&b=2&c=3="},
    /* a legacy name without ';' followed by '=' or a letter stays literal */
    {"<a href=\"https://x.example/?a=1&copy=2&ampx=3\">", "<a href=\"R0\">", "https://x.example/?a=1&copy=2&ampx=3"},
    /* an unknown reference stays as written */
    {"<a href=\"https://x.example/?q=&foo;\">", "<a href=\"R0\">", "https://x.example/?q=&foo;"},
    /* parentheses and fragments survive */
    {"<a href=\"https://en.wikipedia.org/wiki/Mail_(protocol)#History\">w</a>", "<a href=\"R0\">w</a>",
     "https://en.wikipedia.org/wiki/Mail_(protocol)#History"},
    /* single quotes, a double quote inside */
    {"<a href='https://x.example/?q=a\"b'>", "<a href=\"R0\">", "https://x.example/?q=a\"b"},
    /* upper-case tag and attribute names, and scheme */
    {"<A HREF=\"HTTPS://X.EXAMPLE/Path\">", "<A HREF=\"R0\">", "HTTPS://X.EXAMPLE/Path"},
    /* unquoted value */
    {"<a href=http://x.example/u?v=1 class=c>", "<a href=\"R0\" class=c>", "http://x.example/u?v=1"},
    /* other attributes kept, '>' inside a quoted one does not end the tag */
    {"<a class=\"btn\" title=\"a>b\" href=\"https://x.example/\" target=\"_blank\">",
     "<a class=\"btn\" title=\"a>b\" href=\"R0\" target=\"_blank\">", "https://x.example/"},
    /* spaces around = and white space a browser strips around the URL */
    {"<a href = \"  https://x.example/s \n\">", "<a href = \"R0\">", "https://x.example/s"},
    /* left alone: mailto:, relative, javascript:, tel:, notrack */
    {"<a href=\"mailto:ann@example.com?subject=Hi&amp;body=x\">m</a>",
     "<a href=\"mailto:ann@example.com?subject=Hi&amp;body=x\">m</a>", NULL},
    {"<a href=\"/relative/path\">r</a>", "<a href=\"/relative/path\">r</a>", NULL},
    {"<a href=\"javascript:alert(1)\">j</a>", "<a href=\"javascript:alert(1)\">j</a>", NULL},
    {"<a href=\"tel:+123\">t</a>", "<a href=\"tel:+123\">t</a>", NULL},
    {"<a data-mailgate-notrack href=\"https://x.example/keep\">k</a>",
     "<a data-mailgate-notrack href=\"https://x.example/keep\">k</a>", NULL},
    {"<a href=\"https://x.example/keep\" DATA-MAILGATE-NOTRACK=\"1\">k</a>",
     "<a href=\"https://x.example/keep\" DATA-MAILGATE-NOTRACK=\"1\">k</a>", NULL},
    /* a comment is not shown: its link is left alone */
    {"<!-- <a href=\"https://x.example/c\"> --><p>", "<!-- <a href=\"https://x.example/c\"> --><p>", NULL},
    {"<!--><a href=\"https://x.example/e\">", "<!--><a href=\"R0\">", "https://x.example/e"},
    /* Outlook renders conditional comments: tracked */
    {"<!--[if mso]><a href=\"https://x.example/mso\">o</a><![endif]-->",
     "<!--[if mso]><a href=\"R0\">o</a><![endif]-->", "https://x.example/mso"},
    /* script contents are not markup */
    {"<script>var s = '<a href=\"https://x.example/s\">';</script><a href=\"https://x.example/t\">",
     "<script>var s = '<a href=\"https://x.example/s\">';</script><a href=\"R0\">", "https://x.example/t"},
    /* not an <a>: abbr, area without being asked, link */
    {"<abbr href=\"https://x.example/\"><link href=\"https://x.example/css\">",
     "<abbr href=\"https://x.example/\"><link href=\"https://x.example/css\">", NULL},
    /* no href, an empty one, text that merely looks like a tag */
    {"<a name=\"top\">a < b <a href=\"\">", "<a name=\"top\">a < b <a href=\"\">", NULL},
    /* the first of duplicate hrefs counts (as in browsers) */
    {"<a href=\"https://x.example/1\" href=\"https://x.example/2\">", "<a href=\"R0\" href=\"https://x.example/2\">",
     "https://x.example/1"},
    /* UTF-8 in the URL passes through as bytes */
    {"<a href=\"https://x.example/caf\xc3\xa9?q=\xe2\x82\xac\">", "<a href=\"R0\">", "https://x.example/caf\xc3\xa9?q=\xe2\x82\xac"},
};

static void test_links_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(link_cases) / sizeof(link_cases[0]); i++) {
        const struct link_case *c = &link_cases[i];
        struct seen s = {0};
        struct buf out;
        buf_init(&out, 0);
        assert_int_equal(mime_track_links(c->html, strlen(c->html), record_cb, &s, &out), 0);
        if (strcmp(out.data ? out.data : "", c->want) != 0)
            fail_msg("case %zu: got\n  %s\nwant\n  %s", i, out.data ? out.data : "", c->want);
        if (c->url) {
            if (s.n < 1 || strcmp(s.urls[0], c->url) != 0)
                fail_msg("case %zu: callback got \"%s\" (%d calls), want \"%s\"", i, s.n ? s.urls[0] : "", s.n, c->url);
        } else if (s.n != 0) {
            fail_msg("case %zu: callback called for \"%s\", want no call", i, s.urls[0]);
        }
        buf_free(&out);
    }
}

static void test_links_long_query(void **state)
{
    (void)state;
    /* a 3,000-character query with &amp; separators round-trips */
    struct buf url, html, out;
    buf_init(&url, 0);
    buf_init(&html, 0);
    buf_init(&out, 0);
    buf_puts(&url, "https://shop.example/track?");
    buf_puts(&html, "<p><a href=\"https://shop.example/track?");
    for (int i = 0; url.len < 3000; i++) {
        buf_printf(&url, "%sk%d=v%d(x)", i ? "&" : "", i, i);
        buf_printf(&html, "%sk%d=v%d(x)", i ? "&amp;" : "", i, i);
    }
    buf_puts(&url, "#end");
    buf_puts(&html, "#end\">buy</a></p>");
    struct seen s = {0};
    assert_int_equal(mime_track_links(html.data, html.len, record_cb, &s, &out), 0);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.urls[0], url.data);
    assert_string_equal(out.data, "<p><a href=\"R0\">buy</a></p>");

    /* longer than MIME_TRACK_URL_MAX: left alone */
    buf_reset(&html);
    buf_reset(&out);
    buf_puts(&html, "<a href=\"https://x.example/?q=");
    while (html.len < MIME_TRACK_URL_MAX + 100)
        buf_putc(&html, 'a');
    buf_puts(&html, "\">x</a>");
    s.n = 0;
    assert_int_equal(mime_track_links(html.data, html.len, record_cb, &s, &out), 0);
    assert_int_equal(s.n, 0);
    assert_string_equal(out.data, html.data);
    buf_free(&url);
    buf_free(&html);
    buf_free(&out);
}

static void test_links_several_and_escaping(void **state)
{
    (void)state;
    const char *html = "<p>Hi <a href=\"https://a.example/\">a</a>, <a href='https://b.example/?x=1&amp;y=2'>b</a>"
                       " and <a href=\"mailto:c@example.com\">c</a>.</p>";
    struct seen s = {.answer = "https://t.example/t/c/tok?a=1&b=\"2\""};
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(mime_track_links(html, strlen(html), record_cb, &s, &out), 0);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.urls[0], "https://a.example/");
    assert_string_equal(s.urls[1], "https://b.example/?x=1&y=2");
    /* the replacement is escaped inside double quotes */
    assert_string_equal(out.data,
                        "<p>Hi <a href=\"https://t.example/t/c/tok?a=1&amp;b=&quot;2&quot;\">a</a>, "
                        "<a href=\"https://t.example/t/c/tok?a=1&amp;b=&quot;2&quot;\">b</a>"
                        " and <a href=\"mailto:c@example.com\">c</a>.</p>");
    buf_free(&out);

    /* an unterminated tag or quote at the end is copied as is */
    const char *cut[] = {"<a href=\"https://x.example/", "<a href='https://x.example/'", "<a", "<", "<!-- x", "</a"};
    for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
        struct seen s2 = {0};
        buf_init(&out, 0);
        assert_int_equal(mime_track_links(cut[i], strlen(cut[i]), record_cb, &s2, &out), 0);
        if (s2.n == 0)
            assert_string_equal(out.data, cut[i]);
        buf_free(&out);
    }
}

static int decline_cb(void *ctx, const char *url, size_t len, struct buf *out)
{
    (void)ctx, (void)url, (void)len, (void)out;
    return 1;
}

static int fail_cb(void *ctx, const char *url, size_t len, struct buf *out)
{
    (void)ctx, (void)url, (void)len, (void)out;
    return -1;
}

static void test_links_callback_results(void **state)
{
    (void)state;
    const char *html = "<a href=\"https://x.example/?a&amp;b\">x</a>";
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(mime_track_links(html, strlen(html), decline_cb, NULL, &out), 0);
    assert_string_equal(out.data, html);
    buf_free(&out);
    buf_init(&out, 0);
    assert_int_equal(mime_track_links(html, strlen(html), fail_cb, NULL, &out), -1);
    buf_free(&out);
    /* out's maximum is respected */
    buf_init(&out, 10);
    assert_int_equal(mime_track_links(html, strlen(html), decline_cb, NULL, &out), -1);
    buf_free(&out);
}

static void test_attr_decode(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"a&amp;b", "a&b"},       {"&lt;&gt;&quot;&apos;", "<>\"'"}, {"&amp", "&"},
        {"&amp;amp;", "&amp;"},   {"&#0;", "\xef\xbf\xbd"},          {"&#x20AC;", "\xe2\x82\xac"},
        {"&#xD800;", "\xef\xbf\xbd"}, {"&#99999999999;", "\xef\xbf\xbd"}, {"&#;", "&#;"},
        {"&#x;", "&#x;"},         {"&nbsp;", "\xc2\xa0"},            {"&AMP;", "&AMP;"},
        {"a&b", "a&b"},           {"&", "&"},                        {"&amp=1", "&amp=1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 0);
        assert_int_equal(mime_html_attr_decode(cases[i].in, strlen(cases[i].in), &b), 0);
        if (strcmp(b.data ? b.data : "", cases[i].want) != 0)
            fail_msg("decode case %zu \"%s\": got \"%s\"", i, cases[i].in, b.data ? b.data : "");
        buf_free(&b);
    }
}

/* ---- the pixel -------------------------------------------------------- */

#define IMG_TAIL "\" width=\"1\" height=\"1\" alt=\"\" style=\"border:0;width:1px;height:1px\" />"

static void test_pixel(void **state)
{
    (void)state;
    static const struct {
        const char *html, *want;
    } cases[] = {
        {"<html><body><p>Hi</p></body></html>",
         "<html><body><p>Hi</p><img src=\"https://t.example/t/o/X?a=1&amp;b=2" IMG_TAIL "</body></html>"},
        {"<HTML><BODY>Hi</BODY ></HTML>", "<HTML><BODY>Hi<img src=\"https://t.example/t/o/X?a=1&amp;b=2" IMG_TAIL "</BODY ></HTML>"},
        /* no </body>: at the end */
        {"<p>Hi</p>", "<p>Hi</p><img src=\"https://t.example/t/o/X?a=1&amp;b=2" IMG_TAIL},
        {"", "<img src=\"https://t.example/t/o/X?a=1&amp;b=2" IMG_TAIL},
        /* the last </body>; "</bodyx" is not one */
        {"a</body>b</body>c</bodyx>", "a</body>b<img src=\"https://t.example/t/o/X?a=1&amp;b=2" IMG_TAIL "</body>c</bodyx>"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 0);
        assert_int_equal(mime_track_pixel(cases[i].html, strlen(cases[i].html), "https://t.example/t/o/X?a=1&b=2", &b), 0);
        if (strcmp(b.data, cases[i].want) != 0)
            fail_msg("pixel case %zu: got\n  %s\nwant\n  %s", i, b.data, cases[i].want);
        buf_free(&b);
    }
}

/* ---- tokens ------------------------------------------------------------ */

static const unsigned char key1[] = "0123456789abcdef0123456789abcdef";
static const unsigned char key2[] = "0123456789abcdef0123456789abcdeF";

static void fill(struct gw_token *t, char kind, const char *url)
{
    memset(t, 0, sizeof(*t));
    t->kind = kind;
    strcpy(t->tenant, "acme");
    strcpy(t->msg_id, "0190aabbccdd0011223344556677889");
    strcpy(t->rcpt, "Ann.Lee+tag@example.com");
    if (url)
        strcpy(t->url, url);
}

static char *sign(const unsigned char *key, const struct gw_token *t)
{
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(gw_token_sign(key, 32, t, &b), 0);
    return buf_steal(&b);
}

static void test_token_roundtrip(void **state)
{
    (void)state;
    static struct gw_token t, got;
    const char kinds[] = {'o', 'c', 'u'};
    for (size_t k = 0; k < 3; k++) {
        fill(&t, kinds[k], kinds[k] == 'c' ? "https://x.example/a?b=1&c=(2)#frag" : NULL);
        char *tok = sign(key1, &t);
        /* base64url and one dot: safe in a path segment as is */
        for (const char *p = tok; *p; p++)
            assert_true((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                        *p == '-' || *p == '_' || *p == '.');
        assert_int_equal(gw_token_verify(key1, 32, tok, strlen(tok), &got), 0);
        assert_int_equal(got.kind, kinds[k]);
        assert_string_equal(got.tenant, "acme");
        assert_string_equal(got.msg_id, t.msg_id);
        assert_string_equal(got.rcpt, "Ann.Lee+tag@example.com");
        assert_string_equal(got.url, kinds[k] == 'c' ? t.url : "");
        /* another key: refused */
        assert_int_equal(gw_token_verify(key2, 32, tok, strlen(tok), &got), -1);
        free(tok);
    }
    /* the longest URL tracked still makes a token under the bound */
    char *url = malloc(MIME_TRACK_URL_MAX + 1);
    memcpy(url, "https://x.example/?q=", 21);
    memset(url + 21, 'q', MIME_TRACK_URL_MAX - 21);
    url[MIME_TRACK_URL_MAX] = '\0';
    fill(&t, 'c', url);
    char *tok = sign(key1, &t);
    assert_true(strlen(tok) <= GW_TRACK_TOKEN_MAX);
    assert_int_equal(gw_token_verify(key1, 32, tok, strlen(tok), &got), 0);
    assert_string_equal(got.url, url);
    free(tok);
    free(url);
}

static void test_token_forged(void **state)
{
    (void)state;
    static struct gw_token t, got;
    fill(&t, 'c', "https://x.example/landing");
    char *tok = sign(key1, &t);
    size_t n = strlen(tok);
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    /* every single-character change is refused (canonical base64url:
     * not even the low bits of the last character are free) */
    char *alt = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        for (const char *a = alphabet; *a; a++) {
            if (*a == tok[i])
                continue;
            memcpy(alt, tok, n + 1);
            alt[i] = *a;
            if (gw_token_verify(key1, 32, alt, n, &got) == 0)
                fail_msg("altered token accepted: position %zu '%c' -> '%c'", i, tok[i], *a);
        }
    }
    /* truncated, extended, empty, garbage */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(gw_token_verify(key1, 32, tok, k, &got), -1);
    char *longer = malloc(n + 3);
    memcpy(longer, tok, n);
    memcpy(longer + n, "AA", 3);
    assert_int_equal(gw_token_verify(key1, 32, longer, n + 2, &got), -1);
    const char *garbage[] = {"", ".", "abc", "abc.def", "....", "%2e%2e", "a.b.c", "AAAA.AAAAAAAAAAAAAAAAAAAAAA"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        assert_int_equal(gw_token_verify(key1, 32, garbage[i], strlen(garbage[i]), &got), -1);
    assert_int_equal(gw_token_verify(key1, 32, NULL, 0, &got), -1);
    /* the fields of a refused token are never filled */
    assert_int_equal(got.kind, 0);
    assert_string_equal(got.url, "");
    /* a click token for one URL swapped onto another message: refused */
    struct gw_token other;
    fill(&other, 'c', "https://evil.example/");
    char *tok2 = sign(key1, &other);
    char *dot1 = strchr(tok, '.'), *dot2 = strchr(tok2, '.');
    char mixed[2 * GW_TRACK_TOKEN_MAX];
    snprintf(mixed, sizeof(mixed), "%.*s%s", (int)(dot2 - tok2), tok2, dot1);
    assert_int_equal(gw_token_verify(key1, 32, mixed, strlen(mixed), &got), -1);
    free(tok2);
    free(longer);
    free(alt);
    free(tok);
}

static void test_token_sign_refuses(void **state)
{
    (void)state;
    static struct gw_token t;
    struct buf b;
    buf_init(&b, 0);
    fill(&t, 'c', "https://x.example/a\r\nLocation: https://evil.example/");
    assert_int_equal(gw_token_sign(key1, 32, &t, &b), -1); /* control characters */
    fill(&t, 'c', "");
    assert_int_equal(gw_token_sign(key1, 32, &t, &b), -1); /* a click needs a URL */
    fill(&t, 'x', NULL);
    assert_int_equal(gw_token_sign(key1, 32, &t, &b), -1); /* unknown kind */
    fill(&t, 'o', NULL);
    strcpy(t.rcpt, "a\nb@example.com");
    assert_int_equal(gw_token_sign(key1, 32, &t, &b), -1);
    fill(&t, 'o', NULL);
    assert_int_equal(gw_token_sign(key1, 0, &t, &b), -1); /* no key */
    assert_int_equal((int)b.len, 0);
    buf_free(&b);
}

/* ---- heuristics -------------------------------------------------------- */

static void test_machine(void **state)
{
    (void)state;
    const char *chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/120.0 Safari/537.36";
    const char *gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    assert_int_equal(gw_track_open_machine("Mozilla/5.0"), 1); /* Apple MPP */
    assert_int_equal(gw_track_open_machine(gmail), 0);
    assert_int_equal(gw_track_open_machine(chrome), 0);
    assert_int_equal(gw_track_open_machine("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"), 0);
    assert_int_equal(gw_track_open_machine(NULL), 1);
    assert_int_equal(gw_track_open_machine(""), 1);
    assert_int_equal(gw_track_open_machine("Barracuda Sentinel (EE)"), 1);

    int64_t d = 1700000000000LL;
    assert_int_equal(gw_track_click_machine(chrome, d, d + 1000), 1);                              /* too soon */
    assert_int_equal(gw_track_click_machine(chrome, d, d + GW_CLICK_SCANNER_WINDOW_MS - 1), 1);
    assert_int_equal(gw_track_click_machine(chrome, d, d + GW_CLICK_SCANNER_WINDOW_MS), 0);
    assert_int_equal(gw_track_click_machine(chrome, d, d - 500), 1);                               /* clock skew */
    assert_int_equal(gw_track_click_machine(chrome, 0, d), 0);                                     /* unknown */
    assert_int_equal(gw_track_click_machine("Mozilla/5.0 (compatible; Mimecast)", d, d + 60000), 1);
    assert_int_equal(gw_track_click_machine("python-requests/2.31", d, d + 60000), 1);
    assert_int_equal(gw_track_click_machine(NULL, d, d + 60000), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_links_table),
        cmocka_unit_test(test_links_long_query),
        cmocka_unit_test(test_links_several_and_escaping),
        cmocka_unit_test(test_links_callback_results),
        cmocka_unit_test(test_attr_decode),
        cmocka_unit_test(test_pixel),
        cmocka_unit_test(test_token_roundtrip),
        cmocka_unit_test(test_token_forged),
        cmocka_unit_test(test_token_sign_refuses),
        cmocka_unit_test(test_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
