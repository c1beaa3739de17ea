/*
 * fuzz_tmpl.c - libFuzzer target for the Mustache engine: tmpl_compile on
 * fuzzed source, then tmpl_render with fuzzed JSON data and partials.
 *
 * Input layout: byte 0 selects options (HTML escaping, strict mode);
 * then the template source up to a NUL; then the JSON data up to a NUL
 * (invalid JSON renders with an object of a few values); the rest is the
 * source of every partial or parent (so {{> x}} and {{< x}} recurse into
 * fuzzed text, and into themselves). Rendering is bounded by a 1 MiB
 * output buffer and a small step budget so each input runs quickly.
 *
 * Besides memory errors (ASan/UBSan) it aborts when a failed render
 * changes its output buffer (tmpl.h promises it does not).
 * Build and run: make fuzz (see the Makefile).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "templates/tmpl.h"

struct partials {
    const char *src;
    size_t len;
};

static const char *partial(void *ctx, const char *name, size_t *len)
{
    const struct partials *p = ctx;
    if (!strcmp(name, "missing"))
        return NULL;
    *len = p->len;
    return p->src;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 100000)
        return 0;
    unsigned opt = data[0];
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    const char *z = memchr(in, '\0', n);
    size_t srclen = z ? (size_t)(z - in) : n;
    const char *jd = z ? z + 1 : in + n;
    size_t jn = (size_t)(in + n - jd);
    const char *z2 = memchr(jd, '\0', jn);
    size_t jlen = z2 ? (size_t)(z2 - jd) : jn;
    struct partials parts = {z2 ? z2 + 1 : "{{x}}", z2 ? (size_t)(in + n - (z2 + 1)) : 5};

    struct tmpl_error err;
    struct tmpl *t = tmpl_compile(in, srclen, &err);
    if (!t)
        return 0;
    json_error_t jerr;
    json_t *j = json_loadb(jd, jlen, JSON_DECODE_ANY, &jerr);
    if (!j)
        j = json_pack("{s:s, s:[i, i, {s:s}], s:{s:b}, s:n}", "x", "<&\"'>", "list", 1, 2, "y", "z", "o", "b", 1,
                      "nil");
    struct tmpl_opts o = {
        .escape_html = opt & 1, .strict = (opt >> 1) & 1, .partial = partial, .ctx = &parts,
        .max_steps = 200000,
    };
    struct buf out;
    buf_init(&out, 1 << 20);
    buf_puts(&out, "prefix");
    if (tmpl_render(t, j, &o, &out, &err) < 0 && (out.len != 6 || memcmp(out.data, "prefix", 6) != 0)) {
        fprintf(stderr, "fuzz_tmpl: a failed render changed its output\n");
        abort();
    }
    buf_free(&out);
    json_decref(j);
    tmpl_free(t);
    return 0;
}
