/*
 * smtp_dot.c - the DATA payload: line ends and dot-stuffing (RFC 5321
 * §4.5.2), in one tested function.
 *
 * Input is the message as stored (CRLF expected, but LF or CR alone is
 * accepted and turned into CRLF, since a bare CR or LF must never reach
 * the wire: RFC 5321 §2.3.8). Output is what goes after the 354: every
 * line that begins with "." gets one more ".", the last line is closed
 * with CRLF if it was not, and ".\r\n" ends the data.
 *
 * Limits: out's own maximum; the worst case (every line "." or every byte
 * a bare LF) doubles the size. On failure out is left as it was.
 */
#include "smtp/smtp.h"

int smtp_dot_stuff(const char *in, size_t len, struct buf *out)
{
    size_t start = out->len;
    size_t i = 0;
    int bol = 1; /* at the beginning of a line */

    while (i < len) {
        if (bol && in[i] == '.' && buf_putc(out, '.') < 0)
            goto full;
        /* copy the run up to the next CR or LF in one append */
        size_t j = i;
        while (j < len && in[j] != '\r' && in[j] != '\n')
            j++;
        if (j > i && buf_append(out, in + i, j - i) < 0)
            goto full;
        if (j == len) {
            bol = 0;
            break;
        }
        /* CRLF, LF or CR alone: one line end */
        if (in[j] == '\r' && j + 1 < len && in[j + 1] == '\n')
            j++;
        if (buf_append(out, "\r\n", 2) < 0)
            goto full;
        i = j + 1;
        bol = 1;
    }
    if (!bol && buf_append(out, "\r\n", 2) < 0)
        goto full;
    if (buf_append(out, ".\r\n", 3) < 0)
        goto full;
    return 0;
full:
    buf_truncate(out, start);
    return -1;
}
