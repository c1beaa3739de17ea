/*
 * gw_templates.c - stored Mustache templates: PUT, GET, DELETE
 * /v1/templates/{name}, GET /v1/templates, POST /v1/templates/{name}/render,
 * and the template/data/strict part of POST /v1/messages (gw_tmpl_apply).
 *
 * A template has up to three parts, subject, text and html, each a Mustache
 * source (templates/tmpl.h), and needs text or html. Every part is compiled
 * at PUT, so a stored template is known to parse; a syntax error is a 422
 * naming the part, with the line and column of the offending tag. Rendering
 * escapes variables in html only. A partial {{> other}} or a parent
 * {{< other}} inside a part is the SAME part of the tenant's template
 * "other", read from Redis when the engine first asks for it (the engine
 * compiles each name once per render and bounds their number and depth).
 *
 * Decisions: on send, "template" together with subject, text or html is a
 * 422 naming the part given (the stored template provides all three; a
 * silent winner would hide a client bug). "data" without "template" renders
 * the request's own parts. "strict": true turns a missing variable into a
 * 422 with field "data" naming the variable and the part. The render
 * endpoint previews and does not apply the send checks (subject CR/LF and
 * length); sending does, on the rendered subject.
 *
 * Limits: names 1..64 of [A-Za-z0-9._-]; each source TMPL_SOURCE_MAX bytes;
 * GW_TEMPLATES_MAX templates per tenant; the rendered parts together at
 * most GW_MESSAGE_MAX bytes (413 beyond); the engine's own limits on
 * nesting, partials and work per render.
 * SECURITY: templates and data are tenant input; every lookup is keyed by
 * the authenticated tenant, so another tenant's template is simply not
 * found (404, or empty as a partial). Escaping is HTML text escaping only
 * (see tmpl.h).
 */
#include "gateway/gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "templates/tmpl.h"

#define NPARTS 3

/* The parts in the order they are checked and rendered. */
static const char *const parts[NPARTS] = {"subject", "text", "html"};

static void redis_down(struct gw_resp *resp)
{
    gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
    util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
}

static int name_check(struct gw_resp *resp, const char *name)
{
    if (queue_tmpl_name_ok(name))
        return 0;
    gw_error(resp, 422, "validation_error", "name",
             "name must have 1 to %d characters of A-Z a-z 0-9 . _ -", QUEUE_TMPL_NAME_MAX);
    return -1;
}

/* load_body - the request body as a JSON object whose members are all
 * among allowed (NULL-terminated). An empty body is {} when empty_ok.
 * Returns the object (caller frees) or NULL with resp set. */
static json_t *load_body(struct gw_req *req, struct gw_resp *resp, const char *const *allowed, int empty_ok)
{
    if (req->bodylen == 0 && empty_ok)
        return json_object();
    json_error_t jerr;
    json_t *o = json_loadb(req->body, req->bodylen, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        gw_error(resp, 400, "invalid_json", NULL, "body is not valid JSON: %s (line %d, column %d)", jerr.text,
                 jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(o)) {
        gw_error(resp, 422, "validation_error", NULL, "the body must be a JSON object");
        json_decref(o);
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int known = 0;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(k, *a))
                known = 1;
        if (!known) {
            char field[200];
            util_strlcpy(field, k, sizeof(field));
            gw_error(resp, 422, "validation_error", field, "%s is not a known field", field);
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* ---- rendering --------------------------------------------------------- */

/* Partial resolver state: one part of one tenant's templates. */
struct resolver {
    struct queue *q;
    const char *tenant;
    const char *part;
    char *last;       /* the source returned last; freed on the next call */
    int redis_failed; /* a lookup failed: the output cannot be trusted */
};

/* resolve - tmpl_partial_fn: the same part of the stored template name.
 * A name that is not a valid template name, or a template without this
 * part, is missing (renders empty, as the spec says). */
static const char *resolve(void *ctx, const char *name, size_t *len)
{
    struct resolver *r = ctx;
    free(r->last);
    r->last = NULL;
    if (!queue_tmpl_name_ok(name))
        return NULL;
    int rc = queue_tmpl_part(r->q, r->tenant, name, r->part, &r->last, len);
    if (rc < 0)
        r->redis_failed = 1;
    return rc == 0 ? r->last : NULL;
}

/* Why rendering one part failed. */
enum part_fail { FAIL_COMPILE, FAIL_RENDER, FAIL_REDIS };

/* render_part - compile src (len bytes) and render it with data into out
 * (whose maximum bounds the output). 0, or -1 with *why and *err set. */
static int render_part(struct gw_req *req, int idx, const char *src, size_t len, json_t *data, int strict,
                       struct buf *out, enum part_fail *why, struct tmpl_error *err)
{
    struct tmpl *t = tmpl_compile(src, len, err);
    if (!t) {
        *why = FAIL_COMPILE;
        return -1;
    }
    struct resolver res = {.q = req->q, .tenant = req->key.tenant, .part = parts[idx]};
    struct tmpl_opts o = {
        .escape_html = !strcmp(parts[idx], "html"),
        .strict = strict,
        .partial = resolve,
        .ctx = &res,
    };
    int rc = tmpl_render(t, data, &o, out, err);
    free(res.last);
    tmpl_free(t);
    if (res.redis_failed) {
        *why = FAIL_REDIS;
        return -1;
    }
    if (rc < 0)
        *why = FAIL_RENDER;
    return rc;
}

/* where - " at line L, column C[ of template 'p']" for err, or "". */
static const char *where(const struct tmpl_error *err, char *out, size_t len)
{
    out[0] = '\0';
    if (err->line && err->partial[0])
        snprintf(out, len, " at line %u, column %u of template '%.64s'", err->line, err->column, err->partial);
    else if (err->line)
        snprintf(out, len, " at line %u, column %u", err->line, err->column);
    return out;
}

/* part_error - answer a failed part. compile_field names the field a
 * syntax error is reported on (the part itself for a request's own source;
 * "template" for a stored one). */
static void part_error(struct gw_resp *resp, int idx, enum part_fail why, const struct tmpl_error *err,
                       const char *compile_field)
{
    char pos[160];
    const char *part = parts[idx];
    if (why == FAIL_REDIS) {
        redis_down(resp);
    } else if (why == FAIL_COMPILE) {
        gw_error(resp, 422, "validation_error", compile_field ? compile_field : part,
                 "%s does not compile%s: %s", part, where(err, pos, sizeof(pos)), err->message);
    } else if (!strncmp(err->message, "missing variable", 16)) {
        /* The engine's only error for strict mode (tmpl.h: "a missing
         * variable in strict mode"); err->name holds the variable. */
        gw_error(resp, 422, "validation_error", "data", "missing variable %s in %s%s", err->name, part,
                 where(err, pos, sizeof(pos)));
    } else if (!strncmp(err->message, "output too large", 16)) {
        gw_error(resp, 413, "message_too_large", part, "the rendered %s exceeds the %zu bytes a message may have",
                 part, GW_MESSAGE_MAX);
    } else {
        gw_error(resp, 422, "validation_error", err->partial[0] ? "template" : part, "%s cannot be rendered%s: %s",
                 part, where(err, pos, sizeof(pos)), err->message);
    }
}

/*
 * render_all - render every present part (src[i] != NULL) with data. On
 * success out[i] is the rendered part (caller frees) or NULL when absent,
 * and outlen[i] its length. The parts share one GW_MESSAGE_MAX budget.
 * Returns 0, or -1 with resp set and nothing in out.
 */
static int render_all(struct gw_req *req, struct gw_resp *resp, const char *const *src, const size_t *len,
                      json_t *data, int strict, const char *compile_field, char **out, size_t *outlen)
{
    size_t used = 0;
    for (int i = 0; i < NPARTS; i++)
        out[i] = NULL;
    for (int i = 0; i < NPARTS; i++) {
        if (!src[i])
            continue;
        struct buf b;
        buf_init(&b, GW_MESSAGE_MAX - used);
        enum part_fail why = FAIL_RENDER;
        struct tmpl_error err;
        if (render_part(req, i, src[i], len[i], data, strict, &b, &why, &err) < 0) {
            buf_free(&b);
            part_error(resp, i, why, &err, compile_field);
            for (int j = 0; j < i; j++) {
                free(out[j]);
                out[j] = NULL;
            }
            return -1;
        }
        used += b.len;
        outlen[i] = b.len;
        out[i] = buf_steal(&b);
    }
    return 0;
}

/* ---- the routes -------------------------------------------------------- */

void gw_tmpl_put(struct gw_req *req, struct gw_resp *resp, const char *name)
{
    static const char *const allowed[] = {"subject", "text", "html", NULL};
    if (name_check(resp, name) < 0)
        return;
    json_t *o = load_body(req, resp, allowed, 0);
    if (!o)
        return;
    const char *src[NPARTS];
    size_t len[NPARTS];
    for (int i = 0; i < NPARTS; i++) {
        src[i] = NULL;
        len[i] = 0;
        json_t *v = json_object_get(o, parts[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_string(v)) {
            gw_error(resp, 422, "validation_error", parts[i], "%s must be a string", parts[i]);
            goto out;
        }
        src[i] = json_string_value(v);
        len[i] = json_string_length(v);
        if (strlen(src[i]) != len[i]) {
            gw_error(resp, 422, "validation_error", parts[i], "%s must not contain NUL characters", parts[i]);
            goto out;
        }
        if (len[i] > TMPL_SOURCE_MAX) {
            gw_error(resp, 422, "validation_error", parts[i], "%s is larger than %zu bytes", parts[i],
                     TMPL_SOURCE_MAX);
            goto out;
        }
        struct tmpl_error err;
        struct tmpl *t = tmpl_compile(src[i], len[i], &err);
        if (!t) {
            part_error(resp, i, FAIL_COMPILE, &err, NULL);
            goto out;
        }
        tmpl_free(t);
    }
    if (!src[1] && !src[2]) {
        gw_error(resp, 422, "validation_error", "text", "a template needs text or html");
        goto out;
    }
    struct queue_tmpl_src qs = {
        .subject = src[0], .text = src[1], .html = src[2],
        .subject_len = len[0], .text_len = len[1], .html_len = len[2],
    };
    int created = 0;
    json_t *stored = NULL;
    int rc = queue_tmpl_put(req->q, req->key.tenant, name, &qs, GW_TEMPLATES_MAX, &created, &stored);
    if (rc < 0) {
        redis_down(resp);
    } else if (rc > 0) {
        gw_error(resp, 422, "limit_exceeded", "name", "this tenant already has %d templates; delete one first",
                 GW_TEMPLATES_MAX);
    } else {
        resp->status = created ? 201 : 200;
        resp->body = stored;
    }
out:
    json_decref(o);
}

void gw_tmpl_get(struct gw_req *req, struct gw_resp *resp, const char *name)
{
    json_t *t = NULL;
    int rc = queue_tmpl_name_ok(name) ? queue_tmpl_get(req->q, req->key.tenant, name, &t) : 1;
    if (rc < 0) {
        redis_down(resp);
    } else if (rc > 0) {
        gw_error(resp, 404, "not_found", NULL, "no template with this name");
    } else {
        resp->status = 200;
        resp->body = t;
    }
}

void gw_tmpl_delete(struct gw_req *req, struct gw_resp *resp, const char *name)
{
    int rc = queue_tmpl_name_ok(name) ? queue_tmpl_delete(req->q, req->key.tenant, name) : 1;
    if (rc < 0)
        redis_down(resp);
    else if (rc > 0)
        gw_error(resp, 404, "not_found", NULL, "no template with this name");
    else
        resp->status = 204;
}

void gw_tmpl_list(struct gw_req *req, struct gw_resp *resp)
{
    json_t *out = NULL;
    if (queue_tmpl_list(req->q, req->key.tenant, &out) < 0) {
        redis_down(resp);
        return;
    }
    resp->status = 200;
    resp->body = out;
}

/* stored_sources - the parts of a stored template object t (borrowed). */
static void stored_sources(json_t *t, const char **src, size_t *len)
{
    for (int i = 0; i < NPARTS; i++) {
        json_t *v = json_object_get(t, parts[i]);
        src[i] = json_is_string(v) ? json_string_value(v) : NULL;
        len[i] = json_is_string(v) ? json_string_length(v) : 0;
    }
}

/* strict_flag - "strict" of o: 0 absent/null/false, 1 true, -1 (resp set)
 * for anything else. */
static int strict_flag(struct gw_resp *resp, json_t *o)
{
    json_t *v = json_object_get(o, "strict");
    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        gw_error(resp, 422, "validation_error", "strict", "strict must be true or false");
        return -1;
    }
    return json_is_true(v);
}

void gw_tmpl_render(struct gw_req *req, struct gw_resp *resp, const char *name)
{
    static const char *const allowed[] = {"data", "strict", NULL};
    json_t *t = NULL;
    int rc = queue_tmpl_name_ok(name) ? queue_tmpl_get(req->q, req->key.tenant, name, &t) : 1;
    if (rc < 0) {
        redis_down(resp);
        return;
    }
    if (rc > 0) {
        gw_error(resp, 404, "not_found", NULL, "no template with this name");
        return;
    }
    json_t *o = load_body(req, resp, allowed, 1);
    int strict = o ? strict_flag(resp, o) : -1;
    if (strict >= 0) {
        const char *src[NPARTS];
        size_t len[NPARTS], outlen[NPARTS];
        char *out[NPARTS];
        stored_sources(t, src, len);
        if (render_all(req, resp, src, len, json_object_get(o, "data"), strict, "template", out, outlen) == 0) {
            json_t *body = json_object();
            for (int i = 0; i < NPARTS; i++) {
                json_t *s = out[i] ? json_stringn(out[i], outlen[i]) : json_null();
                json_object_set_new(body, parts[i], s ? s : json_null());
                free(out[i]);
            }
            resp->status = 200;
            resp->body = body;
        }
    }
    json_decref(o);
    json_decref(t);
}

int gw_tmpl_apply(struct gw_req *req, struct gw_resp *resp, json_t *o)
{
    json_t *tv = json_object_get(o, "template");
    json_t *data = json_object_get(o, "data");
    if (json_is_null(tv))
        tv = NULL;
    if (json_is_null(data))
        data = NULL;
    if (!tv && !data)
        return 0;
    int strict = strict_flag(resp, o);
    if (strict < 0)
        return -1;

    const char *src[NPARTS];
    size_t len[NPARTS];
    json_t *stored = NULL;
    const char *tname = NULL;
    if (tv) {
        tname = json_string_value(tv);
        if (!tname || !queue_tmpl_name_ok(tname)) {
            gw_error(resp, 422, "validation_error", "template",
                     "template must be the name of a stored template (1 to %d of A-Z a-z 0-9 . _ -)",
                     QUEUE_TMPL_NAME_MAX);
            return -1;
        }
        for (int i = 0; i < NPARTS; i++) {
            json_t *v = json_object_get(o, parts[i]);
            if (v && !json_is_null(v)) {
                gw_error(resp, 422, "validation_error", parts[i],
                         "%s cannot be given with template: the stored template provides it", parts[i]);
                return -1;
            }
        }
        int rc = queue_tmpl_get(req->q, req->key.tenant, tname, &stored);
        if (rc < 0) {
            redis_down(resp);
            return -1;
        }
        if (rc > 0) {
            gw_error(resp, 422, "validation_error", "template", "no template named '%s'", tname);
            return -1;
        }
        stored_sources(stored, src, len);
        if (!src[0]) {
            gw_error(resp, 422, "validation_error", "template",
                     "template '%s' has no subject; add one with PUT /v1/templates/%s", tname, tname);
            json_decref(stored);
            return -1;
        }
    } else {
        /* Only strings are sources; anything else is left for the send
         * checks to refuse with their usual message. */
        for (int i = 0; i < NPARTS; i++) {
            json_t *v = json_object_get(o, parts[i]);
            src[i] = json_is_string(v) ? json_string_value(v) : NULL;
            len[i] = json_is_string(v) ? json_string_length(v) : 0;
        }
    }

    char *out[NPARTS];
    size_t outlen[NPARTS];
    int rc = render_all(req, resp, src, len, data, strict, tv ? "template" : NULL, out, outlen);
    json_decref(stored); /* src pointed into it */
    if (rc < 0)
        return -1;
    for (int i = 0; i < NPARTS; i++) {
        if (!out[i])
            continue;
        json_t *s = json_stringn(out[i], outlen[i]);
        free(out[i]);
        out[i] = NULL;
        if (!s || json_object_set_new(o, parts[i], s) < 0) {
            gw_error(resp, 422, "validation_error", parts[i], "the rendered %s is not valid UTF-8", parts[i]);
            for (int j = i + 1; j < NPARTS; j++)
                free(out[j]);
            return -1;
        }
    }
    return 0;
}
