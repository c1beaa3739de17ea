/*
 * fuzz_addr.c - libFuzzer target for the address parser
 * (mime_addr_parse_list, mime_addr_parse_one, mime_addr_check_email) and
 * the formatter that writes what it parsed (mime_format_addr).
 *
 * Input: any bytes, taken as one NUL-terminated string (as the gateway
 * passes a JSON string). Besides memory errors (ASan/UBSan), it checks two
 * properties and aborts when one fails:
 *   - every mailbox the parser returns passes mime_addr_check_email;
 *   - formatting a parsed mailbox and parsing the result gives back the
 *     same addr-spec (the header we write means what was asked for), and
 *     the formatted text never holds a CR or LF other than folds.
 * Build and run: make fuzz (see the Makefile).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "templates/mime.h"

static void check(int ok, const char *what, const char *in)
{
    if (!ok) {
        fprintf(stderr, "fuzz_addr: %s for input \"%s\"\n", what, in);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char err[256];

    struct mime_addr_list l = {0};
    (void)mime_addr_parse_list(s, &l, err, sizeof(err));
    for (size_t i = 0; i < l.n; i++) {
        const struct mime_addr *a = &l.v[i];
        check(mime_addr_check_email(a->email, err, sizeof(err)) == 0, "parsed address fails check_email", s);
        struct buf out;
        buf_init(&out, 1 << 16);
        size_t col = 4;
        if (mime_format_addr(a, &out, &col) == 0) {
            for (size_t k = 0; k < out.len; k++)
                if (out.data[k] == '\r' || out.data[k] == '\n') {
                    check(out.data[k] == '\r' && k + 2 < out.len && out.data[k + 1] == '\n' &&
                              (out.data[k + 2] == ' ' || out.data[k + 2] == '\t'),
                          "formatted address has a CR/LF that is not a fold", s);
                    k++;
                }
            /* unfold, then parse back */
            struct buf un;
            buf_init(&un, 0);
            for (size_t k = 0; k < out.len; k++)
                if (out.data[k] != '\r' && out.data[k] != '\n')
                    buf_putc(&un, out.data[k]);
            struct mime_addr back = {0};
            check(mime_addr_parse_one(un.data ? un.data : "", &back, err, sizeof(err)) == 0,
                  "formatted address does not parse back", s);
            check(strcmp(back.email, a->email) == 0, "formatted address parses to another addr-spec", s);
            mime_addr_free(&back);
            buf_free(&un);
        }
        buf_free(&out);
    }
    mime_addr_list_free(&l);

    struct mime_addr one = {0};
    if (mime_addr_parse_one(s, &one, err, sizeof(err)) == 0)
        check(mime_addr_check_email(one.email, err, sizeof(err)) == 0, "parse_one result fails check_email", s);
    mime_addr_free(&one);
    (void)mime_addr_check_email(s, err, sizeof(err));
    free(s);
    return 0;
}
