/*
 * mime_track.c - the pure HTML rewriting behind open and click tracking
 * (see mime.h): every http(s) link of <a href> handed to a callback that
 * says what the link becomes, the open pixel inserted before </body>, and
 * the HTML character references of attribute values decoded and encoded.
 *
 * The scanner is a small tokenizer, not a full HTML5 parser. It knows
 * what matters for finding real links in mail HTML:
 *   - tags and their attributes, quoted ("..." or '...') or not, so that a
 *     '>' inside a quoted value does not end a tag;
 *   - comments: "<!-- ... -->" is copied untouched (a link in a comment is
 *     not shown, so it is not tracked), except the downlevel-hidden
 *     conditional comments Outlook renders ("<!--[if mso]> ... <![endif]-->"),
 *     whose contents are scanned like the rest;
 *   - raw-text elements (<script>, <style>, <textarea>, <title>,
 *     <xmp>) whose contents are copied untouched.
 * Everything it does not rewrite is copied byte for byte.
 *
 * Character references in an attribute value are decoded the way a browser
 * decodes them (HTML5 §13.2.5.72), for the references that occur in URLs:
 * numeric ones (&#38; &#x26;, with or without ';'), and the named ones
 * amp, lt, gt, quot, apos and nbsp. In an attribute a legacy name without
 * ';' followed by an alphanumeric or '=' stays literal ("?a=1&copy=2" keeps
 * its "&copy="), as browsers do. Other named references are kept as
 * written (then the URL differs from what a browser would follow; they do
 * not occur in real links).
 *
 * Limits: a link whose decoded URL is longer than MIME_TRACK_URL_MAX is
 * left alone (its token would not fit a reasonable URL); out's maximum
 * bounds the result.
 *
 * SECURITY: the callback gets the decoded URL and decides; what it returns
 * is written back HTML-escaped inside double quotes, so it cannot break out
 * of the attribute. Only http: and https: links (ASCII case-insensitive,
 * after the white space a browser strips) are offered to the callback:
 * mailto:, javascript:, data: and relative links are never rewritten.
 */
#include "templates/mime.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* ascii_ieq - n bytes of a equal the lower-case ASCII word w (n = strlen(w)). */
static int ascii_ieq(const char *a, size_t n, const char *w)
{
    return strlen(w) == n && strncasecmp(a, w, n) == 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* put_utf8 - append code point cp (invalid ones as U+FFFD) as UTF-8. */
static int put_utf8(struct buf *out, unsigned long cp)
{
    char u[4];
    size_t n;
    if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        cp = 0xFFFD;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_append(out, u, n);
}

/* The named references decoded; legacy ones also decode without ';'. */
static const struct {
    const char *name;
    unsigned long cp;
    int legacy;
} named_refs[] = {
    {"amp", '&', 1}, {"lt", '<', 1}, {"gt", '>', 1}, {"quot", '"', 1},
    {"apos", '\'', 0}, {"nbsp", 0xA0, 1},
};

int mime_html_attr_decode(const char *in, size_t len, struct buf *out)
{
    size_t i = 0;
    while (i < len) {
        const char *amp = memchr(in + i, '&', len - i);
        size_t run = amp ? (size_t)(amp - (in + i)) : len - i;
        if (run && buf_append(out, in + i, run) < 0)
            return -1;
        i += run;
        if (i >= len)
            break;
        /* in[i] == '&' */
        size_t j = i + 1;
        if (j < len && in[j] == '#') {
            j++;
            int hex = j < len && (in[j] == 'x' || in[j] == 'X');
            if (hex)
                j++;
            size_t d0 = j;
            unsigned long cp = 0;
            while (j < len && (hex ? isxdigit((unsigned char)in[j]) : isdigit((unsigned char)in[j]))) {
                if (cp <= 0x10FFFF) {
                    int v = isdigit((unsigned char)in[j]) ? in[j] - '0' : (tolower((unsigned char)in[j]) - 'a' + 10);
                    cp = cp * (hex ? 16 : 10) + (unsigned long)v;
                }
                j++;
            }
            if (j == d0) { /* "&#" with no digits: literal */
                if (buf_putc(out, '&') < 0)
                    return -1;
                i++;
                continue;
            }
            if (j < len && in[j] == ';')
                j++;
            if (put_utf8(out, cp) < 0)
                return -1;
            i = j;
            continue;
        }
        size_t n0 = j;
        while (j < len && isalnum((unsigned char)in[j]))
            j++;
        int done = 0;
        for (size_t k = 0; k < sizeof(named_refs) / sizeof(named_refs[0]) && !done; k++) {
            if (j - n0 != strlen(named_refs[k].name) || strncmp(in + n0, named_refs[k].name, j - n0) != 0)
                continue; /* names are case-sensitive */
            if (j < len && in[j] == ';') {
                if (put_utf8(out, named_refs[k].cp) < 0)
                    return -1;
                i = j + 1;
                done = 1;
            } else if (named_refs[k].legacy && !(j < len && (isalnum((unsigned char)in[j]) || in[j] == '='))) {
                if (put_utf8(out, named_refs[k].cp) < 0)
                    return -1;
                i = j;
                done = 1;
            }
        }
        if (!done) {
            if (buf_putc(out, '&') < 0)
                return -1;
            i++;
        }
    }
    return 0;
}

int mime_html_attr_escape(const char *in, size_t len, struct buf *out)
{
    for (size_t i = 0; i < len; i++) {
        const char *rep = NULL;
        switch (in[i]) {
        case '&': rep = "&amp;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        default: break;
        }
        if (rep ? buf_puts(out, rep) < 0 : buf_putc(out, in[i]) < 0)
            return -1;
    }
    return 0;
}

/* find_ci - first occurrence of the ASCII word w in s[0..len), case-
 * insensitively; NULL when absent. */
static const char *find_ci(const char *s, size_t len, const char *w)
{
    size_t wl = strlen(w);
    for (size_t i = 0; i + wl <= len; i++)
        if (strncasecmp(s + i, w, wl) == 0)
            return s + i;
    return NULL;
}

/* One attribute of a tag: offsets into the html. */
struct attr {
    size_t name, name_len;
    size_t val, val_len;   /* the value without its quotes */
    char quote;            /* '"', '\'' or 0 (unquoted or no value) */
    int has_val;
};

#define TAG_ATTRS_MAX 64 /* attributes looked at in one tag; more are copied */

/* The tag at html[start] ("<name ..."), parsed: where it ends (one past
 * '>', or len when unterminated), its name and its attributes. */
struct tag {
    size_t end;
    size_t name, name_len;
    int closing;           /* "</name" */
    struct attr a[TAG_ATTRS_MAX];
    size_t na;
};

/* parse_tag - html[start] is '<' followed by a letter or '/' + letter. */
static void parse_tag(const char *h, size_t len, size_t start, struct tag *t)
{
    size_t i = start + 1;
    t->na = 0;
    t->closing = 0;
    if (i < len && h[i] == '/') {
        t->closing = 1;
        i++;
    }
    t->name = i;
    while (i < len && !is_space(h[i]) && h[i] != '/' && h[i] != '>')
        i++;
    t->name_len = i - t->name;
    for (;;) {
        while (i < len && (is_space(h[i]) || h[i] == '/'))
            i++;
        if (i >= len) {
            t->end = len;
            return;
        }
        if (h[i] == '>') {
            t->end = i + 1;
            return;
        }
        struct attr at = {.name = i};
        /* an attribute name may start with '=' (HTML5): take one char */
        i++;
        while (i < len && !is_space(h[i]) && h[i] != '/' && h[i] != '>' && h[i] != '=')
            i++;
        at.name_len = i - at.name;
        size_t k = i;
        while (k < len && is_space(h[k]))
            k++;
        if (k < len && h[k] == '=') {
            k++;
            while (k < len && is_space(h[k]))
                k++;
            at.has_val = 1;
            if (k < len && (h[k] == '"' || h[k] == '\'')) {
                at.quote = h[k];
                const char *q = memchr(h + k + 1, h[k], len - k - 1);
                at.val = k + 1;
                at.val_len = q ? (size_t)(q - (h + k + 1)) : len - k - 1;
                i = q ? (size_t)(q - h) + 1 : len;
            } else {
                at.val = k;
                while (k < len && !is_space(h[k]) && h[k] != '>')
                    k++;
                at.val_len = k - at.val;
                i = k;
            }
        }
        if (t->na < TAG_ATTRS_MAX)
            t->a[t->na++] = at;
    }
}

/* raw_text_element - 1 when the element's contents are not markup. */
static int raw_text_element(const char *name, size_t n)
{
    static const char *const raw[] = {"script", "style", "textarea", "title", "xmp", NULL};
    for (const char *const *r = raw; *r; r++)
        if (ascii_ieq(name, n, *r))
            return 1;
    return 0;
}

/* http_url - 1 when url (decoded) is an absolute http: or https: URL once
 * the leading and trailing white space a browser strips is gone; *b and
 * *e delimit that trimmed URL. */
static int http_url(const char *url, size_t len, size_t *b, size_t *e)
{
    size_t s = 0, t = len;
    while (s < t && ((unsigned char)url[s] <= 0x20))
        s++;
    while (t > s && ((unsigned char)url[t - 1] <= 0x20))
        t--;
    *b = s;
    *e = t;
    return (t - s > 7 && strncasecmp(url + s, "http://", 7) == 0) ||
           (t - s > 8 && strncasecmp(url + s, "https://", 8) == 0);
}

/* rewrite_a - write the <a> tag t (html[start..t->end)) with its href
 * replaced when the callback tracks it. */
static int rewrite_a(const char *h, size_t start, const struct tag *t, mime_track_link_fn fn, void *ctx,
                     struct buf *out)
{
    const struct attr *href = NULL;
    for (size_t k = 0; k < t->na; k++) {
        const struct attr *a = &t->a[k];
        if (ascii_ieq(h + a->name, a->name_len, "data-mailgate-notrack"))
            return buf_append(out, h + start, t->end - start);
        if (!href && a->has_val && ascii_ieq(h + a->name, a->name_len, "href"))
            href = a; /* HTML5: the first of duplicate attributes wins */
    }
    if (!href)
        return buf_append(out, h + start, t->end - start);
    struct buf url, repl;
    buf_init(&url, 0);
    buf_init(&repl, 0);
    int rc = mime_html_attr_decode(h + href->val, href->val_len, &url);
    size_t b = 0, e = 0;
    int track = rc == 0 && url.data && http_url(url.data, url.len, &b, &e) && e - b <= MIME_TRACK_URL_MAX;
    if (track) {
        int r = fn(ctx, url.data + b, e - b, &repl);
        if (r < 0)
            rc = -1;
        track = r == 0;
    }
    if (rc == 0) {
        if (!track) {
            rc = buf_append(out, h + start, t->end - start);
        } else {
            /* up to the value, the new value in double quotes, the rest */
            size_t vstart = href->quote ? href->val - 1 : href->val;
            size_t vend = href->val + href->val_len + (href->quote && href->val + href->val_len < t->end ? 1 : 0);
            rc = buf_append(out, h + start, vstart - start) < 0 || buf_putc(out, '"') < 0 ||
                         mime_html_attr_escape(repl.data ? repl.data : "", repl.len, out) < 0 ||
                         buf_putc(out, '"') < 0 || buf_append(out, h + vend, t->end - vend) < 0
                     ? -1
                     : 0;
        }
    }
    buf_free(&url);
    buf_free(&repl);
    return rc;
}

int mime_track_links(const char *html, size_t len, mime_track_link_fn fn, void *ctx, struct buf *out)
{
    size_t i = 0;
    while (i < len) {
        const char *lt = memchr(html + i, '<', len - i);
        size_t run = lt ? (size_t)(lt - (html + i)) : len - i;
        if (run && buf_append(out, html + i, run) < 0)
            return -1;
        i += run;
        if (i >= len)
            break;
        /* html[i] == '<' */
        if (len - i >= 4 && !strncmp(html + i, "<!--", 4)) {
            if (len - i >= 7 && !strncasecmp(html + i + 4, "[if", 3)) {
                /* conditional comment: copy its opening, scan the rest */
                const char *gt = memchr(html + i, '>', len - i);
                size_t e = gt ? (size_t)(gt - html) + 1 : len;
                if (buf_append(out, html + i, e - i) < 0)
                    return -1;
                i = e;
                continue;
            }
            /* "<!-->" and "<!--->" are (empty) comments too (HTML5) */
            const char *end = len - i >= 5 && html[i + 4] == '>' ? html + i + 5
                              : len - i >= 6 && !strncmp(html + i + 4, "->", 2) ? html + i + 6
                                                                               : NULL;
            for (size_t k = i + 4; k + 3 <= len && !end; k++)
                if (!strncmp(html + k, "-->", 3))
                    end = html + k + 3;
            size_t e = end ? (size_t)(end - html) : len;
            if (buf_append(out, html + i, e - i) < 0)
                return -1;
            i = e;
            continue;
        }
        int starts_tag = i + 1 < len && (isalpha((unsigned char)html[i + 1]) ||
                                         (html[i + 1] == '/' && i + 2 < len && isalpha((unsigned char)html[i + 2])));
        if (!starts_tag) {
            if (buf_putc(out, '<') < 0)
                return -1;
            i++;
            continue;
        }
        struct tag t;
        parse_tag(html, len, i, &t);
        int rc;
        if (!t.closing && ascii_ieq(html + t.name, t.name_len, "a"))
            rc = rewrite_a(html, i, &t, fn, ctx, out);
        else
            rc = buf_append(out, html + i, t.end - i);
        if (rc < 0)
            return -1;
        size_t next = t.end;
        if (!t.closing && raw_text_element(html + t.name, t.name_len)) {
            /* copy up to the matching end tag, untouched */
            char close[16] = "</";
            memcpy(close + 2, html + t.name, t.name_len < 10 ? t.name_len : 10);
            close[2 + (t.name_len < 10 ? t.name_len : 10)] = '\0';
            const char *c = find_ci(html + next, len - next, close);
            size_t e = c ? (size_t)(c - html) : len;
            if (buf_append(out, html + next, e - next) < 0)
                return -1;
            next = e;
        }
        i = next;
    }
    return 0;
}

int mime_track_pixel(const char *html, size_t len, const char *pixel_url, struct buf *out)
{
    /* the last "</body" followed by white space, '/' or '>' */
    size_t at = len;
    for (size_t k = len; k-- > 0;) {
        if (html[k] != '<' || len - k < 6 || strncasecmp(html + k, "</body", 6) != 0)
            continue;
        if (len - k == 6 || is_space(html[k + 6]) || html[k + 6] == '>' || html[k + 6] == '/') {
            at = k;
            break;
        }
    }
    if (buf_append(out, html, at) < 0 || buf_puts(out, "<img src=\"") < 0 ||
        mime_html_attr_escape(pixel_url, strlen(pixel_url), out) < 0 ||
        buf_puts(out, "\" width=\"1\" height=\"1\" alt=\"\" style=\"border:0;width:1px;height:1px\" />") < 0 ||
        buf_append(out, html + at, len - at) < 0)
        return -1;
    return 0;
}
