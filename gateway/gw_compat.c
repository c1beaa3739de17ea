/*
 * gw_compat.c - helpers shared by the compatible surfaces (Postmark,
 * SendGrid, Resend, Mailgun): form bodies through libmicrohttpd's post
 * processor, base64, reading a mailgate error answer, and the whole-request
 * pre-check a surface makes before it queues several messages or none.
 *
 * Limits: a form has at most GW_FORM_FIELDS_MAX fields with names of at
 * most GW_FORM_NAME_MAX bytes; values are bounded by the request body
 * (GW_BODY_MAX), which is already buffered in full when a handler runs.
 * SECURITY: form values are data only; every one that becomes a header or
 * an address is checked again by gw_send_object (CR/LF, owned headers).
 */
#include "gateway/gw.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "templates/mime.h"

#define GW_FORM_PP_BUF 65536 /* post processor buffer, bytes */

/* ---- forms --------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* field_new - start a new field named key. 0, or -1 (limit, memory). */
static int field_new(struct gw_form *f, const char *key, const char *filename, const char *ctype)
{
    if (f->n >= GW_FORM_FIELDS_MAX || strlen(key) > GW_FORM_NAME_MAX)
        return -1;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct gw_form_field *v = realloc(f->v, cap * sizeof(*v));
        if (!v)
            return -1;
        f->v = v;
        f->cap = cap;
    }
    struct gw_form_field *ff = &f->v[f->n];
    memset(ff, 0, sizeof(*ff));
    ff->name = strdup(key);
    ff->filename = dup_or_null(filename);
    ff->content_type = dup_or_null(ctype);
    ff->data = calloc(1, 1);
    f->n++;
    return ff->name && ff->data && (!filename || ff->filename) && (!ctype || ff->content_type) ? 0 : -1;
}

/* form_iter - the post processor's callback: a chunk of one field's value.
 * A chunk at offset 0 starts a new field (repeated names such as "to" are
 * separate fields); later chunks extend the last one. */
static enum MHD_Result form_iter(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                 const char *content_type, const char *transfer_encoding, const char *data,
                                 uint64_t off, size_t size)
{
    struct gw_form *f = cls;
    if (!key) {
        f->failed = 1;
        return MHD_NO;
    }
    struct gw_form_field *last = f->n ? &f->v[f->n - 1] : NULL;
    if (off == 0 || !last || strcmp(last->name, key) != 0 || off != last->len) {
        if (field_new(f, key, filename, content_type) < 0) {
            f->failed = 1;
            return MHD_NO;
        }
        last = &f->v[f->n - 1];
    }
    if (size) {
        char *d = realloc(last->data, last->len + size + 1);
        if (!d) {
            f->failed = 1;
            return MHD_NO;
        }
        memcpy(d + last->len, data, size);
        last->len += size;
        d[last->len] = '\0';
        last->data = d;
    }
    return MHD_YES;
}

int gw_form_parse(struct gw_req *req, struct gw_form *f, char *err, size_t errlen)
{
    struct MHD_PostProcessor *pp =
        MHD_create_post_processor(req->conn, GW_FORM_PP_BUF, form_iter, f);
    if (!pp) {
        snprintf(err, errlen, "the body must be multipart/form-data or application/x-www-form-urlencoded");
        return -1;
    }
    enum MHD_Result ok = req->bodylen ? MHD_post_process(pp, req->body, req->bodylen) : MHD_YES;
    /* Destroying flushes the last urlencoded value; it fails on a
     * multipart body that ended before its closing boundary. */
    enum MHD_Result done = MHD_destroy_post_processor(pp);
    if (f->failed) {
        snprintf(err, errlen, "the form has more than %d fields, a field name longer than %d bytes, or is too large",
                 GW_FORM_FIELDS_MAX, GW_FORM_NAME_MAX);
        return -1;
    }
    if (ok != MHD_YES || done != MHD_YES) {
        snprintf(err, errlen, "the form body is malformed or incomplete");
        return -1;
    }
    return 0;
}

void gw_form_free(struct gw_form *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].name);
        free(f->v[i].filename);
        free(f->v[i].content_type);
        free(f->v[i].data);
    }
    free(f->v);
    memset(f, 0, sizeof(*f));
}

/* ---- small conversions ------------------------------------------------- */

json_t *gw_compat_base64(const void *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = p;
    size_t outlen = (n + 2) / 3 * 4;
    char *out = malloc(outlen + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = '\0';
    json_t *s = json_stringn_nocheck(out, o);
    free(out);
    return s;
}

json_t *gw_compat_unix_time(json_t *v)
{
    if (!json_is_integer(v))
        return NULL;
    json_int_t t = json_integer_value(v);
    if (t < 0 || t > 253402300799LL) /* 9999-12-31 */
        return NULL;
    char ts[40];
    return json_string(util_rfc3339((int64_t)t * 1000, ts, sizeof(ts)));
}

int gw_compat_error(const struct gw_resp *resp, const char **type, const char **message, const char **field)
{
    json_t *e = json_object_get(resp->body, "error");
    const char *t = json_string_value(json_object_get(e, "type"));
    if (!json_is_object(e) || !t)
        return 0;
    const char *m = json_string_value(json_object_get(e, "message"));
    const char *fl = json_string_value(json_object_get(e, "field"));
    if (type)
        *type = t;
    if (message)
        *message = m ? m : "";
    if (field)
        *field = fl ? fl : "";
    return 1;
}

/* ---- the pre-check ------------------------------------------------------- */

static int bad(struct gw_resp *resp, const char *field, const char *what, const char *detail)
{
    gw_error(resp, 422, "validation_error", field, "%s %s%s%s", field, what, detail && *detail ? ": " : "",
             detail ? detail : "");
    return -1;
}

/* addr_check - one address value (string address-list or {email, name})
 * into *count. 0 or -1 with resp set. */
static int addr_check(json_t *v, const char *field, size_t *count, struct gw_resp *resp)
{
    char err[256] = "";
    if (json_is_string(v)) {
        struct mime_addr_list l = {0};
        int rc = mime_addr_parse_list(json_string_value(v), &l, err, sizeof(err));
        size_t n = l.n;
        mime_addr_list_free(&l);
        if (rc < 0 || util_has_crlf(json_string_value(v)))
            return bad(resp, field, "is not a valid address", err);
        if (n == 0)
            return bad(resp, field, "holds no address", NULL);
        *count += n;
        return 0;
    }
    if (json_is_object(v)) {
        const char *email = json_string_value(json_object_get(v, "email"));
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!email)
            return bad(resp, field, "needs an email", NULL);
        struct mime_addr a = {0};
        int rc = mime_addr_set(&a, email, name && *name ? name : NULL, err, sizeof(err));
        mime_addr_free(&a);
        if (rc < 0)
            return bad(resp, field, "is not a valid address", err);
        (*count)++;
        return 0;
    }
    return bad(resp, field, "must be an address or a list of addresses", NULL);
}

static int addrs_check(json_t *o, const char *name, size_t *count, struct gw_resp *resp)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return addr_check(v, name, count, resp);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        char field[64];
        snprintf(field, sizeof(field), "%s[%zu]", name, i);
        if (addr_check(item, field, count, resp) < 0)
            return -1;
    }
    return 0;
}

int gw_compat_precheck(json_t *o, struct gw_resp *resp)
{
    json_t *from = json_object_get(o, "from");
    size_t nfrom = 0, nrcpt = 0, nreply = 0;
    if (!from || json_is_null(from))
        return bad(resp, "from", "is required", NULL);
    if (json_is_array(from))
        return bad(resp, "from", "must be exactly one address", NULL);
    if (addr_check(from, "from", &nfrom, resp) < 0)
        return -1;
    if (nfrom != 1)
        return bad(resp, "from", "must be exactly one address", NULL);
    if (addrs_check(o, "to", &nrcpt, resp) < 0 || addrs_check(o, "cc", &nrcpt, resp) < 0 ||
        addrs_check(o, "bcc", &nrcpt, resp) < 0 || addrs_check(o, "reply_to", &nreply, resp) < 0)
        return -1;
    if (nrcpt == 0)
        return bad(resp, "to", "needs at least one recipient (to, cc or bcc)", NULL);
    if (!json_object_get(o, "template")) {
        if (!json_is_string(json_object_get(o, "subject")))
            return bad(resp, "subject", "is required", NULL);
        if (!json_is_string(json_object_get(o, "text")) && !json_is_string(json_object_get(o, "html")))
            return bad(resp, "text", "is required: a message needs text or html", NULL);
    }
    json_t *atts = json_object_get(o, "attachments");
    size_t i;
    json_t *a;
    json_array_foreach(atts, i, a) {
        char field[64];
        snprintf(field, sizeof(field), "attachments[%zu]", i);
        json_t *c = json_object_get(a, "content");
        const char *which = "content";
        char err[256] = "";
        struct mime_attachment m = {0};
        if (!json_is_string(json_object_get(a, "filename")) || !json_is_string(c))
            return bad(resp, field, "needs a filename and a base64 content", NULL);
        int rc = mime_attachment_set(&m, json_string_value(json_object_get(a, "filename")),
                                     json_string_value(json_object_get(a, "content_type")), json_string_value(c),
                                     json_string_length(c), json_string_value(json_object_get(a, "content_id")),
                                     &which, err, sizeof(err));
        mime_attachment_free(&m);
        if (rc < 0) {
            char f2[96];
            snprintf(f2, sizeof(f2), "%s.%s", field, which);
            return bad(resp, f2, "is not valid", err);
        }
    }
    return 0;
}

/* depth - nesting depth of v, counting no further than limit + 1. */
static int depth(json_t *v, int limit)
{
    if (limit < 0 || (!json_is_object(v) && !json_is_array(v)))
        return 0;
    int d = 0;
    const char *k;
    size_t i;
    json_t *c;
    if (json_is_object(v)) {
        json_object_foreach(v, k, c) {
            int cd = depth(c, limit - 1);
            if (cd > d)
                d = cd;
        }
    } else {
        json_array_foreach(v, i, c) {
            int cd = depth(c, limit - 1);
            if (cd > d)
                d = cd;
        }
    }
    return d + 1;
}

json_t *gw_compat_parse(struct gw_req *req, struct gw_resp *resp)
{
    json_error_t jerr;
    json_t *v = json_loadb(req->body, req->bodylen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!v) {
        gw_error(resp, 400, "invalid_json", NULL, "body is not valid JSON: %s (line %d, column %d)", jerr.text,
                 jerr.line, jerr.column);
        return NULL;
    }
    if (depth(v, GW_JSON_DEPTH_MAX) > GW_JSON_DEPTH_MAX) {
        gw_error(resp, 422, "validation_error", NULL, "JSON nesting deeper than %d", GW_JSON_DEPTH_MAX);
        json_decref(v);
        return NULL;
    }
    return v;
}
