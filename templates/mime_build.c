/*
 * mime_build.c - render a whole RFC 5322 / MIME message (see mime.h), and
 * the attachments that go in it.
 *
 * Layout: From, Reply-To, To, Cc, Subject, Date, Message-ID, MIME-Version,
 * the caller's fields, then Content-Type and Content-Transfer-Encoding.
 * The body nests at most three layers, each only when needed:
 *
 *   multipart/mixed                    when there are attachments
 *     multipart/related                when there are inline parts and html
 *       multipart/alternative          when there are text and html
 *         text/plain, text/html        (RFC 2046 §5.1.4: richest last)
 *       inline parts (Content-ID)
 *     attachments
 *
 * Text bodies are 7bit when they can be, else quoted-printable, labelled
 * charset=UTF-8; attachments are base64 in 76-character lines.
 *
 * Limits: the whole message is bounded by out's maximum; "message too
 * large" is reported when it is reached. Lines never exceed MIME_LINE_HARD.
 * At most MIME_ATTACH_MAX attachments.
 *
 * SECURITY: every value is checked for CR/LF again here, even if the
 * gateway did so already; caller fields may not repeat the fields written
 * here, and Bcc is refused: blind recipients live only in the envelope.
 * Attachment names, types and ids are re-checked (mime_encode.c) before
 * they go into part headers; names are quoted or RFC 2231-encoded. The
 * multipart boundaries are random and checked against both text bodies
 * (base64 cannot contain one).
 */
#include "templates/mime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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



/* check_addr - a mailbox filled by hand must meet mime_addr_set's rules. */
static int check_addr(const struct mime_addr *a, const char *field, char *err, size_t errlen)
{
    char why[128];
    if (mime_addr_check_email(a->email, why, sizeof(why)) < 0)
        return util_seterr(err, errlen, "%s: %s", field, why);
    if (a->name) {
        size_t n = strlen(a->name);
        if (util_has_crlf(a->name) || !util_utf8_valid(a->name, n) || n > MIME_NAME_MAX)
            return util_seterr(err, errlen, "%s: display name has CR/LF, bad UTF-8 or is too long", field);
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
        return util_seterr(err, errlen, "missing From address");
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
        return util_seterr(err, errlen, "invalid Message-ID");
    if (m->subject && (util_has_crlf(m->subject) || !util_utf8_valid(m->subject, strlen(m->subject))))
        return util_seterr(err, errlen, "Subject contains CR or LF or is not valid UTF-8");
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct mime_header_field *h = &m->headers[i];
        if (!mime_header_name_valid(h->name))
            return util_seterr(err, errlen, "invalid header name \"%.80s\"", h->name ? h->name : "");
        for (size_t k = 0; k < sizeof(owned_fields) / sizeof(owned_fields[0]); k++)
            if (strcasecmp(h->name, owned_fields[k]) == 0)
                return util_seterr(err, errlen, "header %s is set by mailgate", owned_fields[k]);
        if (!h->value || util_has_crlf(h->value))
            return util_seterr(err, errlen, "header %s: value contains CR or LF", h->name);
        if (!util_utf8_valid(h->value, strlen(h->value)))
            return util_seterr(err, errlen, "header %s: value is not valid UTF-8", h->name);
    }
    if (m->text && !util_utf8_valid(m->text, strlen(m->text)))
        return util_seterr(err, errlen, "text body is not valid UTF-8");
    if (m->html && !util_utf8_valid(m->html, strlen(m->html)))
        return util_seterr(err, errlen, "html body is not valid UTF-8");
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

/* ---- attachments ------------------------------------------------------ */

int mime_attachment_set(struct mime_attachment *a, const char *filename, const char *content_type,
                        const char *b64, size_t b64len, const char *content_id, const char **which,
                        char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    *which = "filename";
    if (!mime_filename_valid(filename))
        return util_seterr(err, errlen, "must be 1 to %d bytes of UTF-8 without control characters (CR, LF, TAB...)",
                      MIME_FILENAME_MAX);
    *which = "content_type";
    if (content_type && !mime_content_type_valid(content_type))
        return util_seterr(err, errlen, "must be a media type \"type/subtype\" without parameters "
                                   "(not multipart/* or message/*)");
    /* "<id>" as written in a Content-ID field is accepted too. */
    char cid[MIME_CONTENT_ID_MAX + 1];
    if (content_id) {
        *which = "content_id";
        size_t n = strlen(content_id);
        if (n >= 2 && content_id[0] == '<' && content_id[n - 1] == '>') {
            content_id++;
            n -= 2;
        }
        if (n > MIME_CONTENT_ID_MAX)
            return util_seterr(err, errlen, "is longer than %d characters", MIME_CONTENT_ID_MAX);
        memcpy(cid, content_id, n);
        cid[n] = '\0';
        if (!mime_content_id_valid(cid))
            return util_seterr(err, errlen, "must be like \"logo\" or \"logo.png@acme.example\" "
                                       "(RFC 5322 atoms and dots, at most one @)");
    }
    *which = "content";
    if (mime_base64_decode(b64, b64len, &a->data, &a->len, err, errlen) < 0)
        return -1;
    a->filename = strdup(filename);
    a->content_type = content_type ? strdup(content_type) : NULL;
    a->content_id = content_id ? strdup(cid) : NULL;
    if (!a->filename || (content_type && !a->content_type) || (content_id && !a->content_id)) {
        mime_attachment_free(a);
        *which = "content";
        return util_seterr(err, errlen, "out of memory");
    }
    return 0;
}

void mime_attachment_free(struct mime_attachment *a)
{
    if (!a)
        return;
    free(a->filename);
    free(a->content_type);
    free(a->data);
    free(a->content_id);
    memset(a, 0, sizeof(*a));
}

/* check_attachments - an attachment filled by hand must meet
 * mime_attachment_set's rules. */
static int check_attachments(const struct mime_message *m, char *err, size_t errlen)
{
    if (m->nattachments > MIME_ATTACH_MAX)
        return util_seterr(err, errlen, "more than %d attachments", MIME_ATTACH_MAX);
    if (m->nattachments && !m->attachments)
        return util_seterr(err, errlen, "attachments missing");
    for (size_t i = 0; i < m->nattachments; i++) {
        const struct mime_attachment *a = &m->attachments[i];
        if (!mime_filename_valid(a->filename))
            return util_seterr(err, errlen, "attachment %zu: invalid file name", i);
        if (a->content_type && !mime_content_type_valid(a->content_type))
            return util_seterr(err, errlen, "attachment %zu: invalid content type", i);
        if (a->content_id && !mime_content_id_valid(a->content_id))
            return util_seterr(err, errlen, "attachment %zu: invalid content id", i);
        if (a->len && !a->data)
            return util_seterr(err, errlen, "attachment %zu: no data", i);
    }
    return 0;
}

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* put_quoted - a MIME parameter value as a quoted-string (RFC 2045 §5.1,
 * RFC 5322 §3.2.4): '"' and '\' escaped; the value has no controls. */
static int put_quoted(struct buf *out, const char *v)
{
    if (buf_putc(out, '"') < 0)
        return -1;
    for (; *v; v++)
        if (((*v == '"' || *v == '\\') && buf_putc(out, '\\') < 0) || buf_putc(out, *v) < 0)
            return -1;
    return buf_putc(out, '"');
}

/* attr_char - RFC 2231 §7 attribute-char: may appear unencoded in an
 * extended value. */
static int attr_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$&+-.^_`|~", c));
}

/* Octets of percent-encoded text per RFC 2231 continuation line: with
 * " filename*NN*=utf-8''" and ";" a line stays within 78. */
#define RFC2231_SEGMENT 52

/* put_rfc2231 - param*=utf-8''%xx... (RFC 2231 §4), split into numbered
 * continuations param*0*=, param*1*=... (§3) on lines of their own when it
 * would not fit one line; splits fall between whole UTF-8 characters.
 * Called with out positioned after "...;" and writes the leading fold. */
static int put_rfc2231(struct buf *out, const char *param, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf enc;
    buf_init(&enc, 0);
    /* Encode first; cut points are kept as offsets between characters. */
    size_t cuts[MIME_FILENAME_MAX + 1], ncuts = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if ((*p & 0xc0) != 0x80 && ncuts < sizeof(cuts) / sizeof(cuts[0]))
            cuts[ncuts++] = enc.len;
        int rc = attr_char(*p) ? buf_putc(&enc, (char)*p)
                               : buf_printf(&enc, "%%%c%c", hex[*p >> 4], hex[*p & 15]);
        if (rc < 0) {
            buf_free(&enc);
            return -1;
        }
    }
    int rc = 0;
    if (enc.len <= RFC2231_SEGMENT) {
        rc = buf_printf(out, "\r\n %s*=utf-8''%s", param, enc.data ? enc.data : "");
    } else {
        size_t start = 0, seg = 0, k = 0;
        while (rc == 0 && start < enc.len) {
            /* the furthest character boundary within the segment size */
            size_t end = enc.len;
            if (enc.len - start > RFC2231_SEGMENT) {
                end = start;
                while (k < ncuts && cuts[k] - start <= RFC2231_SEGMENT) {
                    if (cuts[k] > start)
                        end = cuts[k];
                    k++;
                }
                if (end == start) /* cannot happen: a character is at most 12 octets encoded */
                    end = start + RFC2231_SEGMENT;
            }
            rc = buf_printf(out, "%s\r\n %s*%zu*=%s%.*s", seg ? ";" : "", param, seg, seg ? "" : "utf-8''",
                            (int)(end - start), enc.data + start);
            start = end;
            seg++;
        }
    }
    buf_free(&enc);
    return rc;
}

/* put_attachment - one attachment entity: Content-Type with name=,
 * Content-Disposition with filename, Content-ID when inline, base64 body.
 * The body's last CRLF is left to the delimiter that follows (RFC 2046
 * §5.1.1). */
static int put_attachment(struct buf *out, const struct mime_attachment *a, int inline_part)
{
    const char *ct = a->content_type ? a->content_type : mime_type_for_filename(a->filename);
    int ascii = is_ascii(a->filename);
    if (buf_printf(out, "Content-Type: %s;\r\n name=", ct) < 0)
        return -1;
    if (ascii) {
        if (put_quoted(out, a->filename) < 0)
            return -1;
    } else {
        /* RFC 2047 words in a quoted string: not standard, but what the
         * clients that ignore RFC 2231 understand (the fallback). */
        size_t col = 8; /* ' name="' and room for the closing quote */
        if (buf_putc(out, '"') < 0 || mime_encode_words(a->filename, strlen(a->filename), out, &col) < 0 ||
            buf_putc(out, '"') < 0)
            return -1;
    }
    if (buf_printf(out, "\r\nContent-Disposition: %s;", inline_part ? "inline" : "attachment") < 0)
        return -1;
    if (ascii) {
        if (buf_puts(out, "\r\n filename=") < 0 || put_quoted(out, a->filename) < 0)
            return -1;
    } else if (put_rfc2231(out, "filename", a->filename) < 0) {
        return -1;
    }
    if (buf_puts(out, "\r\n") < 0)
        return -1;
    if (a->content_id && buf_printf(out, "Content-ID: <%s>\r\n", a->content_id) < 0)
        return -1;
    if (buf_puts(out, "Content-Transfer-Encoding: base64\r\n\r\n") < 0)
        return -1;
    if (a->len) {
        if (mime_base64_lines(a->data, a->len, out) < 0)
            return -1;
        out->len -= 2;
        out->data[out->len] = '\0';
    }
    return 0;
}

/* ---- the message --------------------------------------------------------- */

/* new_boundary - a random boundary found in neither encoded body. */
static int new_boundary(char *boundary, const struct buf *text, const struct buf *html)
{
    for (int tries = 0; tries < BOUNDARY_TRIES; tries++) {
        unsigned char rnd[BOUNDARY_RANDOM];
        if (util_random_bytes(rnd, sizeof(rnd)) < 0)
            return -1;
        memcpy(boundary, BOUNDARY_PREFIX, sizeof(BOUNDARY_PREFIX) - 1);
        util_hex(rnd, sizeof(rnd), boundary + sizeof(BOUNDARY_PREFIX) - 1);
        /* "=_" cannot occur in quoted-printable or base64, but a 7bit body
         * can hold anything: make sure. */
        if (!memmem(text->data ? text->data : "", text->len, boundary, strlen(boundary)) &&
            !memmem(html->data ? html->data : "", html->len, boundary, strlen(boundary)))
            return 0;
    }
    return -1;
}

/* open_multipart - the Content-Type of a multipart entity, the empty line
 * and the first delimiter. type_param is RFC 2387's type= or NULL. */
static int open_multipart(struct buf *out, const char *subtype, const char *type_param, const char *boundary)
{
    if (buf_printf(out, "Content-Type: multipart/%s;", subtype) < 0)
        return -1;
    if (type_param && buf_printf(out, "\r\n type=\"%s\";", type_param) < 0)
        return -1;
    return buf_printf(out, "\r\n boundary=\"%s\"\r\n\r\n--%s\r\n", boundary, boundary);
}

/* put_text_part - one text entity: its fields, the empty line, the body. */
static int put_text_part(struct buf *out, const char *type, const char *cte, const struct buf *body)
{
    return put_part_headers(out, type, cte) == 0 && buf_puts(out, "\r\n") == 0 &&
                   buf_append(out, body->data, body->len) == 0
               ? 0
               : -1;
}

int mime_build(const struct mime_message *m, struct buf *out, char *err, size_t errlen)
{
    if (check_message(m, err, errlen) < 0 || check_attachments(m, err, errlen) < 0)
        return -1;
    size_t start = out->len;
    struct buf text, html;
    buf_init(&text, out->max);
    buf_init(&html, out->max);
    const char *text_cte = "7bit", *html_cte = "7bit";
    int rc = -1;

    /* Which layers: inline parts need html to refer to them; without it
     * they travel in multipart/mixed with the other attachments. */
    size_t ninline = 0;
    for (size_t i = 0; i < m->nattachments; i++)
        if (m->attachments[i].content_id && m->html)
            ninline++;
    int alt = m->text && m->html;
    int related = ninline > 0;
    int mixed = m->nattachments > ninline;
    int nested = alt || related || mixed;

    if ((m->text && encode_body(m->text, !nested, &text, &text_cte) < 0) ||
        (m->html && encode_body(m->html, !nested, &html, &html_cte) < 0)) {
        util_seterr(err, errlen, "message too large");
        goto done;
    }
    char bm[sizeof(BOUNDARY_PREFIX) + 2 * BOUNDARY_RANDOM], br[sizeof(bm)], ba[sizeof(bm)];
    if ((mixed && new_boundary(bm, &text, &html) < 0) || (related && new_boundary(br, &text, &html) < 0) ||
        (alt && new_boundary(ba, &text, &html) < 0)) {
        util_seterr(err, errlen, "cannot choose a multipart boundary");
        goto done;
    }
    if (put_headers(m, out) < 0)
        goto full;
    if (mixed && open_multipart(out, "mixed", NULL, bm) < 0)
        goto full;
    if (related && open_multipart(out, "related", alt ? "multipart/alternative" : "text/html", br) < 0)
        goto full;
    if (alt) {
        if (open_multipart(out, "alternative", NULL, ba) < 0 || put_text_part(out, "text/plain", text_cte, &text) < 0 ||
            buf_printf(out, "\r\n--%s\r\n", ba) < 0 || put_text_part(out, "text/html", html_cte, &html) < 0 ||
            buf_printf(out, "\r\n--%s--\r\n", ba) < 0)
            goto full;
    } else if (put_text_part(out, m->html ? "text/html" : "text/plain", m->html ? html_cte : text_cte,
                             m->html ? &html : &text) < 0) {
        goto full;
    }
    if (related) {
        for (size_t i = 0; i < m->nattachments; i++)
            if (m->attachments[i].content_id &&
                (buf_printf(out, "\r\n--%s\r\n", br) < 0 || put_attachment(out, &m->attachments[i], 1) < 0))
                goto full;
        if (buf_printf(out, "\r\n--%s--\r\n", br) < 0)
            goto full;
    }
    if (mixed) {
        for (size_t i = 0; i < m->nattachments; i++) {
            const struct mime_attachment *a = &m->attachments[i];
            if (a->content_id && related)
                continue;
            if (buf_printf(out, "\r\n--%s\r\n", bm) < 0 || put_attachment(out, a, a->content_id != NULL) < 0)
                goto full;
        }
        if (buf_printf(out, "\r\n--%s--\r\n", bm) < 0)
            goto full;
    }
    rc = 0;
    goto done;
full:
    util_seterr(err, errlen, "message too large");
done:
    if (rc < 0) {
        buf_truncate(out, start);
    }
    buf_free(&text);
    buf_free(&html);
    return rc;
}
