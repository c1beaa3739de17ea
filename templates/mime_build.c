/*
 * mime_build.c - render a whole RFC 5322 / MIME message (see mime.h).
 *
 * Layout: From, Reply-To, To, Cc, Subject, Date, Message-ID, MIME-Version,
 * the caller's fields, then Content-Type and Content-Transfer-Encoding.
 * One text part goes in the top-level entity; text and html together go
 * as multipart/alternative with text/plain first (RFC 2046 §5.1.4: the
 * richest alternative last). Bodies are 7bit when they can be, else
 * quoted-printable; text parts are labelled charset=UTF-8.
 *
 * Limits: the whole message is bounded by out's maximum; "message too
 * large" is reported when it is reached. Lines never exceed MIME_LINE_HARD.
 *
 * SECURITY: every value is checked for CR/LF again here, even if the
 * gateway did so already; caller fields may not repeat the fields written
 * here, and Bcc is refused: blind recipients live only in the envelope.
 * The multipart boundary is random and checked against both bodies.
 */
#include "templates/mime.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/util.h"

#define BOUNDARY_PREFIX "=_mg_"
#define BOUNDARY_RANDOM 16   /* octets of randomness: 32 hex digits */
#define BOUNDARY_TRIES 8
#define MESSAGE_ID_MAX 250   /* "<" id ">" must fit a header line comfortably */

/* Fields mime_build writes itself (each may occur once, RFC 5322 §3.6),
 * plus Bcc, which must never reach the message. */
static const char *const owned_fields[] = {
    "From", "Reply-To", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
};

static int seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* check_addr - a mailbox filled by hand must meet mime_addr_set's rules. */
static int check_addr(const struct mime_addr *a, const char *field, char *err, size_t errlen)
{
    char why[128];
    if (mime_addr_check_email(a->email, why, sizeof(why)) < 0)
        return seterr(err, errlen, "%s: %s", field, why);
    if (a->name) {
        size_t n = strlen(a->name);
        if (util_has_crlf(a->name) || !util_utf8_valid(a->name, n) || n > MIME_NAME_MAX)
            return seterr(err, errlen, "%s: display name has CR/LF, bad UTF-8 or is too long", field);
    }
    return 0;
}

/* put_addr_field - "Name: a, b, ..." CRLF, folding after a comma when the
 * next mailbox would pass MIME_LINE_SOFT. Returns 0 or -1 (out full). */
static int put_addr_field(struct buf *out, const char *name, const struct mime_addr *v, size_t n)
{
    size_t col = strlen(name) + 1;
    struct buf trial;
    if (buf_puts(out, name) < 0 || buf_putc(out, ':') < 0)
        return -1;
    buf_init(&trial, 0);
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            if (buf_putc(out, ',') < 0)
                goto full;
            col++;
            /* Measure the mailbox's first line where it would start. */
            size_t tcol = col + 1;
            buf_reset(&trial);
            if (mime_format_addr(&v[i], &trial, &tcol) < 0)
                goto full;
            size_t first = strcspn(trial.data, "\r");
            if (col + 1 + first > MIME_LINE_SOFT) {
                if (buf_puts(out, "\r\n") < 0)
                    goto full;
                col = 0;
            }
        }
        if (buf_putc(out, ' ') < 0)
            goto full;
        col++;
        if (mime_format_addr(&v[i], out, &col) < 0)
            goto full;
    }
    buf_free(&trial);
    return buf_puts(out, "\r\n");
full:
    buf_free(&trial);
    return -1;
}

/* put_date - "Date: Mon, 30 Nov 2026 09:00:00 +0000" (RFC 5322 §3.3),
 * spelled out here rather than with strftime, whose names follow the
 * locale. */
static int put_date(struct buf *out, int64_t ms)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11)
        return -1;
    return buf_printf(out, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
                      months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* message_id_ok - printable ASCII with one '@', no angle brackets. */
static int message_id_ok(const char *id)
{
    if (!id || !*id || strlen(id) > MESSAGE_ID_MAX)
        return 0;
    const char *at = strchr(id, '@');
    if (!at || at == id || !at[1] || strchr(at + 1, '@'))
        return 0;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        if (*p < 33 || *p > 126 || *p == '<' || *p == '>')
            return 0;
    return 1;
}

/* encode_body - the body as it goes on the wire; *cte names the transfer
 * encoding chosen. With terminate, a non-empty body is made to end in CRLF
 * (a single part ends the message, and SMTP DATA needs the line end); in a
 * multipart the delimiter supplies the CRLF instead, so that the content
 * decodes back exactly, final line end or not (RFC 2046 §5.1.1). */
static int encode_body(const char *body, int terminate, struct buf *dst, const char **cte)
{
    size_t n = strlen(body);
    if (mime_body_needs_encoding(body, n)) {
        *cte = "quoted-printable";
        if (mime_qp_encode(body, n, dst) < 0)
            return -1;
    } else {
        /* 7bit: only the line ends change, LF becoming CRLF */
        *cte = "7bit";
        for (size_t i = 0; i < n;) {
            size_t k = strcspn(body + i, "\r\n");
            if (buf_append(dst, body + i, k) < 0)
                return -1;
            i += k;
            if (i < n) {
                if (buf_puts(dst, "\r\n") < 0)
                    return -1;
                i += body[i] == '\r' ? 2 : 1; /* a CR here is always part of CRLF */
            }
        }
    }
    if (terminate && dst->len && (dst->len < 2 || memcmp(dst->data + dst->len - 2, "\r\n", 2) != 0))
        return buf_puts(dst, "\r\n");
    return 0;
}

/* put_part_headers - Content-Type and Content-Transfer-Encoding. */
static int put_part_headers(struct buf *out, const char *type, const char *cte)
{
    return buf_printf(out, "Content-Type: %s; charset=UTF-8\r\nContent-Transfer-Encoding: %s\r\n", type, cte);
}

/* check_message - everything that can be refused before writing. */
static int check_message(const struct mime_message *m, char *err, size_t errlen)
{
    if (!m->from.email)
        return seterr(err, errlen, "missing From address");
    if (check_addr(&m->from, "From", err, errlen) < 0)
        return -1;
    const struct {
        const char *field;
        const struct mime_addr_list *l;
    } lists[] = {{"Reply-To", &m->reply_to}, {"To", &m->to}, {"Cc", &m->cc}};
    for (size_t k = 0; k < sizeof(lists) / sizeof(lists[0]); k++)
        for (size_t i = 0; i < lists[k].l->n; i++)
            if (check_addr(&lists[k].l->v[i], lists[k].field, err, errlen) < 0)
                return -1;
    if (!message_id_ok(m->message_id))
        return seterr(err, errlen, "invalid Message-ID");
    if (m->subject && (util_has_crlf(m->subject) || !util_utf8_valid(m->subject, strlen(m->subject))))
        return seterr(err, errlen, "Subject contains CR or LF or is not valid UTF-8");
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct mime_header_field *h = &m->headers[i];
        if (!mime_header_name_valid(h->name))
            return seterr(err, errlen, "invalid header name \"%.80s\"", h->name ? h->name : "");
        for (size_t k = 0; k < sizeof(owned_fields) / sizeof(owned_fields[0]); k++)
            if (strcasecmp(h->name, owned_fields[k]) == 0)
                return seterr(err, errlen, "header %s is set by mailgate", owned_fields[k]);
        if (!h->value || util_has_crlf(h->value))
            return seterr(err, errlen, "header %s: value contains CR or LF", h->name);
        if (!util_utf8_valid(h->value, strlen(h->value)))
            return seterr(err, errlen, "header %s: value is not valid UTF-8", h->name);
    }
    if (m->text && !util_utf8_valid(m->text, strlen(m->text)))
        return seterr(err, errlen, "text body is not valid UTF-8");
    if (m->html && !util_utf8_valid(m->html, strlen(m->html)))
        return seterr(err, errlen, "html body is not valid UTF-8");
    return 0;
}

/* put_headers - the top-level fields up to and including the caller's. */
static int put_headers(const struct mime_message *m, struct buf *out)
{
    if (put_addr_field(out, "From", &m->from, 1) < 0)
        return -1;
    if (m->reply_to.n && put_addr_field(out, "Reply-To", m->reply_to.v, m->reply_to.n) < 0)
        return -1;
    if (m->to.n && put_addr_field(out, "To", m->to.v, m->to.n) < 0)
        return -1;
    if (m->cc.n && put_addr_field(out, "Cc", m->cc.v, m->cc.n) < 0)
        return -1;
    if (m->subject && mime_header(out, "Subject", m->subject) < 0)
        return -1;
    if (put_date(out, m->date_ms) < 0)
        return -1;
    if (buf_printf(out, "Message-ID: <%s>\r\nMIME-Version: 1.0\r\n", m->message_id) < 0)
        return -1;
    for (size_t i = 0; i < m->nheaders; i++)
        if (mime_header(out, m->headers[i].name, m->headers[i].value) < 0)
            return -1;
    return 0;
}

int mime_build(const struct mime_message *m, struct buf *out, char *err, size_t errlen)
{
    if (check_message(m, err, errlen) < 0)
        return -1;
    size_t start = out->len;
    struct buf text, html;
    buf_init(&text, out->max);
    buf_init(&html, out->max);
    const char *text_cte = "7bit", *html_cte = "7bit";
    int rc = -1;

    int multi = m->text && m->html;
    if ((m->text && encode_body(m->text, !multi, &text, &text_cte) < 0) ||
        (m->html && encode_body(m->html, !multi, &html, &html_cte) < 0)) {
        seterr(err, errlen, "message too large");
        goto done;
    }
    if (put_headers(m, out) < 0) {
        seterr(err, errlen, "message too large");
        goto done;
    }

    int ok;
    if (multi) {
        char boundary[sizeof(BOUNDARY_PREFIX) + 2 * BOUNDARY_RANDOM];
        int tries = 0;
        for (;; tries++) {
            unsigned char rnd[BOUNDARY_RANDOM];
            if (tries == BOUNDARY_TRIES || util_random_bytes(rnd, sizeof(rnd)) < 0) {
                seterr(err, errlen, "cannot choose a multipart boundary");
                goto done;
            }
            memcpy(boundary, BOUNDARY_PREFIX, sizeof(BOUNDARY_PREFIX) - 1);
            util_hex(rnd, sizeof(rnd), boundary + sizeof(BOUNDARY_PREFIX) - 1);
            /* "=_" cannot occur in quoted-printable, but a 7bit body can
             * hold anything: make sure. */
            if (!memmem(text.data ? text.data : "", text.len, boundary, strlen(boundary)) &&
                !memmem(html.data ? html.data : "", html.len, boundary, strlen(boundary)))
                break;
        }
        ok = buf_printf(out, "Content-Type: multipart/alternative;\r\n boundary=\"%s\"\r\n\r\n", boundary) == 0 &&
             buf_printf(out, "--%s\r\n", boundary) == 0 && put_part_headers(out, "text/plain", text_cte) == 0 &&
             buf_puts(out, "\r\n") == 0 && buf_append(out, text.data, text.len) == 0 &&
             buf_printf(out, "\r\n--%s\r\n", boundary) == 0 && put_part_headers(out, "text/html", html_cte) == 0 &&
             buf_puts(out, "\r\n") == 0 && buf_append(out, html.data, html.len) == 0 &&
             buf_printf(out, "\r\n--%s--\r\n", boundary) == 0;
    } else {
        const struct buf *b = m->html ? &html : &text;
        ok = put_part_headers(out, m->html ? "text/html" : "text/plain", m->html ? html_cte : text_cte) == 0 &&
             buf_puts(out, "\r\n") == 0 && buf_append(out, b->data, b->len) == 0;
    }
    if (!ok) {
        seterr(err, errlen, "message too large");
        goto done;
    }
    rc = 0;
done:
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    buf_free(&text);
    buf_free(&html);
    return rc;
}
