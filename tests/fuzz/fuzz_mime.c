/*
 * fuzz_mime.c - libFuzzer target for the message builder (mime_build with
 * fuzzed subject, names, bodies, custom header and attachments), the
 * encoders under it (encoded-words, folding, quoted-printable, base64 in
 * and out) and DKIM canonicalization and signing (with an Ed25519 key made
 * at start-up) over both the built message and raw fuzzed bytes.
 *
 * Input layout: fields separated by NUL bytes, in this order: subject,
 * from name, to name, text, html, header name, header value, attachment
 * file name, content type, content id, base64 text; the rest (which may
 * hold NULs) is the raw attachment data. The first input byte selects
 * options (which fields are absent, buffer maximum). Missing fields are
 * absent.
 *
 * Besides memory errors (ASan/UBSan) it aborts when a built message
 * breaks the invariants of mime.h: only CRLF line ends, no line over 998
 * octets, the buffer unchanged on failure, the signature prepended as one
 * field.
 * Build and run: make fuzz (see the Makefile).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/util.h"
#include "templates/mime.h"

#define NFIELDS 11

static struct mime_dkim_keys *keys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[] = "/tmp/fuzz_mime_key.XXXXXX";
    int fd = mkstemp(path);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!k || !f || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1)
        abort();
    fclose(f);
    EVP_PKEY_free(k);
    char spec[300], err[256];
    snprintf(spec, sizeof(spec), "fuzz.example:s1:%s", path);
    if (mime_dkim_keys_load(spec, &keys, err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz_mime: %s\n", err);
        abort();
    }
    unlink(path);
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_mime: %s\n", what);
        abort();
    }
}

/* check_lines - CRLF only, lines within 998. */
static void check_lines(const struct buf *b)
{
    size_t line = 0;
    for (size_t i = 0; i < b->len; i++) {
        char c = b->data[i];
        if (c == '\r') {
            check(i + 1 < b->len && b->data[i + 1] == '\n', "bare CR in output");
            i++;
            line = 0;
        } else {
            check(c != '\n', "bare LF in output");
            check(++line <= MIME_LINE_HARD, "line longer than 998");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    unsigned opt = data[0];
    const char *f[NFIELDS] = {0};
    char *copy = malloc(size + 1);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    size_t pos = 0, nf = 0;
    while (nf < NFIELDS && pos < size - 1) {
        f[nf++] = copy + pos;
        pos += strlen(copy + pos) + 1;
    }
    const unsigned char *raw = pos < size - 1 ? (const unsigned char *)copy + pos : NULL;
    size_t rawlen = raw ? size - 1 - pos : 0;
    char err[256];

    struct mime_message m = {0};
    (void)mime_addr_set(&m.from, "news@fuzz.example", f[1] && *f[1] ? f[1] : NULL, err, sizeof(err));
    if (!m.from.email)
        (void)mime_addr_set(&m.from, "news@fuzz.example", NULL, err, sizeof(err));
    struct mime_addr to = {0};
    if (mime_addr_set(&to, "ann@example.com", f[2] && *f[2] ? f[2] : NULL, err, sizeof(err)) == 0)
        mime_addr_list_push(&m.to, &to);
    mime_addr_free(&to);
    m.subject = f[0];
    m.text = (opt & 1) ? NULL : f[3] ? f[3] : "";
    m.html = (opt & 2) ? f[4] : NULL;
    struct mime_header_field h = {(char *)(f[5] ? f[5] : "X-Fuzz"), (char *)(f[6] ? f[6] : "")};
    m.headers = &h;
    m.nheaders = (opt & 4) ? 1 : 0;
    m.message_id = "fuzz@mailgate.example";
    m.date_ms = 1796029200000LL;

    /* attachments: one from mime_attachment_set (base64 field), one raw */
    struct mime_attachment att[2];
    memset(att, 0, sizeof(att));
    size_t natt = 0;
    const char *which;
    if (f[10] && mime_attachment_set(&att[natt], f[7] ? f[7] : "a.bin", (opt & 8) ? f[8] : NULL, f[10],
                                     strlen(f[10]), (opt & 16) ? f[9] : NULL, &which, err, sizeof(err)) == 0)
        natt++;
    struct mime_attachment rawatt = {(char *)(f[7] && *f[7] ? f[7] : "raw.bin"), NULL, (unsigned char *)raw,
                                     rawlen, (opt & 32) ? (char *)"cid@fuzz" : NULL};
    struct mime_attachment all[3] = {att[0], rawatt, {0}};
    m.attachments = natt ? all : all + 1;
    m.nattachments = (opt & 64) ? 1 + natt : natt;

    struct buf out;
    size_t max = (opt & 128) ? 2048 : 1 << 22;
    buf_init(&out, max);
    buf_puts(&out, "x");
    if (mime_build(&m, &out, err, sizeof(err)) == 0) {
        check(out.len > 1 && out.data[0] == 'x', "prefix lost");
        struct buf msg;
        buf_init(&msg, max);
        buf_append(&msg, out.data + 1, out.len - 1);
        check_lines(&msg);
        size_t before = msg.len;
        if (mime_dkim_sign(mime_dkim_key_for(keys, "fuzz.example"), &msg, 1796029200, err, sizeof(err)) == 0) {
            check(msg.len > before && memcmp(msg.data + msg.len - before, out.data + 1, before) == 0,
                  "signing changed the message");
            check(strncmp(msg.data, "DKIM-Signature: ", 16) == 0, "signature not first");
            check_lines(&msg);
        } else {
            check(msg.len == before, "failed signing changed the message");
        }
        buf_free(&msg);
    } else {
        check(out.len == 1, "failed build changed the buffer");
    }
    buf_free(&out);

    /* the encoders on raw input */
    struct buf e;
    buf_init(&e, 1 << 22);
    size_t col = opt % 80;
    if (f[0] && util_utf8_valid(f[0], strlen(f[0])))
        (void)mime_encode_words(f[0], strlen(f[0]), &e, &col);
    if (f[5] && f[6] && mime_header(&e, f[5], f[6]) == 0)
        check_lines(&e);
    buf_reset(&e);
    if (raw) {
        (void)mime_qp_encode((const char *)raw, rawlen, &e);
        check_lines(&e);
        buf_reset(&e);
        unsigned char *dec;
        size_t n;
        if (mime_base64_lines(raw, rawlen, &e) == 0 &&
            mime_base64_decode(e.data ? e.data : "", e.len, &dec, &n, err, sizeof(err)) == 0) {
            check(n == rawlen && (n == 0 || memcmp(dec, raw, n) == 0), "base64 round trip");
            free(dec);
        }
        buf_reset(&e);
        /* DKIM on arbitrary bytes: canonicalization and header parsing */
        (void)mime_dkim_canon_body((const char *)raw, rawlen, &e);
        (void)mime_dkim_canon_header((const char *)raw, rawlen, &e);
        struct buf any;
        buf_init(&any, 1 << 22);
        buf_append(&any, raw, rawlen);
        (void)mime_dkim_sign(mime_dkim_key_for(keys, "fuzz.example"), &any, 1, err, sizeof(err));
        buf_free(&any);
    }
    buf_free(&e);

    for (size_t i = 0; i < natt; i++)
        mime_attachment_free(&att[i]);
    mime_addr_free(&m.from);
    mime_addr_list_free(&m.to);
    free(copy);
    return 0;
}
