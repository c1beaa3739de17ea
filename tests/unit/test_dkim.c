/*
 * test_dkim.c - unit tests for templates/mime_dkim.c: relaxed header and
 * body canonicalization against tables worked out by hand from RFC 6376
 * §3.4.2/§3.4.4 (trailing white space, white space runs, folded headers,
 * empty bodies and trailing empty lines, long lines, bare CR/LF), key
 * loading and its errors, and signatures: the DKIM-Signature field's
 * shape (tags, h= with From oversigned, folding) and that b= and bh=
 * verify with the public key, for RSA and Ed25519 keys made here.
 *
 * Independent verification with python3-dkim is in
 * tests/e2e/test_mime_e2e.py, through the whole pipeline. Set
 * DKIM_TEST_DUMP=dir to also write the signed messages and public keys
 * there.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "templates/mime.h"

/* ---- canonicalization --------------------------------------------------- */

static void check_body(const char *in, size_t len, const char *want, size_t wantlen, int line)
{
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(mime_dkim_canon_body(in, len, &b), 0);
    if (b.len != wantlen || (wantlen && memcmp(b.data, want, wantlen) != 0))
        fail_msg("body case at line %d: got %zu octets \"%.200s\", want \"%.200s\"", line, b.len,
                 b.data ? b.data : "", want);
    buf_free(&b);
}

#define BODY(in, want) check_body(in, sizeof(in) - 1, want, sizeof(want) - 1, __LINE__)

static void test_canon_body(void **state)
{
    /* empty bodies: relaxed keeps them empty (RFC 6376 §3.4.4, errata 1384) */
    BODY("", "");
    BODY("\r\n", "");
    BODY("\r\n\r\n\r\n", "");
    BODY(" \t \r\n\t\r\n", "");
    /* a missing final CRLF is added to a non-empty body */
    BODY("abc", "abc\r\n");
    BODY("abc\r\n", "abc\r\n");
    /* white space at line ends goes; runs inside become one SP; leading
     * white space stays as one SP */
    BODY("abc \t \r\n", "abc\r\n");
    BODY(" a  b\t\tc \r\n", " a b c\r\n");
    BODY("\t\tindent\r\n", " indent\r\n");
    BODY("abc   ", "abc\r\n");
    /* empty lines: kept inside, dropped at the end, also when they held
     * only white space */
    BODY("a\r\n\r\nb\r\n\r\n\r\n", "a\r\n\r\nb\r\n");
    BODY("a\r\n \r\n\tb\r\n \r\n\t\r\n", "a\r\n\r\n b\r\n");
    BODY("\r\n\r\na\r\n", "\r\n\r\na\r\n");
    /* only CRLF ends a line: a bare LF or CR is an ordinary character */
    BODY("a \nb \r\n", "a \nb\r\n");
    BODY("a \rb\r\n", "a \rb\r\n");
    BODY("a\r\r\n", "a\r\r\n");

    /* long lines: 5,000 octets with white space runs, and more than 16
     * empty lines inside (the canonicalizer writes them in batches) */
    struct buf in, want;
    buf_init(&in, 0);
    buf_init(&want, 0);
    for (int i = 0; i < 1000; i++) {
        buf_puts(&in, "word \t  ");
        buf_puts(&want, i ? " word" : "word");
    }
    buf_puts(&in, "\r\n");
    buf_puts(&want, "\r\n");
    for (int i = 0; i < 40; i++) {
        buf_puts(&in, "  \r\n");
        buf_puts(&want, "\r\n");
    }
    buf_puts(&in, "end \r\n\r\n\r\n");
    buf_puts(&want, "end\r\n");
    check_body(in.data, in.len, want.data, want.len, __LINE__);
    buf_free(&in);
    buf_free(&want);

    /* a full buffer leaves out unchanged */
    struct buf small;
    buf_init(&small, 4);
    buf_puts(&small, "xy");
    assert_int_equal(mime_dkim_canon_body("abcdef\r\n", 8, &small), -1);
    assert_int_equal(small.len, 2);
    buf_free(&small);
}

static void test_canon_header(void **state)
{
    const struct {
        const char *in, *want;
    } cases[] = {
        {"Subject: Hello", "subject:Hello\r\n"},
        {"Subject:  Hello   World  \r\n", "subject:Hello World\r\n"},
        {"SUBJECT :x", "subject:x\r\n"},
        {"Subject \t: \t x \t", "subject:x\r\n"},
        {"Subject: a\r\n\tb\r\n  c\r\n", "subject:a b c\r\n"},
        {"X-Empty:", "x-empty:\r\n"},
        {"X-Empty:   \r\n", "x-empty:\r\n"},
        {"X-Fold:\r\n value", "x-fold:value\r\n"},
        {"To: A <a@x.example>,\r\n B <b@y.example>", "to:A <a@x.example>, B <b@y.example>\r\n"},
        {"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=", "dkim-signature:v=1; a=rsa-sha256; b=\r\n"},
        {"X-Colon: a:b:c", "x-colon:a:b:c\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 0);
        assert_int_equal(mime_dkim_canon_header(cases[i].in, strlen(cases[i].in), &b), 0);
        if (strcmp(b.data, cases[i].want) != 0)
            fail_msg("header case %zu: got \"%s\", want \"%s\"", i, b.data, cases[i].want);
        buf_free(&b);
    }
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(mime_dkim_canon_header("no colon here", 13, &b), -1);
    assert_int_equal(mime_dkim_canon_header(": no name", 9, &b), -1);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* ---- keys ----------------------------------------------------------------- */

static char tmpdir[64];

/* write_key - make a key of type ("RSA" with bits, "ED25519", "EC") and
 * write its PEM to tmpdir/name; returns the path (static storage). */
static const char *write_key(const char *name, const char *type, unsigned bits, EVP_PKEY **keep)
{
    static char path[4][128];
    static int slot;
    char *p = path[slot++ % 4];
    snprintf(p, 128, "%s/%s", tmpdir, name);
    EVP_PKEY *k;
    if (!strcmp(type, "RSA"))
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
    else if (!strcmp(type, "EC"))
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    else
        k = EVP_PKEY_Q_keygen(NULL, NULL, type);
    assert_non_null(k);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    if (keep)
        *keep = k;
    else
        EVP_PKEY_free(k);
    return p;
}

static void test_keys_load(void **state)
{
    char spec[1024], err[300];
    struct mime_dkim_keys *ks = NULL;
    const char *rsa = write_key("rsa.pem", "RSA", 2048, NULL);
    char rsa_path[128];
    snprintf(rsa_path, sizeof(rsa_path), "%s", rsa);
    const char *ed = write_key("ed.pem", "ED25519", 0, NULL);
    char ed_path[128];
    snprintf(ed_path, sizeof(ed_path), "%s", ed);

    snprintf(spec, sizeof(spec), " Acme.Example:s2026:%s , other.example:ed:%s", rsa_path, ed_path);
    assert_int_equal(mime_dkim_keys_load(spec, &ks, err, sizeof(err)), 0);
    const struct mime_dkim_key *k = mime_dkim_key_for(ks, "ACME.example");
    assert_non_null(k);
    assert_non_null(mime_dkim_key_for(ks, "other.example"));
    assert_null(mime_dkim_key_for(ks, "sub.acme.example"));
    assert_null(mime_dkim_key_for(NULL, "acme.example"));
    char desc[200];
    mime_dkim_keys_describe(ks, desc, sizeof(desc));
    assert_string_equal(desc, "acme.example:s2026:rsa-2048,other.example:ed:ed25519-256");
    mime_dkim_keys_free(ks);
    mime_dkim_keys_free(NULL);

    assert_int_equal(mime_dkim_keys_load("", &ks, err, sizeof(err)), 0);
    assert_null(mime_dkim_key_for(ks, "acme.example"));
    mime_dkim_keys_free(ks);

    /* every bad entry is refused with a reason naming it */
    const char *small = write_key("small.pem", "RSA", 512, NULL);
    char small_path[128];
    snprintf(small_path, sizeof(small_path), "%s", small);
    const char *ec = write_key("ec.pem", "EC", 0, NULL);
    char ec_path[128];
    snprintf(ec_path, sizeof(ec_path), "%s", ec);
    char notkey[128];
    snprintf(notkey, sizeof(notkey), "%s/notkey.pem", tmpdir);
    FILE *f = fopen(notkey, "w");
    fputs("hello\n", f);
    fclose(f);
    struct {
        char spec[512];
        const char *why;
    } bad[8];
    size_t nb = 0;
    snprintf(bad[nb].spec, 512, "acme.example"), bad[nb++].why = "expected domain:selector";
    snprintf(bad[nb].spec, 512, "acme..example:s:%s", rsa_path), bad[nb++].why = "not a domain";
    snprintf(bad[nb].spec, 512, "acme.example:s el:%s", rsa_path), bad[nb++].why = "not a selector";
    snprintf(bad[nb].spec, 512, "acme.example:s:"), bad[nb++].why = "no key file";
    snprintf(bad[nb].spec, 512, "acme.example:s:%s/missing.pem", tmpdir), bad[nb++].why = "cannot open";
    snprintf(bad[nb].spec, 512, "acme.example:s:%s", notkey), bad[nb++].why = "no unencrypted PEM";
    snprintf(bad[nb].spec, 512, "acme.example:s:%s", small_path), bad[nb++].why = "512 bits";
    snprintf(bad[nb].spec, 512, "acme.example:s:%s", ec_path), bad[nb++].why = "neither RSA nor Ed25519";
    for (size_t i = 0; i < nb; i++) {
        err[0] = '\0';
        ks = (struct mime_dkim_keys *)1;
        if (mime_dkim_keys_load(bad[i].spec, &ks, err, sizeof(err)) != -1)
            fail_msg("bad spec %zu accepted: %s", i, bad[i].spec);
        assert_null(ks);
        if (!strstr(err, bad[i].why))
            fail_msg("bad spec %zu: reason \"%s\" lacks \"%s\"", i, err, bad[i].why);
    }
    snprintf(spec, sizeof(spec), "acme.example:a:%s,ACME.example:b:%s", rsa_path, ed_path);
    assert_int_equal(mime_dkim_keys_load(spec, &ks, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than one key"));
}

/* ---- signing ------------------------------------------------------------ */

/* tag - the value of tag name in the DKIM-Signature value v, with folding
 * white space removed; malloc'd, NULL when absent. */
static char *tag(const char *v, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = v; *p;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == ';')
            p++;
        const char *eq = strchr(p, '=');
        if (!eq)
            return NULL;
        const char *end = strchr(eq, ';');
        if (!end)
            end = v + strlen(v);
        if ((size_t)(eq - p) == n && !strncmp(p, name, n)) {
            char *out = malloc((size_t)(end - eq));
            size_t o = 0;
            for (const char *q = eq + 1; q < end; q++)
                if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n')
                    out[o++] = *q;
            out[o] = '\0';
            return out;
        }
        p = end;
    }
    return NULL;
}

/* field_text - the whole field named name (last instance when from_bottom
 * skips that many from the end), folds included, without CRLF. */
static int find_fields(const char *hdrs, const char *name, const char **starts, size_t *lens, int max)
{
    int n = 0;
    size_t nl = strlen(name);
    for (const char *p = hdrs; *p && !(p[0] == '\r' && p[1] == '\n');) {
        const char *e = p;
        for (;;) {
            e = strstr(e, "\r\n");
            if (e[2] != ' ' && e[2] != '\t')
                break;
            e += 2;
        }
        if (!strncasecmp(p, name, nl) && p[nl] == ':' && n < max) {
            starts[n] = p;
            lens[n] = (size_t)(e - p);
            n++;
        }
        p = e + 2;
    }
    return n;
}

/* verify - check msg's first field, a DKIM-Signature, against pub: bh= is
 * the SHA-256 of the canonical body and b= verifies over the fields named
 * in h= (bottom-up instances; names beyond them hash nothing). */
static void verify(const char *msg, size_t len, EVP_PKEY *pub, int ed25519)
{
    assert_true(strncmp(msg, "DKIM-Signature: ", 16) == 0);
    const char *sig_end = msg;
    for (;;) {
        sig_end = strstr(sig_end, "\r\n");
        if (sig_end[2] != ' ')
            break;
        sig_end += 2;
    }
    char *sigfield = strndup(msg, (size_t)(sig_end - msg));
    const char *val = sigfield + 15;
    char *a = tag(val, "a"), *c = tag(val, "c"), *h = tag(val, "h"), *bh = tag(val, "bh"), *b = tag(val, "b");
    assert_string_equal(a, ed25519 ? "ed25519-sha256" : "rsa-sha256");
    assert_string_equal(c, "relaxed/relaxed");
    assert_non_null(h);
    assert_non_null(bh);
    assert_non_null(b);

    const char *rest = sig_end + 2;
    const char *body = strstr(rest, "\r\n\r\n");
    body = body ? body + 4 : msg + len;
    if (rest[0] == '\r' && rest[1] == '\n')
        body = rest + 2;
    struct buf cb, data;
    buf_init(&cb, 0);
    buf_init(&data, 0);
    assert_int_equal(mime_dkim_canon_body(body, (size_t)(msg + len - body), &cb), 0);
    unsigned char md[32], raw[64];
    unsigned int mdl = 0;
    EVP_Digest(cb.data ? cb.data : "", cb.len, md, &mdl, EVP_sha256(), NULL);
    assert_int_equal(EVP_EncodeBlock(raw, md, 32), 44);
    assert_memory_equal(raw, bh, 44);

    /* the signed fields, in h= order */
    char *names = strdup(h);
    struct {
        char name[64];
        int used;
    } seen[32];
    int nseen = 0;
    char *save = NULL;
    for (char *nm = strtok_r(names, ":", &save); nm; nm = strtok_r(NULL, ":", &save)) {
        int k = 0;
        while (k < nseen && strcasecmp(seen[k].name, nm))
            k++;
        if (k == nseen) {
            snprintf(seen[k].name, sizeof(seen[k].name), "%s", nm);
            seen[k].used = 0;
            nseen++;
        }
        const char *st[16];
        size_t ln[16];
        int n = find_fields(rest, nm, st, ln, 16);
        if (seen[k].used < n) {
            int idx = n - 1 - seen[k].used;
            assert_int_equal(mime_dkim_canon_header(st[idx], ln[idx], &data), 0);
        }
        seen[k].used++;
    }
    free(names);
    /* the signature field with b= emptied, no final CRLF */
    char *bpos = strstr(sigfield, " b=");
    assert_non_null(bpos);
    bpos[3] = '\0';
    assert_int_equal(mime_dkim_canon_header(sigfield, strlen(sigfield), &data), 0);
    data.len -= 2;

    unsigned char sig[1024];
    int sl = EVP_DecodeBlock(sig, (const unsigned char *)b, (int)strlen(b));
    assert_true(sl > 0);
    size_t pad = strlen(b) >= 2 ? (b[strlen(b) - 1] == '=') + (b[strlen(b) - 2] == '=') : 0;
    sl -= (int)pad;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;
    if (ed25519) {
        unsigned char hh[32];
        unsigned int hl;
        EVP_Digest(data.data, data.len, hh, &hl, EVP_sha256(), NULL);
        ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub) == 1 &&
             EVP_DigestVerify(ctx, sig, (size_t)sl, hh, hl) == 1;
    } else {
        ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
             EVP_DigestVerify(ctx, sig, (size_t)sl, (const unsigned char *)data.data, data.len) == 1;
    }
    EVP_MD_CTX_free(ctx);
    assert_true(ok);
    buf_free(&cb);
    buf_free(&data);
    free(a);
    free(c);
    free(h);
    free(bh);
    free(b);
    free(sigfield);
}

static void build(struct buf *out, const char *text, const char *html, const struct mime_header_field *hf, size_t nh)
{
    struct mime_message m = {0};
    char err[200];
    assert_int_equal(mime_addr_set(&m.from, "news@acme.example", "Acme News", err, sizeof(err)), 0);
    assert_int_equal(mime_addr_parse_list("Ann <ann@example.com>, bob@example.org", &m.to, err, sizeof(err)), 0);
    m.subject = "Your   receipt,  with a subject long enough to be folded over more than one line of the header";
    m.text = text;
    m.html = html;
    m.headers = hf;
    m.nheaders = nh;
    m.message_id = "0190abc@mailgate.example";
    m.date_ms = 1796029200000LL;
    buf_init(out, 1 << 20);
    assert_int_equal(mime_build(&m, out, err, sizeof(err)), 0);
    mime_addr_free(&m.from);
    mime_addr_list_free(&m.to);
}

/* dump - with DKIM_TEST_DUMP=dir, write the signed message and the
 * public key there, for checking with another verifier. */
static void dump(int which, size_t i, const struct buf *msg, EVP_PKEY *k)
{
    const char *dir = getenv("DKIM_TEST_DUMP");
    if (!dir)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/sign-%d-%zu.eml", dir, which, i);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(msg->data, 1, msg->len, f);
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s/pub-%d.pem", dir, which);
    f = fopen(path, "w");
    if (f) {
        PEM_write_PUBKEY(f, k);
        fclose(f);
    }
}

static void test_sign(void **state)
{
    EVP_PKEY *rsa, *ed;
    char rsa_path[128], ed_path[128], spec[400], err[300];
    snprintf(rsa_path, sizeof(rsa_path), "%s", write_key("sign-rsa.pem", "RSA", 2048, &rsa));
    snprintf(ed_path, sizeof(ed_path), "%s", write_key("sign-ed.pem", "ED25519", 0, &ed));
    snprintf(spec, sizeof(spec), "acme.example:rsa1:%s,ed.example:ed1:%s", rsa_path, ed_path);
    struct mime_dkim_keys *ks;
    assert_int_equal(mime_dkim_keys_load(spec, &ks, err, sizeof(err)), 0);

    char longline[3000];
    memset(longline, 'x', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = '\0';
    for (size_t i = 100; i < sizeof(longline) - 1; i += 97)
        longline[i] = ' ';
    const struct {
        const char *text, *html;
    } bodies[] = {
        {"Hello Ann,\nthanks.", NULL},
        {"trailing white space   \n\t\nmore  \t\n\n\n\n", NULL},
        {"", NULL},
        {"\n\n", NULL},
        {longline, NULL},
        {"Grüße, Jürgen \n", "<p>Grüße</p>   \n\n"},
    };
    const struct mime_header_field hf[] = {
        {"List-Unsubscribe", "<https://acme.example/u/1>, <mailto:u@acme.example>"},
        {"List-Unsubscribe-Post", "List-Unsubscribe=One-Click"},
        {"X-Campaign", "q4"},
    };
    for (int which = 0; which < 2; which++) {
        const struct mime_dkim_key *k = mime_dkim_key_for(ks, which ? "ed.example" : "acme.example");
        assert_non_null(k);
        for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
            struct buf msg;
            build(&msg, bodies[i].text, bodies[i].html, hf, i == 0 ? 3 : 0);
            size_t before = msg.len;
            char *orig = strdup(msg.data);
            assert_int_equal(mime_dkim_sign(k, &msg, 1796029200, err, sizeof(err)), 0);
            /* prepended; the message itself is untouched */
            assert_true(msg.len > before);
            assert_string_equal(msg.data + msg.len - before, orig);
            free(orig);
            /* the field: folded within 78, the expected tags */
            const char *end = strstr(msg.data, "\r\n");
            for (const char *p = msg.data;; p = end + 2, end = strstr(p, "\r\n")) {
                if ((size_t)(end - p) > 78)
                    fail_msg("DKIM-Signature line longer than 78: %.*s", (int)(end - p), p);
                if (end[2] != ' ')
                    break;
            }
            char *sf = strndup(msg.data, (size_t)(end - msg.data));
            char *h = tag(sf + 15, "h"), *t = tag(sf + 15, "t"), *d = tag(sf + 15, "d"), *s = tag(sf + 15, "s");
            assert_string_equal(t, "1796029200");
            assert_string_equal(d, which ? "ed.example" : "acme.example");
            assert_string_equal(s, which ? "ed1" : "rsa1");
            if (i == 0)
                assert_string_equal(h, "from:from:to:subject:date:message-id:mime-version:content-type:"
                                       "content-transfer-encoding:list-unsubscribe:list-unsubscribe-post");
            else if (bodies[i].html)
                assert_string_equal(h, "from:from:to:subject:date:message-id:mime-version:content-type");
            else
                assert_string_equal(h, "from:from:to:subject:date:message-id:mime-version:content-type:"
                                       "content-transfer-encoding");
            verify(msg.data, msg.len, which ? ed : rsa, which);
            dump(which, i, &msg, which ? ed : rsa);
            free(h);
            free(t);
            free(d);
            free(s);
            free(sf);
            buf_free(&msg);
        }
    }

    /* a message at its buffer's maximum: refused, unchanged */
    struct buf msg;
    build(&msg, "hi", NULL, NULL, 0);
    msg.max = msg.len + 20;
    size_t len = msg.len;
    assert_int_equal(mime_dkim_sign(mime_dkim_key_for(ks, "acme.example"), &msg, 1, err, sizeof(err)), -1);
    assert_string_equal(err, "message too large");
    assert_int_equal(msg.len, len);
    buf_free(&msg);

    /* no header/body separator */
    buf_init(&msg, 0);
    buf_puts(&msg, "Subject: x\r\n");
    assert_int_equal(mime_dkim_sign(mime_dkim_key_for(ks, "acme.example"), &msg, 1, err, sizeof(err)), -1);
    buf_free(&msg);

    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
    mime_dkim_keys_free(ks);
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_dkim.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_body),
        cmocka_unit_test(test_canon_header),
        cmocka_unit_test(test_keys_load),
        cmocka_unit_test(test_sign),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
