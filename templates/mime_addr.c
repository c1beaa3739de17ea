/*
 * mime_addr.c - RFC 5322 mailboxes: parse address-lists, validate
 * addr-specs, write a mailbox into a header (see mime.h).
 *
 * Grammar: RFC 5322 §3.4 (address-list, groups, angle-addr, comments)
 * with RFC 6532 (UTF-8 allowed in atoms, quoted strings, comments and
 * domain literals). Obsolete forms (routes, obs-local-part, empty list
 * members) are refused, with one exception: "." inside a display name
 * (obs-phrase), because "J. Doe <j@x>" is too common to refuse.
 * RFC 2047 encoded-words in display names are decoded when their charset
 * is UTF-8, US-ASCII or ISO-8859-1; others are kept as literal text.
 *
 * Domains are further held to RFC 5321 host-name syntax (letters, digits,
 * hyphens; UTF-8 labels allowed), since anything else cannot be delivered.
 *
 * Limits: MIME_ADDR_MAX octets per addr-spec (local part MIME_LOCAL_MAX,
 * domain MIME_DOMAIN_MAX, labels 63), MIME_NAME_MAX octets per display
 * name, MIME_ADDR_LIST_MAX mailboxes per list, comments nested at most
 * MIME_COMMENT_DEPTH_MAX deep. The parser is a single forward pass.
 *
 * SECURITY: input is untrusted. The whole string is checked for CR, LF and
 * malformed UTF-8 before parsing, so nothing parsed here can smuggle a
 * header line; decoded encoded-words are checked again for the same.
 */
#include "templates/mime.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "common/util.h"

/* Longest decoded encoded-word we accept; RFC 2047 words are <= 75 chars. */
#define EW_DECODED_MAX 128



/* is_atext - RFC 5322 atext, extended by RFC 6532 to any non-ASCII octet
 * (the whole input is known to be valid UTF-8). */
static int is_atext(unsigned char c)
{
    if (c >= 0x80)
        return 1;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* is_qtext - RFC 5322 qtext plus the white space FWS allows inside a
 * quoted-string. */
static int is_qtext(unsigned char c)
{
    return c >= 0x80 || c == ' ' || c == '\t' || c == 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126);
}

/* is_dtext - RFC 5322 dtext (domain-literal content). */
static int is_dtext(unsigned char c)
{
    return c >= 0x80 || (c >= 33 && c <= 90) || (c >= 94 && c <= 126);
}

/* Dot-atom-text check over [s, s+n): atext runs separated by single dots. */
static int dot_atom_ok(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (s[i + 1] == '.')
                return 0;
        } else if (!is_atext(c)) {
            return 0;
        }
    }
    return 1;
}

/* check_literal - "[...]" domain literal: IPv4, "IPv6:" + IPv6, or a
 * general literal "tag:content" (RFC 5321 §4.1.3). */
static int check_literal(const char *d, size_t n, char *err, size_t errlen)
{
    char tmp[MIME_DOMAIN_MAX + 1];
    if (n < 3 || d[n - 1] != ']')
        return util_seterr(err, errlen, "unterminated address literal");
    size_t k = n - 2;
    memcpy(tmp, d + 1, k);
    tmp[k] = '\0';
    for (size_t i = 0; i < k; i++)
        if (!is_dtext((unsigned char)tmp[i]) || (unsigned char)tmp[i] >= 0x80)
            return util_seterr(err, errlen, "invalid character in address literal");
    unsigned char bin[16];
    if (strncasecmp(tmp, "IPv6:", 5) == 0) {
        if (inet_pton(AF_INET6, tmp + 5, bin) != 1)
            return util_seterr(err, errlen, "invalid IPv6 address literal");
        return 0;
    }
    if (strspn(tmp, "0123456789.") == k) {
        if (inet_pton(AF_INET, tmp, bin) != 1)
            return util_seterr(err, errlen, "invalid IPv4 address literal");
        return 0;
    }
    /* General-address-literal: Ldh-str ":" 1*dcontent */
    const char *colon = strchr(tmp, ':');
    if (!colon || colon == tmp || !colon[1])
        return util_seterr(err, errlen, "invalid address literal");
    for (const char *p = tmp; p < colon; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return util_seterr(err, errlen, "invalid address literal tag");
    if (colon[-1] == '-')
        return util_seterr(err, errlen, "invalid address literal tag");
    return 0;
}

int mime_addr_check_email(const char *email, char *err, size_t errlen)
{
    if (!email || !*email)
        return util_seterr(err, errlen, "empty address");
    size_t n = strlen(email);
    if (util_has_crlf(email))
        return util_seterr(err, errlen, "address contains CR or LF");
    if (n > MIME_ADDR_MAX)
        return util_seterr(err, errlen, "address longer than %d octets", MIME_ADDR_MAX);
    if (!util_utf8_valid(email, n))
        return util_seterr(err, errlen, "address is not valid UTF-8");

    const char *at;
    if (email[0] == '"') {
        const char *p = email + 1;
        while (*p && *p != '"') {
            if (*p == '\\') {
                p++;
                /* quoted-pair = "\" (VCHAR / WSP); UTF-8 allowed by RFC 6532 */
                unsigned char c = (unsigned char)*p;
                if (!(c == ' ' || c == '\t' || (c >= 33 && c <= 126) || c >= 0x80))
                    return util_seterr(err, errlen, "invalid escape in quoted local part");
            } else if (!is_qtext((unsigned char)*p)) {
                return util_seterr(err, errlen, "invalid character in quoted local part");
            }
            p++;
        }
        if (*p != '"')
            return util_seterr(err, errlen, "unterminated quoted local part");
        at = p + 1;
        if (*at != '@')
            return util_seterr(err, errlen, "missing '@' after quoted local part");
    } else {
        at = strchr(email, '@');
        if (!at)
            return util_seterr(err, errlen, "missing '@' in address");
        if (at == email)
            return util_seterr(err, errlen, "empty local part");
        if (!dot_atom_ok(email, (size_t)(at - email)))
            return util_seterr(err, errlen, "invalid local part");
    }
    if ((size_t)(at - email) > MIME_LOCAL_MAX)
        return util_seterr(err, errlen, "local part longer than %d octets", MIME_LOCAL_MAX);

    const char *dom = at + 1;
    size_t dn = strlen(dom);
    if (dn == 0)
        return util_seterr(err, errlen, "empty domain");
    if (dn > MIME_DOMAIN_MAX)
        return util_seterr(err, errlen, "domain longer than %d octets", MIME_DOMAIN_MAX);
    if (dom[0] == '[')
        return check_literal(dom, dn, err, errlen);
    /* A dot-atom, narrowed to what SMTP can route (RFC 5321 §4.1.2
     * sub-domains): letters, digits and inner hyphens, or UTF-8 labels
     * (RFC 6531), each 1..63 octets. */
    size_t label = 0;
    for (size_t i = 0; i <= dn; i++) {
        unsigned char c = i < dn ? (unsigned char)dom[i] : '.';
        if (c == '.') {
            if (label == 0)
                return util_seterr(err, errlen, "invalid domain: empty label");
            if (label > 63)
                return util_seterr(err, errlen, "domain label longer than 63 octets");
            if (dom[i - 1] == '-' || dom[i - label] == '-')
                return util_seterr(err, errlen, "invalid domain: label starts or ends with '-'");
            label = 0;
        } else if (c >= 0x80 || c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c >= '0' && c <= '9')) {
            label++;
        } else {
            return util_seterr(err, errlen, "invalid character in domain");
        }
    }
    return 0;
}

int mime_addr_set(struct mime_addr *a, const char *email, const char *name, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    if (mime_addr_check_email(email, err, errlen) < 0)
        return -1;
    if (name && *name) {
        size_t n = strlen(name);
        if (util_has_crlf(name))
            return util_seterr(err, errlen, "name contains CR or LF");
        if (n > MIME_NAME_MAX)
            return util_seterr(err, errlen, "name longer than %d octets", MIME_NAME_MAX);
        if (!util_utf8_valid(name, n))
            return util_seterr(err, errlen, "name is not valid UTF-8");
        a->name = strdup(name);
        if (!a->name)
            return util_seterr(err, errlen, "out of memory");
    }
    a->email = strdup(email);
    if (!a->email) {
        mime_addr_free(a);
        return util_seterr(err, errlen, "out of memory");
    }
    return 0;
}

int mime_addr_list_push(struct mime_addr_list *l, const struct mime_addr *a)
{
    if (l->n >= MIME_ADDR_LIST_MAX)
        return -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct mime_addr *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    struct mime_addr c = {NULL, NULL};
    if (a->name && !(c.name = strdup(a->name)))
        return -1;
    if (!a->email || !(c.email = strdup(a->email))) {
        free(c.name);
        return -1;
    }
    l->v[l->n++] = c;
    return 0;
}

void mime_addr_free(struct mime_addr *a)
{
    if (!a)
        return;
    free(a->name);
    free(a->email);
    a->name = a->email = NULL;
}

void mime_addr_list_free(struct mime_addr_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        mime_addr_free(&l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* ---- parser ---------------------------------------------------------- */

struct parser {
    const char *s;   /* whole input, valid UTF-8 without CR/LF */
    const char *p;   /* current position */
    char *err;
    size_t errlen;
};

static int perr(struct parser *ps, const char *what)
{
    return util_seterr(ps->err, ps->errlen, "%s at offset %zu", what, (size_t)(ps->p - ps->s));
}

/* skip_cfws - skip white space and (nested (comments)). */
static int skip_cfws(struct parser *ps)
{
    for (;;) {
        while (*ps->p == ' ' || *ps->p == '\t')
            ps->p++;
        if (*ps->p != '(')
            return 0;
        int depth = 0;
        do {
            char c = *ps->p;
            if (c == '\0')
                return perr(ps, "unterminated comment");
            if (c == '\\') {
                ps->p++;
                if (*ps->p == '\0')
                    return perr(ps, "unterminated comment");
            } else if (c == '(') {
                if (++depth > MIME_COMMENT_DEPTH_MAX)
                    return perr(ps, "comments nested too deeply");
            } else if (c == ')') {
                depth--;
            } else if ((unsigned char)c < 0x20 && c != '\t') {
                return perr(ps, "control character in comment");
            }
            ps->p++;
        } while (depth > 0);
    }
}

/* quoted_string - at '"': consume the quoted-string, appending its
 * unescaped content to content (may be NULL). */
static int quoted_string(struct parser *ps, struct buf *content)
{
    ps->p++;
    for (;;) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '\0')
            return perr(ps, "unterminated quoted string");
        if (c == '"') {
            ps->p++;
            return 0;
        }
        if (c == '\\') {
            ps->p++;
            c = (unsigned char)*ps->p;
            if (!(c == ' ' || c == '\t' || (c >= 33 && c <= 126) || c >= 0x80))
                return perr(ps, "invalid escape in quoted string");
        } else if (!is_qtext(c)) {
            return perr(ps, "invalid character in quoted string");
        }
        if (content && buf_putc(content, (char)c) < 0)
            return perr(ps, "display name too long");
        ps->p++;
    }
}

/* hexval - value of one hex digit, or -1. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* ew_decode - decode one RFC 2047 encoded-word [w, w+n) into out as
 * UTF-8. Returns 0, or -1 when it is not an encoded-word we can decode
 * safely (the caller then keeps it as literal text). */
static int ew_decode(const char *w, size_t n, struct buf *out)
{
    if (n < 8 || n > MIME_ENCODED_WORD_MAX || w[0] != '=' || w[1] != '?' || w[n - 2] != '?' || w[n - 1] != '=')
        return -1;
    const char *cs = w + 2, *end = w + n - 2;
    const char *q1 = memchr(cs, '?', (size_t)(end - cs));
    if (!q1 || q1 + 3 > end || q1[2] != '?')
        return -1;
    char enc = q1[1];
    const char *txt = q1 + 3;
    size_t tn = (size_t)(end - txt);
    if (memchr(txt, '?', tn))
        return -1;
    size_t csn = (size_t)(q1 - cs);
    const char *star = memchr(cs, '*', csn); /* RFC 2231 language suffix */
    if (star)
        csn = (size_t)(star - cs);
    int latin1;
    if ((csn == 5 && strncasecmp(cs, "UTF-8", 5) == 0) || (csn == 8 && strncasecmp(cs, "US-ASCII", 8) == 0))
        latin1 = 0;
    else if (csn == 10 && strncasecmp(cs, "ISO-8859-1", 10) == 0)
        latin1 = 1;
    else
        return -1;

    unsigned char raw[EW_DECODED_MAX];
    size_t rn = 0;
    if (enc == 'B' || enc == 'b') {
        if (tn % 4 != 0 || tn / 4 * 3 > sizeof(raw))
            return -1;
        if (tn) {
            int k = EVP_DecodeBlock(raw, (const unsigned char *)txt, (int)tn);
            if (k < 0)
                return -1;
            rn = (size_t)k;
            /* EVP_DecodeBlock counts the padding as zero octets */
            if (txt[tn - 1] == '=')
                rn--;
            if (txt[tn - 2] == '=')
                rn--;
        }
    } else if (enc == 'Q' || enc == 'q') {
        for (size_t i = 0; i < tn; i++) {
            if (rn >= sizeof(raw))
                return -1;
            if (txt[i] == '_') {
                raw[rn++] = ' ';
            } else if (txt[i] == '=') {
                int hi, lo;
                if (i + 2 >= tn || (hi = hexval(txt[i + 1])) < 0 || (lo = hexval(txt[i + 2])) < 0)
                    return -1;
                raw[rn++] = (unsigned char)(hi << 4 | lo);
                i += 2;
            } else {
                raw[rn++] = (unsigned char)txt[i];
            }
        }
    } else {
        return -1;
    }

    size_t start = out->len;
    for (size_t i = 0; i < rn; i++) {
        unsigned char c = raw[i];
        if (c == 0 || c == '\r' || c == '\n')
            goto bad;
        if (latin1 && c >= 0x80) {
            char two[2] = {(char)(0xc0 | (c >> 6)), (char)(0x80 | (c & 0x3f))};
            if (buf_append(out, two, 2) < 0)
                goto bad;
        } else if (buf_putc(out, (char)c) < 0) {
            goto bad;
        }
    }
    if (!util_utf8_valid(out->data ? out->data + start : "", out->len - start))
        goto bad;
    return 0;
bad:
    buf_truncate(out, start);
    return -1;
}

/* The words before '<', ':' or '@': a display name, a group name or a
 * local part. The first word's raw text is kept for the local-part case. */
struct phrase {
    struct buf name;      /* words joined by one space, unescaped, decoded */
    size_t nwords;
    const char *first;    /* raw text of the first word */
    size_t first_len;
    int last_ew;          /* previous word was a decoded encoded-word */
};

/* phrase_words - read 1*word (atoms, which may contain '.', and
 * quoted-strings) separated by CFWS. Stops at any other character. */
static int phrase_words(struct parser *ps, struct phrase *ph)
{
    for (;;) {
        if (skip_cfws(ps) < 0)
            return -1;
        const char *w = ps->p;
        unsigned char c = (unsigned char)*w;
        int quoted = c == '"';
        if (!quoted && !is_atext(c) && c != '.')
            return 0;
        int sep = ph->nwords > 0, ew = 0;
        if (quoted) {
            if ((sep && buf_putc(&ph->name, ' ') < 0))
                return perr(ps, "display name too long");
            if (quoted_string(ps, &ph->name) < 0)
                return -1;
        } else {
            while (is_atext((unsigned char)*ps->p) || *ps->p == '.')
                ps->p++;
            size_t n = (size_t)(ps->p - w);
            struct buf dec;
            buf_init(&dec, EW_DECODED_MAX * 2);
            ew = ew_decode(w, n, &dec) == 0;
            /* Adjacent encoded-words join without the space (RFC 2047 §6.2). */
            int rc = (sep && !(ew && ph->last_ew)) ? buf_putc(&ph->name, ' ') : 0;
            if (rc == 0)
                rc = ew ? buf_append(&ph->name, dec.data, dec.len) : buf_append(&ph->name, w, n);
            buf_free(&dec);
            if (rc < 0)
                return perr(ps, "display name too long");
        }
        if (ph->nwords == 0) {
            ph->first = w;
            ph->first_len = (size_t)(ps->p - w);
        }
        ph->nwords++;
        ph->last_ew = ew;
    }
}

/* domain_part - at the domain: dot-atom-text or "[literal]"; appends the
 * raw text to out. */
static int domain_part(struct parser *ps, struct buf *out)
{
    const char *d = ps->p;
    if (*d == '[') {
        ps->p++;
        while (is_dtext((unsigned char)*ps->p))
            ps->p++;
        if (*ps->p != ']')
            return perr(ps, "unterminated address literal");
        ps->p++;
    } else {
        while (is_atext((unsigned char)*ps->p) || *ps->p == '.')
            ps->p++;
        if (ps->p == d)
            return perr(ps, "missing domain");
    }
    if (buf_append(out, d, (size_t)(ps->p - d)) < 0)
        return perr(ps, "address too long");
    return 0;
}

/* finish_email - validate the assembled addr-spec and store it. */
static int finish_email(struct parser *ps, struct buf *email, char **out)
{
    char why[128];
    if (mime_addr_check_email(email->data ? email->data : "", why, sizeof(why)) < 0)
        return util_seterr(ps->err, ps->errlen, "%s: \"%.80s\"", why, email->data ? email->data : "");
    *out = buf_steal(email);
    return 0;
}

/* angle_addr - at '<': "<" addr-spec ">" with CFWS allowed around the parts. */
static int angle_addr(struct parser *ps, char **email)
{
    struct buf e;
    buf_init(&e, MIME_ADDR_MAX + 1);
    ps->p++;
    if (skip_cfws(ps) < 0)
        goto fail;
    const char *l = ps->p;
    if (*l == '"') {
        if (quoted_string(ps, NULL) < 0)
            goto fail;
    } else {
        while (is_atext((unsigned char)*ps->p) || *ps->p == '.')
            ps->p++;
    }
    if (ps->p == l) {
        perr(ps, *l == '>' ? "empty address in <>" : "invalid local part");
        goto fail;
    }
    if (buf_append(&e, l, (size_t)(ps->p - l)) < 0) {
        perr(ps, "address too long");
        goto fail;
    }
    if (skip_cfws(ps) < 0)
        goto fail;
    if (*ps->p != '@') {
        util_seterr(ps->err, ps->errlen, "missing '@' in address \"%.80s\"", e.data);
        goto fail;
    }
    ps->p++;
    if (buf_putc(&e, '@') < 0) {
        perr(ps, "address too long");
        goto fail;
    }
    if (skip_cfws(ps) < 0 || domain_part(ps, &e) < 0 || skip_cfws(ps) < 0)
        goto fail;
    if (*ps->p != '>') {
        perr(ps, "expected '>'");
        goto fail;
    }
    ps->p++;
    if (finish_email(ps, &e, email) < 0)
        goto fail;
    return 0;
fail:
    buf_free(&e);
    return -1;
}

/* address - parse one address (a mailbox or a group). A group's mailboxes are appended
 * to out; a mailbox is appended to out, or stored in *one when one is not
 * NULL (then groups are refused). */
static int address(struct parser *ps, struct mime_addr_list *out, struct mime_addr *one, int in_group)
{
    struct phrase ph;
    memset(&ph, 0, sizeof(ph));
    buf_init(&ph.name, MIME_NAME_MAX);
    struct mime_addr a = {NULL, NULL};
    int rc = -1;

    if (skip_cfws(ps) < 0 || phrase_words(ps, &ph) < 0)
        goto done;
    char c = *ps->p;
    if (c == '<') {
        if (ph.nwords && ph.name.len) {
            a.name = buf_steal(&ph.name);
        }
        if (angle_addr(ps, &a.email) < 0)
            goto done;
    } else if (c == ':' && !in_group && !one) {
        if (ph.nwords == 0) {
            perr(ps, "group without a name");
            goto done;
        }
        ps->p++;
        if (skip_cfws(ps) < 0)
            goto done;
        if (*ps->p != ';') {
            for (;;) {
                if (address(ps, out, NULL, 1) < 0)
                    goto done;
                if (*ps->p == ',') {
                    ps->p++;
                    continue;
                }
                break;
            }
        }
        if (*ps->p != ';') {
            perr(ps, "expected ';' to end the group");
            goto done;
        }
        ps->p++;
        rc = skip_cfws(ps);
        goto done;
    } else if (c == ':') {
        perr(ps, in_group ? "nested group" : "group where one mailbox was expected");
        goto done;
    } else if (c == '@') {
        if (ph.nwords != 1) {
            perr(ps, ph.nwords ? "display name without <angle brackets>" : "empty local part");
            goto done;
        }
        struct buf e;
        buf_init(&e, MIME_ADDR_MAX + 1);
        ps->p++;
        if (buf_append(&e, ph.first, ph.first_len) < 0 || buf_putc(&e, '@') < 0) {
            buf_free(&e);
            perr(ps, "address too long");
            goto done;
        }
        if (skip_cfws(ps) < 0 || domain_part(ps, &e) < 0 || finish_email(ps, &e, &a.email) < 0) {
            buf_free(&e);
            goto done;
        }
    } else if (ph.nwords) {
        util_seterr(ps->err, ps->errlen, "missing '@' in address \"%.80s\"", ph.name.data ? ph.name.data : "");
        goto done;
    } else {
        perr(ps, c ? "unexpected character" : "missing address");
        goto done;
    }
    if (skip_cfws(ps) < 0)
        goto done;
    if (one) {
        *one = a;
        memset(&a, 0, sizeof(a));
    } else if (mime_addr_list_push(out, &a) < 0) {
        util_seterr(ps->err, ps->errlen, out->n >= MIME_ADDR_LIST_MAX ? "too many addresses" : "out of memory");
        goto done;
    }
    rc = 0;
done:
    mime_addr_free(&a);
    buf_free(&ph.name);
    return rc;
}

/* check_input - the whole string must be UTF-8 without CR, LF or NUL. */
static int check_input(const char *s, char *err, size_t errlen)
{
    if (!s)
        return util_seterr(err, errlen, "missing address");
    if (util_has_crlf(s))
        return util_seterr(err, errlen, "address contains CR or LF");
    if (!util_utf8_valid(s, strlen(s)))
        return util_seterr(err, errlen, "address is not valid UTF-8");
    return 0;
}

int mime_addr_parse_list(const char *s, struct mime_addr_list *out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (check_input(s, err, errlen) < 0)
        return -1;
    struct parser ps = {s, s, err, errlen};
    for (;;) {
        if (address(&ps, out, NULL, 0) < 0)
            return -1;
        if (*ps.p == ',') {
            ps.p++;
            continue;
        }
        if (*ps.p != '\0')
            return perr(&ps, *ps.p == '>' ? "unexpected '>'" : "expected ',' between addresses");
        return 0;
    }
}

int mime_addr_parse_one(const char *s, struct mime_addr *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    if (check_input(s, err, errlen) < 0)
        return -1;
    struct parser ps = {s, s, err, errlen};
    if (address(&ps, NULL, out, 0) < 0)
        return -1;
    if (*ps.p != '\0') {
        mime_addr_free(out);
        return perr(&ps, *ps.p == ',' ? "more than one address" : "unexpected text after the address");
    }
    return 0;
}

/* ---- formatting ------------------------------------------------------ */

enum name_style { NAME_ATOMS, NAME_QUOTED, NAME_ENCODED };

/* name_style - how to write a display name. Atoms when it is atext words
 * separated by single spaces; encoded-words when it has non-ASCII or
 * control characters, looks like an encoded-word itself (a receiver would
 * decode it), or has a word too long to fold; else a quoted-string. */
static enum name_style name_style(const char *name)
{
    int atoms = name[0] != ' ';
    size_t run = 0;
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x80 || c < 0x20 || c == 0x7f)
            return NAME_ENCODED;
        if (c == '=' && p[1] == '?')
            return NAME_ENCODED;
        if (c == ' ') {
            run = 0;
            if (p[1] == ' ' || p[1] == '\0')
                atoms = 0;
        } else {
            /* +2: escaping and the closing quote */
            if (++run + 2 > MIME_LINE_SOFT - 2)
                return NAME_ENCODED;
            if (!is_atext(c))
                atoms = 0;
        }
    }
    return atoms ? NAME_ATOMS : NAME_QUOTED;
}

/* put_words - write name as atoms or one quoted-string, folding before a
 * space when the next word would pass MIME_LINE_SOFT. Folding inside a
 * quoted-string is allowed (FWS) and unfolding restores it exactly. */
static int put_words(struct buf *out, const char *name, int quote, size_t *col)
{
    if (quote && buf_putc(out, '"') < 0)
        return -1;
    *col += quote;
    const char *p = name;
    for (int first = 1;; first = 0) {
        size_t n = strcspn(p, " ");
        size_t width = n;
        if (quote) {
            for (size_t i = 0; i < n; i++)
                width += p[i] == '"' || p[i] == '\\';
            if (p[n] == '\0')
                width++;
        }
        if (!first) {
            if (n > 0 && *col + 1 + width > MIME_LINE_SOFT) {
                if (buf_puts(out, "\r\n") < 0)
                    return -1;
                *col = 0;
            }
            if (buf_putc(out, ' ') < 0)
                return -1;
            (*col)++;
        }
        for (size_t i = 0; i < n; i++) {
            if (quote && (p[i] == '"' || p[i] == '\\') && buf_putc(out, '\\') < 0)
                return -1;
            if (buf_putc(out, p[i]) < 0)
                return -1;
        }
        *col += width;
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    if (quote && buf_putc(out, '"') < 0)
        return -1;
    return 0;
}

/* plain_word - a word of a display name that can stay an atom next to
 * encoded-words: ASCII atext only, and not mistakable for an encoded-word. */
static int plain_word(const char *w, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_atext((unsigned char)w[i]) || (unsigned char)w[i] >= 0x80 || (w[i] == '=' && i + 1 < n && w[i + 1] == '?'))
            return 0;
    return 1;
}

/* put_mixed - a display name that needs RFC 2047: plain ASCII words stay
 * atoms and each run of other words (with the spaces inside the run)
 * becomes encoded-words. Keeping runs short matters: white space between
 * two encoded-words is dropped by RFC 2047 decoders (§6.2) but kept by
 * some (Python 3.11's phrase parser), so a run is only split when it
 * cannot fit in one word. */
static int put_mixed(struct buf *out, const char *name, size_t *col)
{
    size_t n = strlen(name), i = 0;
    /* Leading, trailing or repeated spaces would be lost between atoms:
     * such a name goes whole as encoded-words, which keep every octet. */
    if (name[0] == ' ' || name[n - 1] == ' ' || strstr(name, "  "))
        return mime_encode_words(name, n, out, col);
    int first = 1;
    while (i < n) {
        /* a word at i; extend to a run while words need encoding */
        size_t e = i + strcspn(name + i, " ");
        int plain = plain_word(name + i, e - i);
        if (!plain) {
            while (e < n) {
                size_t nx = e + 1 + strcspn(name + e + 1, " ");
                if (plain_word(name + e + 1, nx - e - 1))
                    break;
                e = nx;
            }
        }
        size_t len = e - i;
        /* width of the text if it goes on this line in one piece */
        size_t width = plain ? len : (len <= 45 ? 12 + (len + 2) / 3 * 4 : 12 + 8);
        if (!first) {
            if (*col + 1 + width > MIME_LINE_SOFT) {
                if (buf_puts(out, "\r\n") < 0)
                    return -1;
                *col = 0;
            }
            if (buf_putc(out, ' ') < 0)
                return -1;
            (*col)++;
        }
        if (plain) {
            if (buf_append(out, name + i, len) < 0)
                return -1;
            *col += len;
        } else if (mime_encode_words(name + i, len, out, col) < 0) {
            return -1;
        }
        first = 0;
        i = e + 1;
    }
    return 0;
}

int mime_format_addr(const struct mime_addr *a, struct buf *out, size_t *col)
{
    size_t start = out->len, col0 = *col;
    if (!a->email)
        return -1;
    size_t elen = strlen(a->email);
    if (a->name && *a->name) {
        int rc;
        switch (name_style(a->name)) {
        case NAME_ATOMS:
            rc = put_words(out, a->name, 0, col);
            break;
        case NAME_QUOTED:
            rc = put_words(out, a->name, 1, col);
            break;
        default:
            rc = put_mixed(out, a->name, col);
            break;
        }
        if (rc < 0)
            goto full;
        if (*col + 3 + elen > MIME_LINE_SOFT) {
            if (buf_puts(out, "\r\n") < 0)
                goto full;
            *col = 0;
        }
        if (buf_puts(out, " <") < 0 || buf_puts(out, a->email) < 0 || buf_putc(out, '>') < 0)
            goto full;
        *col += elen + 3;
    } else {
        if (buf_puts(out, a->email) < 0)
            goto full;
        *col += elen;
    }
    return 0;
full:
    buf_truncate(out, start);
    *col = col0;
    return -1;
}
