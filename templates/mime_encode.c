/*
 * mime_encode.c - the encoders behind a message: RFC 2047 encoded-words,
 * header field folding, quoted-printable and base64 bodies (see mime.h);
 * and the checks on attachment input: strict base64 decoding, media types
 * by file extension, file name, media type and Content-ID syntax.
 *
 * Each transformation lives in exactly one function here: folding in
 * mime_header/fold_ascii, encoded-words in mime_encode_words, line breaks
 * of bodies in mime_qp_encode and mime_base64_lines.
 *
 * Limits: encoded-words are at most MIME_ENCODED_WORD_MAX characters and
 * carry whole UTF-8 characters only, so each decodes on its own; header
 * lines are folded to MIME_LINE_SOFT where there is white space and never
 * exceed MIME_LINE_HARD; quoted-printable lines are at most MIME_QP_LINE.
 * All output goes through struct buf, whose maximum the caller chooses.
 *
 * SECURITY: mime_header refuses a value with CR or LF (header injection)
 * or malformed UTF-8, and a field name outside RFC 5322 §3.6.8. The only
 * CR/LF written are the folds and line ends made here. Attachment file
 * names, media types and Content-IDs are checked here so that none can
 * carry a CR, LF, quote or parameter into the part headers. The base64
 * decoder validates every character before OpenSSL sees it.
 */
#include "templates/mime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "common/util.h"

/* "=?UTF-8?B?" + "?=" around the base64 text of an encoded-word */
#define EW_OVERHEAD 12
/* Input octets per base64 line: 57 * 4 / 3 = 76 characters */
#define B64_LINE_IN 57

/* truncate - undo a partial write so a failed call leaves out unchanged. */
static void truncate_to(struct buf *out, size_t len)
{
    out->len = len;
    if (out->data)
        out->data[len] = '\0';
}

/* u8_len - length of the UTF-8 sequence led by c; 1 for a stray byte so
 * that malformed input still makes progress. */
static size_t u8_len(unsigned char c)
{
    if (c >= 0xf0 && c <= 0xf7)
        return 4;
    if (c >= 0xe0)
        return c <= 0xef ? 3 : 1;
    if (c >= 0xc0)
        return 2;
    return 1;
}

/* put_ew - one encoded-word for n octets at s (n <= 45). */
static int put_ew(struct buf *out, const char *s, size_t n)
{
    unsigned char b64[64 + 1];
    int k = EVP_EncodeBlock(b64, (const unsigned char *)s, (int)n);
    if (buf_puts(out, "=?UTF-8?B?") < 0 || buf_append(out, b64, (size_t)k) < 0 || buf_puts(out, "?=") < 0)
        return -1;
    return 0;
}

/* ew_capacity - octets of text that fit in one encoded-word of at most
 * width characters. */
static size_t ew_capacity(size_t width)
{
    if (width > MIME_ENCODED_WORD_MAX)
        width = MIME_ENCODED_WORD_MAX;
    return width > EW_OVERHEAD ? (width - EW_OVERHEAD) / 4 * 3 : 0;
}

int mime_encode_words(const char *utf8, size_t len, struct buf *out, size_t *col)
{
    size_t start = out->len, col0 = *col;
    size_t i = 0;
    int inline_ok = 1; /* the next word may go at *col, without a fold */
    while (i < len) {
        /* The first word fills what is left of the current line; later
         * words start a continuation line of their own (" " + word). */
        size_t width = inline_ok ? (*col < MIME_LINE_SOFT ? MIME_LINE_SOFT - *col : 0) : MIME_LINE_SOFT - 1;
        size_t cap = ew_capacity(width), take = 0;
        while (i + take < len) {
            size_t cl = u8_len((unsigned char)utf8[i + take]);
            if (cl > len - i - take)
                cl = len - i - take;
            if (take + cl > cap)
                break;
            take += cl;
        }
        if (take == 0) {
            /* Not even one character fits after what the caller wrote:
             * start on a continuation line. A full word holds 45 octets,
             * more than any UTF-8 character, so this happens once. */
            if (!inline_ok)
                goto full;
            inline_ok = 0;
            continue;
        }
        if (!inline_ok) {
            if (buf_puts(out, "\r\n ") < 0)
                goto full;
            *col = 1;
        }
        size_t before = out->len;
        if (put_ew(out, utf8 + i, take) < 0)
            goto full;
        *col += out->len - before;
        i += take;
        inline_ok = 0;
    }
    return 0;
full:
    truncate_to(out, start);
    *col = col0;
    return -1;
}

int mime_header_name_valid(const char *name)
{
    if (!name || !*name || strlen(name) > MIME_FIELD_NAME_MAX)
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 33 || *p > 126 || *p == ':')
            return 0;
    return 1;
}

/* needs_words - 1 when an unstructured value cannot go as plain text:
 * non-ASCII or control characters, or text a receiver would take for an
 * encoded-word and decode ("=?"). */
static int needs_words(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p >= 0x7f || (*p < 0x20 && *p != '\t'))
            return 1;
        if (*p == '=' && p[1] == '?')
            return 1;
    }
    return 0;
}

/* fold_ascii - write v folding before white space so lines stay within
 * MIME_LINE_SOFT. A fold is placed only where a word follows, so no line
 * is white space alone. Returns 0, -1 when out is full, -2 when a word is
 * too long for MIME_LINE_HARD. */
static int fold_ascii(const char *v, struct buf *out, size_t *col)
{
    size_t n = strlen(v), i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (v[j] == ' ' || v[j] == '\t'))
            j++;
        size_t k = j;
        while (k < n && v[k] != ' ' && v[k] != '\t')
            k++;
        if (i > 0 && k > j && *col + (k - i) > MIME_LINE_SOFT) {
            if (buf_puts(out, "\r\n") < 0)
                return -1;
            *col = 0;
        }
        if (buf_append(out, v + i, k - i) < 0)
            return -1;
        *col += k - i;
        if (*col > MIME_LINE_HARD)
            return -2;
        i = k;
    }
    return 0;
}

int mime_header(struct buf *out, const char *name, const char *value)
{
    if (!mime_header_name_valid(name) || !value || util_has_crlf(value) || !util_utf8_valid(value, strlen(value)))
        return -1;
    size_t start = out->len, col;
    if (buf_puts(out, name) < 0 || buf_putc(out, ':') < 0)
        goto full;
    col = strlen(name) + 1;
    if (*value) {
        if (buf_putc(out, ' ') < 0)
            goto full;
        col++;
        size_t vstart = out->len, vcol = col;
        int rc = needs_words(value) ? -2 : fold_ascii(value, out, &col);
        if (rc == -2) {
            /* Non-ASCII, or a word too long to fold: encoded-words can be
             * broken anywhere and round-trip exactly. */
            truncate_to(out, vstart);
            col = vcol;
            rc = mime_encode_words(value, strlen(value), out, &col);
        }
        if (rc < 0)
            goto full;
    }
    if (buf_puts(out, "\r\n") < 0)
        goto full;
    return 0;
full:
    truncate_to(out, start);
    return -1;
}

/* qp_safe - characters quoted-printable may write as themselves (rule 2),
 * white space apart (rule 3, decided by the caller). */
static int qp_safe(unsigned char c)
{
    return (c >= 33 && c <= 60) || (c >= 62 && c <= 126);
}

int mime_qp_encode(const char *in, size_t len, struct buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t start = out->len, col = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\r' || c == '\n') {
            /* CRLF, LF or a bare CR: one hard line break */
            if (c == '\r' && i + 1 < len && in[i + 1] == '\n')
                i++;
            if (buf_puts(out, "\r\n") < 0)
                goto full;
            col = 0;
            continue;
        }
        /* Last character of the line: may use the whole MIME_QP_LINE, and
         * white space there must be encoded so no transport strips it. */
        int last = i + 1 == len || in[i + 1] == '\r' || in[i + 1] == '\n';
        char tok[3];
        size_t tn;
        if (qp_safe(c) || ((c == ' ' || c == '\t') && !last)) {
            tok[0] = (char)c;
            tn = 1;
        } else {
            tok[0] = '=';
            tok[1] = hex[c >> 4];
            tok[2] = hex[c & 15];
            tn = 3;
        }
        /* Leave room for the "=" of a soft break unless the line ends here. */
        if (col + tn > (last ? MIME_QP_LINE : MIME_QP_LINE - 1)) {
            if (buf_puts(out, "=\r\n") < 0)
                goto full;
            col = 0;
        }
        if (buf_append(out, tok, tn) < 0)
            goto full;
        col += tn;
    }
    return 0;
full:
    truncate_to(out, start);
    return -1;
}

int mime_base64_lines(const void *in, size_t len, struct buf *out)
{
    const unsigned char *p = in;
    size_t start = out->len;
    unsigned char line[B64_LINE_IN / 3 * 4 + 1];
    for (size_t i = 0; i < len; i += B64_LINE_IN) {
        size_t n = len - i < B64_LINE_IN ? len - i : B64_LINE_IN;
        int k = EVP_EncodeBlock(line, p + i, (int)n);
        if (buf_append(out, line, (size_t)k) < 0 || buf_puts(out, "\r\n") < 0) {
            truncate_to(out, start);
            return -1;
        }
    }
    return 0;
}

int mime_body_needs_encoding(const char *in, size_t len)
{
    size_t line = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\r') {
            if (i + 1 >= len || in[i + 1] != '\n')
                return 1;
            i++;
            line = 0;
        } else if (c == '\n') {
            line = 0;
        } else if (c == 0 || c >= 0x80 || ++line > MIME_LINE_HARD) {
            return 1;
        }
    }
    return 0;
}

/* ---- attachments: base64 input, media types, names --------------------- */

/* b64_value - the 6-bit value of a base64 alphabet character, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Characters decoded per EVP_DecodeBlock call: a multiple of 4. */
#define B64_CHUNK 4096

int mime_base64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen, char *err,
                       size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    /* First pass: validate and count, so the output is allocated once. */
    size_t chars = 0, pads = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            if (++pads > 2) {
                snprintf(err, errlen, "is not valid base64: too much \"=\" padding at offset %zu", i);
                return -1;
            }
        } else if (b64_value(c) < 0 || pads) {
            if (pads)
                snprintf(err, errlen, "is not valid base64: \"=\" padding before the end (offset %zu)", i);
            else
                snprintf(err, errlen, "is not valid base64: character 0x%02x at offset %zu", c, i);
            return -1;
        }
        chars++;
    }
    if (chars % 4) {
        snprintf(err, errlen, "is not valid base64: %zu characters is not a multiple of 4 (missing padding?)",
                 chars);
        return -1;
    }
    size_t n = chars / 4 * 3 - pads;
    unsigned char *dst = malloc(n + 1);
    if (!dst) {
        snprintf(err, errlen, "is too large to decode");
        return -1;
    }
    /* Second pass: gather the characters without line breaks in chunks
     * and let OpenSSL decode them; padding only ever ends the last one. */
    unsigned char chunk[B64_CHUNK];
    size_t cn = 0, o = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && in[i] != '\r' && in[i] != '\n')
            chunk[cn++] = (unsigned char)in[i];
        if (cn == sizeof(chunk) || (i == len && cn)) {
            unsigned char tmp[B64_CHUNK / 4 * 3];
            int k = EVP_DecodeBlock(tmp, chunk, (int)cn);
            if (k < 0) { /* cannot happen after the first pass */
                free(dst);
                snprintf(err, errlen, "is not valid base64");
                return -1;
            }
            size_t take = (size_t)k;
            if (o + take > n)
                take = n - o; /* EVP_DecodeBlock counts the padding as zeros */
            memcpy(dst + o, tmp, take);
            o += take;
            cn = 0;
        }
    }
    *out = dst;
    *outlen = n;
    return 0;
}

/* Media types by extension: the common attachment types; anything else is
 * application/octet-stream. Kept sorted by extension for reading only. */
static const struct {
    const char *ext, *type;
} ext_types[] = {
    {"7z", "application/x-7z-compressed"},
    {"avif", "image/avif"},
    {"bmp", "image/bmp"},
    {"css", "text/css"},
    {"csv", "text/csv"},
    {"doc", "application/msword"},
    {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
    {"epub", "application/epub+zip"},
    {"gif", "image/gif"},
    {"gz", "application/gzip"},
    {"heic", "image/heic"},
    {"htm", "text/html"},
    {"html", "text/html"},
    {"ico", "image/vnd.microsoft.icon"},
    {"ics", "text/calendar"},
    {"jpeg", "image/jpeg"},
    {"jpg", "image/jpeg"},
    {"js", "text/javascript"},
    {"json", "application/json"},
    {"md", "text/markdown"},
    {"mp3", "audio/mpeg"},
    {"mp4", "video/mp4"},
    {"odp", "application/vnd.oasis.opendocument.presentation"},
    {"ods", "application/vnd.oasis.opendocument.spreadsheet"},
    {"odt", "application/vnd.oasis.opendocument.text"},
    {"ogg", "audio/ogg"},
    {"pdf", "application/pdf"},
    {"png", "image/png"},
    {"ppt", "application/vnd.ms-powerpoint"},
    {"pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
    {"rtf", "application/rtf"},
    {"svg", "image/svg+xml"},
    {"tar", "application/x-tar"},
    {"tif", "image/tiff"},
    {"tiff", "image/tiff"},
    {"txt", "text/plain"},
    {"vcf", "text/vcard"},
    {"wav", "audio/wav"},
    {"webm", "video/webm"},
    {"webp", "image/webp"},
    {"xls", "application/vnd.ms-excel"},
    {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
    {"xml", "application/xml"},
    {"zip", "application/zip"},
};

const char *mime_type_for_filename(const char *filename)
{
    const char *dot = filename ? strrchr(filename, '.') : NULL;
    if (dot && dot[1])
        for (size_t i = 0; i < sizeof(ext_types) / sizeof(ext_types[0]); i++)
            if (strcasecmp(dot + 1, ext_types[i].ext) == 0)
                return ext_types[i].type;
    return "application/octet-stream";
}

/* token_char - RFC 2045 §5.1 token: printable ASCII except SP and tspecials. */
static int token_char(unsigned char c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

int mime_content_type_valid(const char *ct)
{
    if (!ct || strlen(ct) > MIME_CTYPE_MAX)
        return 0;
    const char *slash = strchr(ct, '/');
    if (!slash || slash == ct || !slash[1])
        return 0;
    for (const char *p = ct; *p; p++)
        if (p != slash && !token_char((unsigned char)*p))
            return 0;
    /* Composite types cannot go as base64 (RFC 2045 §6.4, RFC 2046 §5.2.1). */
    if (strncasecmp(ct, "multipart/", 10) == 0 || strncasecmp(ct, "message/", 8) == 0)
        return 0;
    return 1;
}

int mime_filename_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > MIME_FILENAME_MAX || !util_utf8_valid(name, n))
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

/* atext - RFC 5322 §3.2.3. */
static int atext(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* dot_atom_len - length of the dot-atom-text at s (0 when there is none
 * or it has an empty atom). */
static size_t dot_atom_len(const char *s)
{
    size_t i = 0;
    for (;;) {
        size_t k = i;
        while (atext((unsigned char)s[k]))
            k++;
        if (k == i)
            return 0;
        i = k;
        if (s[i] != '.')
            return i;
        i++;
    }
}

int mime_content_id_valid(const char *id)
{
    if (!id || strlen(id) > MIME_CONTENT_ID_MAX)
        return 0;
    size_t k = dot_atom_len(id);
    if (k == 0)
        return 0;
    if (id[k] == '\0')
        return 1;
    if (id[k] != '@')
        return 0;
    size_t r = dot_atom_len(id + k + 1);
    return r > 0 && id[k + 1 + r] == '\0';
}
