/*
 * mime_dkim.c - DKIM signatures (RFC 6376) with rsa-sha256 and
 * ed25519-sha256 (RFC 8463), relaxed/relaxed canonicalization, over the
 * message exactly as mime_build rendered it (see mime.h).
 *
 * The message handed in is what the SMTP client sends: CRLF line ends, not
 * yet dot-stuffed. Dot-stuffing is undone by the receiving server, so the
 * signed bytes are the bytes a verifier sees. Signing is the last step
 * before the message is queued; nothing may change it afterwards.
 *
 * Canonicalization lives in two functions, each used both for hashing and
 * (through a buffer sink) by the unit tests: body_canon (RFC 6376 §3.4.4)
 * and header_canon (§3.4.2).
 *
 * Limits: MIME_DKIM_KEYS_MAX keys; SIGN_FIELDS_MAX header fields examined
 * in one message; the signed message still fits the caller's buffer
 * maximum. RSA keys below MIME_DKIM_RSA_MIN_BITS are refused (RFC 8301).
 *
 * SECURITY: private keys are read once at start-up from files named by
 * the operator, never from requests; an encrypted key is refused instead
 * of prompting for a passphrase. No key material or path content reaches
 * an error message or log, only the entry's domain, selector and path.
 * Which tenant may use which key is decided by the caller (gateway).
 */
#include "common/util.h"
#include "templates/mime.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define SIGN_FIELDS_MAX 1024   /* header fields parsed from one message */
#define DKIM_LINE 78           /* fold the DKIM-Signature field at this column */
#define SPEC_MAX 16384         /* octets of MAILGATE_DKIM_KEYS */

struct mime_dkim_key {
    char domain[MIME_DOMAIN_MAX + 1];       /* lower case */
    char selector[MIME_DKIM_SELECTOR_MAX + 1];
    EVP_PKEY *pkey;                         /* owned */
    int ed25519;                            /* 0: RSA */
    int bits;
};

struct mime_dkim_keys {
    struct mime_dkim_key v[MIME_DKIM_KEYS_MAX];
    size_t n;
};

/* The fields signed when present, in h= order. From is signed once more
 * than it occurs (oversigning): a From added in transit then breaks the
 * signature. List-Unsubscribe(-Post) are signed per RFC 8058 §4. */
static const char *const sign_fields[] = {
    "from", "reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
};



/* ---- canonicalization --------------------------------------------------- */

/* Where canonical octets go: a digest or a buffer. Returns 0 or -1. */
typedef int (*sink_fn)(void *ctx, const void *p, size_t n);

static int sink_buf(void *ctx, const void *p, size_t n)
{
    return buf_append(ctx, p, n);
}

static int sink_md(void *ctx, const void *p, size_t n)
{
    return n == 0 || EVP_DigestUpdate(ctx, p, n) == 1 ? 0 : -1;
}

static int wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* put_compressed - n octets with each run of WSP as one SP. */
static int put_compressed(const char *p, size_t n, sink_fn fn, void *ctx)
{
    size_t i = 0;
    while (i < n) {
        size_t k = i;
        while (k < n && !wsp(p[k]))
            k++;
        if (k > i && fn(ctx, p + i, k - i) < 0)
            return -1;
        if (k == n)
            break;
        while (k < n && wsp(p[k]))
            k++;
        if (fn(ctx, " ", 1) < 0)
            return -1;
        i = k;
    }
    return 0;
}

/* body_canon - RFC 6376 §3.4.4 relaxed body, streamed to fn. Empty lines
 * are held back until a non-empty line follows, so those at the end are
 * dropped. */
static int body_canon(const char *b, size_t n, sink_fn fn, void *ctx)
{
    static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";
    size_t empty = 0, i = 0;
    while (i < n) {
        const char *e = memmem(b + i, n - i, "\r\n", 2);
        size_t llen = e ? (size_t)(e - (b + i)) : n - i;
        size_t last = llen;
        while (last > 0 && wsp(b[i + last - 1]))
            last--;
        if (last == 0) {
            empty++;
        } else {
            for (; empty; ) {
                size_t k = empty < 16 ? empty : 16;
                if (fn(ctx, crlfs, 2 * k) < 0)
                    return -1;
                empty -= k;
            }
            if (put_compressed(b + i, last, fn, ctx) < 0 || fn(ctx, "\r\n", 2) < 0)
                return -1;
        }
        i += llen + (e ? 2 : 0);
    }
    return 0;
}

/* header_canon - RFC 6376 §3.4.2 relaxed header field, streamed to fn:
 * "name:value" CRLF. Returns 0, or -1 (no colon, or fn failed). */
static int header_canon(const char *f, size_t n, sink_fn fn, void *ctx)
{
    const char *colon = memchr(f, ':', n);
    if (!colon)
        return -1;
    size_t nl = (size_t)(colon - f);
    while (nl > 0 && wsp(f[nl - 1]))
        nl--;
    char name[MIME_FIELD_NAME_MAX + 1];
    if (nl == 0 || nl > MIME_FIELD_NAME_MAX)
        return -1;
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)f[i]);
    if (fn(ctx, name, nl) < 0 || fn(ctx, ":", 1) < 0)
        return -1;
    /* The value: unfolded (CRLF removed), WSP runs as one SP, none at
     * either end. Work line by line between the folds. */
    const char *v = colon + 1, *end = f + n;
    int pending_sp = 0, started = 0;
    while (v < end) {
        const char *e = memmem(v, (size_t)(end - v), "\r\n", 2);
        const char *le = e ? e : end;
        for (const char *p = v; p < le;) {
            if (wsp(*p)) {
                pending_sp = started;
                while (p < le && wsp(*p))
                    p++;
                continue;
            }
            const char *q = p;
            while (q < le && !wsp(*q))
                q++;
            if ((pending_sp && fn(ctx, " ", 1) < 0) || fn(ctx, p, (size_t)(q - p)) < 0)
                return -1;
            pending_sp = 0;
            started = 1;
            p = q;
        }
        v = e ? e + 2 : end;
    }
    return fn(ctx, "\r\n", 2);
}

int mime_dkim_canon_body(const char *body, size_t len, struct buf *out)
{
    size_t start = out->len;
    if (body_canon(body, len, sink_buf, out) < 0) {
        buf_truncate(out, start);
        return -1;
    }
    return 0;
}

int mime_dkim_canon_header(const char *field, size_t len, struct buf *out)
{
    size_t start = out->len;
    if (header_canon(field, len, sink_buf, out) < 0) {
        buf_truncate(out, start);
        return -1;
    }
    return 0;
}

/* ---- keys ------------------------------------------------------------- */

/* dns_name_ok - LDH labels of 1..63, joined by dots, at most max octets. */
static int dns_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > max || s[n - 1] == '.' || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return 0;
            label = 0;
        } else if (isalnum(c) || c == '-' || c == '_') {
            /* '_' appears in selectors and service names, not in hosts */
            if (label == 0 && c == '-')
                return 0;
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return s[n - 1] != '-';
}

/* no_passphrase - refuse encrypted keys instead of prompting on a tty. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* load_key - read one PEM private key into k. */
static int load_key(struct mime_dkim_key *k, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return util_seterr(err, errlen, "%s:%s: cannot open %s: %s", k->domain, k->selector, path, strerror(errno));
    fclose(f);
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return util_seterr(err, errlen, "%s:%s: cannot open %s", k->domain, k->selector, path);
    ERR_clear_error();
    k->pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    ERR_clear_error();
    if (!k->pkey)
        return util_seterr(err, errlen, "%s:%s: %s holds no unencrypted PEM private key", k->domain, k->selector, path);
    if (EVP_PKEY_is_a(k->pkey, "ED25519")) {
        k->ed25519 = 1;
        k->bits = 256;
    } else if (EVP_PKEY_is_a(k->pkey, "RSA")) {
        k->bits = EVP_PKEY_get_bits(k->pkey);
        if (k->bits < MIME_DKIM_RSA_MIN_BITS)
            return util_seterr(err, errlen, "%s:%s: the RSA key in %s has %d bits; at least %d are needed (RFC 8301)",
                          k->domain, k->selector, path, k->bits, MIME_DKIM_RSA_MIN_BITS);
    } else {
        return util_seterr(err, errlen, "%s:%s: the key in %s is neither RSA nor Ed25519", k->domain, k->selector, path);
    }
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

int mime_dkim_keys_load(const char *spec, struct mime_dkim_keys **out, char *err, size_t errlen)
{
    *out = NULL;
    if (strlen(spec) >= SPEC_MAX)
        return util_seterr(err, errlen, "value too long");
    struct mime_dkim_keys *ks = calloc(1, sizeof(*ks));
    char *copy = strdup(spec);
    if (!ks || !copy) {
        free(ks);
        free(copy);
        return util_seterr(err, errlen, "out of memory");
    }
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *e = trim(t);
        if (!*e)
            continue;
        char *c1 = strchr(e, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) {
            util_seterr(err, errlen, "entry \"%.100s\": expected domain:selector:/path/key.pem", e);
            goto fail;
        }
        *c1 = *c2 = '\0';
        char *dom = trim(e), *sel = trim(c1 + 1), *path = trim(c2 + 1);
        if (!dns_name_ok(dom, MIME_DOMAIN_MAX)) {
            util_seterr(err, errlen, "\"%.100s\" is not a domain name", dom);
            goto fail;
        }
        if (!dns_name_ok(sel, MIME_DKIM_SELECTOR_MAX)) {
            util_seterr(err, errlen, "%s: \"%.100s\" is not a selector (letters, digits, '-', '_' and dots)", dom, sel);
            goto fail;
        }
        if (!*path) {
            util_seterr(err, errlen, "%s:%s: no key file", dom, sel);
            goto fail;
        }
        if (ks->n == MIME_DKIM_KEYS_MAX) {
            util_seterr(err, errlen, "more than %d keys", MIME_DKIM_KEYS_MAX);
            goto fail;
        }
        for (char *p = dom; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        for (size_t i = 0; i < ks->n; i++)
            if (!strcmp(ks->v[i].domain, dom)) {
                util_seterr(err, errlen, "%s has more than one key", dom);
                goto fail;
            }
        struct mime_dkim_key *k = &ks->v[ks->n++];
        snprintf(k->domain, sizeof(k->domain), "%s", dom);
        snprintf(k->selector, sizeof(k->selector), "%s", sel);
        if (load_key(k, path, err, errlen) < 0)
            goto fail;
    }
    free(copy);
    *out = ks;
    return 0;
fail:
    free(copy);
    mime_dkim_keys_free(ks);
    return -1;
}

void mime_dkim_keys_free(struct mime_dkim_keys *keys)
{
    if (!keys)
        return;
    for (size_t i = 0; i < keys->n; i++)
        EVP_PKEY_free(keys->v[i].pkey);
    free(keys);
}

void mime_dkim_keys_describe(const struct mime_dkim_keys *keys, char *out, size_t outlen)
{
    if (!outlen)
        return;
    out[0] = '\0';
    size_t used = 0;
    for (size_t i = 0; keys && i < keys->n && used < outlen; i++) {
        const struct mime_dkim_key *k = &keys->v[i];
        int w = snprintf(out + used, outlen - used, "%s%s:%s:%s-%d", i ? "," : "", k->domain, k->selector,
                         k->ed25519 ? "ed25519" : "rsa", k->bits);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

const struct mime_dkim_key *mime_dkim_key_for(const struct mime_dkim_keys *keys, const char *domain)
{
    if (!keys || !domain)
        return NULL;
    for (size_t i = 0; i < keys->n; i++)
        if (!strcasecmp(keys->v[i].domain, domain))
            return &keys->v[i];
    return NULL;
}

/* ---- signing ------------------------------------------------------------ */

/* A header field in the message: offset and length without its CRLF. */
struct field {
    size_t off, len;
};

/* parse_fields - split the header block [0, hlen) (each field ending in
 * CRLF, continuation lines starting with WSP) into fields. */
static int parse_fields(const char *m, size_t hlen, struct field *f, size_t *nf)
{
    size_t i = 0;
    *nf = 0;
    while (i < hlen) {
        if (*nf == SIGN_FIELDS_MAX)
            return -1;
        size_t s = i;
        for (;;) {
            const char *e = memmem(m + i, hlen - i, "\r\n", 2);
            if (!e)
                return -1;
            i = (size_t)(e - m) + 2;
            if (i >= hlen || !wsp(m[i]))
                break;
        }
        f[*nf].off = s;
        f[*nf].len = i - 2 - s;
        (*nf)++;
    }
    return 0;
}

/* field_is - 1 when the field at f is named name (case-insensitive). */
static int field_is(const char *f, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(f, name, n) != 0)
        return 0;
    size_t i = n;
    while (i < len && wsp(f[i]))
        i++;
    return i < len && f[i] == ':';
}

/* Folding writer for the DKIM-Signature field. */
struct fold {
    struct buf *out;
    size_t col;
};

/* fold_put - append tok, after a space when sp, folding first when the
 * line would pass DKIM_LINE. */
static int fold_put(struct fold *f, const char *tok, int sp)
{
    size_t n = strlen(tok);
    if (f->col + (sp ? 1 : 0) + n > DKIM_LINE) {
        if (buf_puts(f->out, "\r\n ") < 0)
            return -1;
        f->col = 1;
    } else if (sp) {
        if (buf_putc(f->out, ' ') < 0)
            return -1;
        f->col++;
    }
    if (buf_append(f->out, tok, n) < 0)
        return -1;
    f->col += n;
    return 0;
}

static int b64(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    if ((n + 2) / 3 * 4 + 1 > outlen)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return 0;
}

/* sign_data - the signature over the canonical header data. */
static int sign_data(const struct mime_dkim_key *k, const struct buf *data, unsigned char *sig, size_t *siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = 0;
    if (!ctx)
        return -1;
    if (k->ed25519) {
        /* RFC 8463 §3: Ed25519 (pure) over the SHA-256 of the data. */
        unsigned char h[32];
        unsigned int hl = 0;
        ok = EVP_Digest(data->data, data->len, h, &hl, EVP_sha256(), NULL) == 1 &&
             EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, siglen, h, hl) == 1;
    } else {
        ok = EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
             EVP_DigestSignUpdate(ctx, data->data, data->len) == 1 && EVP_DigestSignFinal(ctx, sig, siglen) == 1;
    }
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

int mime_dkim_sign(const struct mime_dkim_key *key, struct buf *msg, int64_t now_s, char *err, size_t errlen)
{
    const char *m = msg->data ? msg->data : "";
    size_t len = msg->len;
    /* Header block: up to and including the CRLF before the empty line. */
    size_t hlen, boff;
    const char *sep = len >= 2 && memcmp(m, "\r\n", 2) == 0 ? m : memmem(m, len, "\r\n\r\n", 4);
    if (sep == m) {
        hlen = 0;
        boff = 2;
    } else if (sep) {
        hlen = (size_t)(sep - m) + 2;
        boff = hlen + 2;
    } else {
        return util_seterr(err, errlen, "DKIM: the message has no header/body separator");
    }
    struct field *f = malloc(SIGN_FIELDS_MAX * sizeof(*f));
    struct buf hdr, data;
    buf_init(&hdr, 0);
    buf_init(&data, 0);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;
    size_t nf = 0;
    if (!f || !md) {
        util_seterr(err, errlen, "out of memory");
        goto done;
    }
    if (parse_fields(m, hlen, f, &nf) < 0) {
        util_seterr(err, errlen, "DKIM: malformed or too many header fields");
        goto done;
    }

    /* bh= */
    unsigned char bh[EVP_MAX_MD_SIZE];
    unsigned int bhl = 0;
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 || body_canon(m + boff, len - boff, sink_md, md) < 0 ||
        EVP_DigestFinal_ex(md, bh, &bhl) != 1) {
        util_seterr(err, errlen, "DKIM: cannot hash the body");
        goto done;
    }
    char bh64[64], tok[MIME_DOMAIN_MAX + 64];

    /* The field text up to "b=", and the canonical fields it signs. */
    struct fold fo = {&hdr, 15};
    if (buf_puts(&hdr, "DKIM-Signature:") < 0 || fold_put(&fo, "v=1;", 1) < 0 ||
        fold_put(&fo, key->ed25519 ? "a=ed25519-sha256;" : "a=rsa-sha256;", 1) < 0 ||
        fold_put(&fo, "c=relaxed/relaxed;", 1) < 0)
        goto nomem;
    snprintf(tok, sizeof(tok), "d=%s;", key->domain);
    if (fold_put(&fo, tok, 1) < 0)
        goto nomem;
    snprintf(tok, sizeof(tok), "s=%s;", key->selector);
    if (fold_put(&fo, tok, 1) < 0)
        goto nomem;
    snprintf(tok, sizeof(tok), "t=%lld;", (long long)now_s);
    if (fold_put(&fo, tok, 1) < 0)
        goto nomem;
    int first = 1;
    for (size_t s = 0; s < sizeof(sign_fields) / sizeof(sign_fields[0]); s++) {
        /* Each instance, bottom-up (RFC 6376 §5.4.2); From once more, which
         * a verifier hashes as nothing. */
        int from = !strcmp(sign_fields[s], "from");
        for (size_t i = nf; i-- > 0;) {
            if (!field_is(m + f[i].off, f[i].len, sign_fields[s]))
                continue;
            snprintf(tok, sizeof(tok), "%s%s", first ? "h=" : ":", sign_fields[s]);
            if (fold_put(&fo, tok, first) < 0 || header_canon(m + f[i].off, f[i].len, sink_buf, &data) < 0)
                goto nomem;
            first = 0;
        }
        if (from) {
            snprintf(tok, sizeof(tok), "%s%s", first ? "h=" : ":", sign_fields[s]);
            if (fold_put(&fo, tok, first) < 0)
                goto nomem;
            first = 0;
        }
    }
    if (buf_putc(&hdr, ';') < 0)
        goto nomem;
    fo.col++;
    if (b64(bh, bhl, bh64, sizeof(bh64)) < 0)
        goto nomem;
    snprintf(tok, sizeof(tok), "bh=%s;", bh64);
    if (fold_put(&fo, tok, 1) < 0 || fold_put(&fo, "b=", 1) < 0)
        goto nomem;
    /* The signature field itself, b= empty, without its final CRLF. */
    if (header_canon(hdr.data, hdr.len, sink_buf, &data) < 0)
        goto nomem;
    data.len -= 2;

    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    char sig64[1400];
    if (EVP_PKEY_get_size(key->pkey) > (int)sizeof(sig) || sign_data(key, &data, sig, &siglen) < 0 ||
        b64(sig, siglen, sig64, sizeof(sig64)) < 0) {
        util_seterr(err, errlen, "DKIM: signing with the key for %s failed", key->domain);
        goto done;
    }
    /* b= folded: base64 may be split by FWS anywhere (RFC 6376 §3.5). */
    for (size_t i = 0, n = strlen(sig64); i < n;) {
        size_t room = fo.col < DKIM_LINE ? DKIM_LINE - fo.col : 0;
        if (room == 0) {
            if (buf_puts(&hdr, "\r\n ") < 0)
                goto nomem;
            fo.col = 1;
            continue;
        }
        size_t take = n - i < room ? n - i : room;
        if (buf_append(&hdr, sig64 + i, take) < 0)
            goto nomem;
        fo.col += take;
        i += take;
    }
    if (buf_puts(&hdr, "\r\n") < 0)
        goto nomem;

    /* Prepend, within msg's maximum. */
    struct buf signed_msg;
    buf_init(&signed_msg, msg->max);
    if (buf_append(&signed_msg, hdr.data, hdr.len) < 0 || buf_append(&signed_msg, m, len) < 0) {
        buf_free(&signed_msg);
        util_seterr(err, errlen, "message too large");
        goto done;
    }
    buf_free(msg);
    *msg = signed_msg;
    rc = 0;
    goto done;
nomem:
    util_seterr(err, errlen, "out of memory");
done:
    EVP_MD_CTX_free(md);
    free(f);
    buf_free(&hdr);
    buf_free(&data);
    return rc;
}
