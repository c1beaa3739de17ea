/*
 * tmpl.h - Mustache templates: compile once, render many times.
 *
 * Implements the Mustache specification (interpolation, sections, inverted
 * sections, comments, partials, set delimiters) plus the optional
 * inheritance module (parents {{<layout}} ... {{/layout}} and blocks
 * {{$name}} ... {{/name}}), which mailgate uses for layouts. Lambdas are not
 * supported. The data model is jansson: the context stack holds json_t
 * values.
 *
 * Rendering rules where the spec leaves a choice to the host language:
 *   - falsy: missing, null, false, [] and "" (as mustache.js and Handlebars;
 *     numbers, including 0, and objects, including {}, are truthy);
 *   - numbers: integers in decimal, reals in the shortest form that reads
 *     back to the same double (1.5 -> "1.5", 2.0 -> "2", 1e21 -> "1e+21");
 *   - true/false interpolate as "true"/"false", null as "", objects and
 *     arrays as compact JSON;
 *   - indentation of a standalone partial or parent is added before every
 *     line the partial's template text starts (not inside interpolated
 *     values, per the spec).
 *
 * Ownership: a struct tmpl owns a copy of its source; the caller owns data,
 * opts and out. Nothing here keeps a pointer to them after returning.
 *
 * SECURITY: templates are tenant input. Everything is bounded by the
 * constants below: source size, nesting, tag name length, partial/parent
 * recursion, context stack depth, work per render (so that nested loops
 * or recursive partials cannot burn CPU without producing output) and
 * output size (the maximum of the struct buf passed in). Escaping is HTML
 * text/attribute escaping only; it does not make values safe inside
 * <script>, style or URL contexts.
 */
#ifndef MG_TMPL_H
#define MG_TMPL_H

#include <stddef.h>

#include <jansson.h>

#include "common/buf.h"

#define TMPL_SOURCE_MAX ((size_t)512 * 1024) /* bytes of one template or partial source */
#define TMPL_DEPTH_MAX 64              /* nesting of sections, parents and blocks in one template */
#define TMPL_NAME_MAX 255              /* bytes of a tag name (variable, section, partial, block) */
#define TMPL_DELIM_MAX 16              /* bytes of a delimiter set by {{=<% %>=}} */
#define TMPL_PARTIAL_DEPTH_MAX 16      /* partials, parents and block substitutions active at once */
#define TMPL_PARTIALS_MAX 64           /* distinct partial names looked up in one render */
#define TMPL_CONTEXT_MAX 256           /* values on the context stack */
#define TMPL_INDENT_MAX 1024           /* bytes of accumulated standalone-partial indentation */
#define TMPL_STEPS_MAX 10000000UL      /* nodes visited plus list items iterated in one render */

struct tmpl;                           /* opaque compiled template */

/* Where and why compiling or rendering failed. */
struct tmpl_error {
    unsigned line;                      /* 1-based line of the offending tag; 0 if none */
    unsigned column;                    /* 1-based column (in characters) of that tag's opening delimiter */
    char partial[TMPL_NAME_MAX + 1];    /* partial or parent template line/column refer to; "" = the main one */
    char name[TMPL_NAME_MAX + 1];       /* variable, section or partial name at fault; "" if none */
    char message[256];                  /* human-readable reason, NUL-terminated */
};

/*
 * tmpl_partial_fn - look up the source of the partial or parent template
 * called name. Return NULL when there is none (it then renders as the empty
 * string, per the spec) and set *len to the source length otherwise. The
 * returned memory stays owned by the callback; it need only stay valid until
 * the callback is called again or tmpl_render returns (it is compiled, and
 * copied, at once).
 */
typedef const char *(*tmpl_partial_fn)(void *ctx, const char *name, size_t *len);

/* Render settings. A zeroed struct is valid: no escaping, lax, no partials,
 * default limits. */
struct tmpl_opts {
    int escape_html;            /* 1: {{x}} escapes & < > " ' (&amp; &lt; &gt; &quot; &#39;);
                                   {{{x}}} and {{&x}} never escape. 0: nothing is escaped */
    int strict;                 /* 1: interpolating a missing name ({{x}}, {{{x}}}, {{&x}}) is an
                                   error naming it; sections on missing names stay falsy */
    tmpl_partial_fn partial;    /* NULL: every partial and parent is missing */
    void *ctx;                  /* passed to partial */
    unsigned max_partial_depth; /* 0: TMPL_PARTIAL_DEPTH_MAX (larger values are capped to it) */
    unsigned long max_steps;    /* 0: TMPL_STEPS_MAX (larger values are capped to it) */
};

/*
 * tmpl_compile - parse len bytes of Mustache source into a template.
 * The source need not be NUL-terminated and is copied; the caller keeps it.
 * Returns a template to free with tmpl_free, or NULL on a syntax error
 * (unclosed tag, unclosed or mismatched section, stray closing tag, bad
 * delimiter change, empty or invalid tag name, nesting too deep, source
 * larger than TMPL_SOURCE_MAX) or out of memory, with the reason and the
 * position of the offending tag in *err (err may be NULL).
 */
struct tmpl *tmpl_compile(const char *src, size_t len, struct tmpl_error *err);

/* tmpl_free - release a template; NULL is ignored. */
void tmpl_free(struct tmpl *t);

/*
 * tmpl_render - render t with data (any JSON value; NULL behaves as an
 * empty context) and append the result to out, whose maximum bounds the
 * output. o may be NULL (then HTML escaping is on and everything else is
 * as a zeroed struct). Partials and parents are fetched through o->partial
 * and compiled on demand, once per name per render.
 * Returns 0, or -1 with *err filled in (err may be NULL): output too large,
 * missing variable in strict mode, a partial that does not compile,
 * recursion, context or step limits hit, out of memory. On error out is
 * restored to its length before the call.
 */
int tmpl_render(const struct tmpl *t, json_t *data, const struct tmpl_opts *o, struct buf *out,
                struct tmpl_error *err);

#endif
