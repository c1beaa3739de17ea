/*
 * smtp_reply.c - parse one SMTP reply (RFC 5321 §4.2) from received bytes.
 *
 * Pure function, no I/O: the session feeds it the start of its read buffer
 * and calls again with more bytes when it answers 0.
 *
 * Accepted: "250-..." continuation lines ending with "250 ..." (or a bare
 * "250"), CRLF or LF alone as the line end, at most SMTP_REPLY_LINES_MAX
 * lines of at most SMTP_LINE_MAX bytes. The RFC 3463 enhanced status code
 * is taken from the first line that begins with one whose class digit
 * matches the reply code's first digit, and removed from the text of every
 * line that repeats it ("250-2.0.0 a" / "250 2.0.0 b" gives text "a b").
 *
 * SECURITY: everything here comes from the network. Lines are bounded,
 * partial input is checked as far as it goes (garbage fails at once rather
 * than after a timeout), and the kept text has every control byte and
 * every non-ASCII byte replaced (by a space and '?') and is capped at
 * SMTP_REPLY_TEXT_MAX - 1 bytes, so it can be logged and stored as is.
 */
#include "smtp/smtp.h"

#include <string.h>

/* reply_code_ok - 1 when p[0..2] is a reply code we understand: first digit
 * 2-5 (1yz is never used by SMTP), then two digits. Checks only the n bytes
 * present so a partial line can be rejected early. */
static int reply_code_ok(const char *p, size_t n)
{
    if (n > 0 && (p[0] < '2' || p[0] > '5'))
        return 0;
    for (size_t i = 1; i < 3 && i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    if (n > 3 && p[3] != ' ' && p[3] != '-' && p[3] != '\r' && p[3] != '\n')
        return 0;
    return 1;
}

/* enhanced_len - length of an RFC 3463 code "c.sss.ddd" at the start of
 * p[0..n) whose class is cls, followed by a space or the end; 0 if none. */
static size_t enhanced_len(const char *p, size_t n, char cls)
{
    if (n < 5 || p[0] != cls || p[1] != '.')
        return 0;
    size_t i = 2, d = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && d < 3)
        i++, d++;
    if (d == 0 || i >= n || p[i] != '.')
        return 0;
    i++;
    d = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && d < 3)
        i++, d++;
    if (d == 0 || (i < n && p[i] != ' '))
        return 0;
    return i;
}

/* text_add - append line text p[0..n) to r->text, cleaned and capped;
 * *tl is the length kept so far. */
static void text_add(struct smtp_reply *r, size_t *tl, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (*tl > 0 && *tl < sizeof(r->text) - 1)
        r->text[(*tl)++] = ' ';
    for (size_t i = 0; i < n && *tl < sizeof(r->text) - 1; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f)
            c = ' ';
        else if (c >= 0x80)
            c = '?';
        r->text[(*tl)++] = (char)c;
    }
    r->text[*tl] = '\0';
}

int smtp_reply_parse(const char *in, size_t len, struct smtp_reply *r, size_t *used)
{
    size_t pos = 0, tl = 0;
    int lines = 0;
    struct smtp_reply tmp;

    memset(&tmp, 0, sizeof(tmp));
    for (;;) {
        const char *line = in + pos;
        size_t avail = len - pos;
        const char *lf = memchr(line, '\n', avail < SMTP_LINE_MAX + 2 ? avail : SMTP_LINE_MAX + 2);
        if (!lf) {
            if (!reply_code_ok(line, avail))
                return -1;
            /* a line may end in CR LF: SMTP_LINE_MAX + 1 bytes can still be fine */
            return avail > SMTP_LINE_MAX + 1 ? -1 : 0;
        }
        size_t n = (size_t)(lf - line);
        size_t next = pos + n + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n > SMTP_LINE_MAX || n < 3 || !reply_code_ok(line, n))
            return -1;
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (lines > 0 && code != tmp.code)
            return -1;
        if (++lines > SMTP_REPLY_LINES_MAX)
            return -1;
        tmp.code = code;

        int last = n == 3 || line[3] == ' ';
        const char *txt = line + (n > 3 ? 4 : 3);
        size_t txtn = n > 3 ? n - 4 : 0;
        size_t el = enhanced_len(txt, txtn, line[0]);
        if (el > 0 && el < sizeof(tmp.enhanced)) {
            if (tmp.enhanced[0] == '\0') {
                memcpy(tmp.enhanced, txt, el);
                tmp.enhanced[el] = '\0';
            }
            if (strlen(tmp.enhanced) == el && memcmp(tmp.enhanced, txt, el) == 0) {
                txt += el;
                txtn -= el;
                while (txtn > 0 && *txt == ' ')
                    txt++, txtn--;
            }
        }
        text_add(&tmp, &tl, txt, txtn);
        pos = next;
        if (last) {
            *r = tmp;
            *used = pos;
            return 1;
        }
    }
}
