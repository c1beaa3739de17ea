/*
 * gw_compat_mailgun.c - the Mailgun-compatible surface:
 * POST /v3/{domain}/messages as multipart/form-data (or
 * application/x-www-form-urlencoded), with Authorization: Basic
 * base64("api:<mailgate key>").
 *
 * The form, parsed by libmicrohttpd's post processor (gw_form_parse),
 * becomes one mailgate message: from; to, cc and bcc (repeatable, each an
 * address or a list); subject, text, html; "attachment" and "inline" file
 * parts (an inline part's Content-ID is its file name, as Mailgun does, so
 * the html refers to it as cid:<file name>); o:tag (repeatable) as tags;
 * o:deliverytime (RFC 2822, or RFC 3339) as send_at; h:<Name> as headers
 * (h:Reply-To as reply_to; h:X-Mailgun-Variables, a JSON object, as
 * metadata); v:<name> as metadata; template and t:variables as template
 * and data; o:tracking-opens / o:tracking-clicks "yes" as tracking;
 * o:testmode "yes" checks the message and queues nothing. The {domain} and
 * other fields mailgate has no use for (o:dkim, recipient-variables, ...)
 * are ignored.
 * Answers: 200 {id: "<message id>", message: "Queued. Thank you."}, where
 * the id inside the brackets is mailgate's message id followed by
 * "@" and MAILGATE_HELO_NAME (the Message-ID header sent); errors
 * {message} with 400 for a request Mailgun would refuse, and 401 with the
 * plain-text body "Forbidden" for a bad key, as Mailgun answers.
 * Limits: the form's (GW_FORM_FIELDS_MAX); the rest are the send's.
 */
#include "gateway/gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/util.h"

static void mg_error(struct gw_resp *resp, int status, const char *msg)
{
    json_decref(resp->body);
    resp->body = json_pack("{s:s}", "message", msg);
    resp->status = status;
}

void gw_mg_shape(struct gw_req *req, struct gw_resp *resp)
{
    const char *type, *msg, *field;
    if (!gw_compat_error(resp, &type, &msg, &field))
        return;
    char m[700];
    if (*field && !strstr(msg, field))
        snprintf(m, sizeof(m), "'%s' parameter is not valid: %s", field, msg);
    else
        snprintf(m, sizeof(m), "%s", msg);
    switch (resp->status) {
    case 401:
    case 403:
        json_decref(resp->body);
        resp->body = NULL;
        resp->text = strdup("Forbidden");
        resp->text_type = "text/plain; charset=utf-8";
        resp->status = 401;
        return;
    case 422:
    case 415:
        mg_error(resp, 400, m);
        return;
    default:
        mg_error(resp, resp->status, m);
        return;
    }
}

/* parse_date - Mailgun's o:deliverytime, RFC 2822 ("Thu, 13 Oct 2011
 * 18:02:00 +0000", zone +hhmm/-hhmm or GMT/UT/UTC), or an RFC 3339 time,
 * into ms since the epoch. Returns 0 or -1. */
static int parse_date(const char *s, int64_t *ms)
{
    if (util_parse_rfc3339(s, ms) == 0)
        return 0;
    const char *p = strchr(s, ',');
    p = p ? p + 1 : s;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(p, " %d %b %Y %H:%M:%S", &tm);
    if (!end) {
        memset(&tm, 0, sizeof(tm));
        end = strptime(p, " %d %b %Y %H:%M", &tm);
    }
    if (!end)
        return -1;
    while (*end == ' ')
        end++;
    long off = 0;
    if ((*end == '+' || *end == '-') && strlen(end) == 5 && strspn(end + 1, "0123456789") == 4) {
        off = ((end[1] - '0') * 10 + (end[2] - '0')) * 3600L + ((end[3] - '0') * 10 + (end[4] - '0')) * 60L;
        if (*end == '-')
            off = -off;
    } else if (*end && strcasecmp(end, "GMT") && strcasecmp(end, "UT") && strcasecmp(end, "UTC")) {
        return -1;
    }
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *ms = ((int64_t)t - off) * 1000;
    return 0;
}

static int yes(const char *v)
{
    return !strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "htmlonly");
}

/* append - o[key] gets value appended (an array made on first use). */
static void append(json_t *o, const char *key, json_t *value)
{
    json_t *a = json_object_get(o, key);
    if (!a) {
        a = json_array();
        json_object_set_new(o, key, a);
    }
    json_array_append_new(a, value);
}

/* object_of - o[key] as an object made on first use. */
static json_t *object_of(json_t *o, const char *key)
{
    json_t *m = json_object_get(o, key);
    if (!m) {
        m = json_object();
        json_object_set_new(o, key, m);
    }
    return m;
}

/* translate - the form as a new mailgate object (*out); *testmode set for
 * o:testmode. Returns 0, or -1 with a Mailgun error in resp. */
static int translate(const struct gw_form *f, json_t **out, int *testmode, struct gw_resp *resp)
{
    json_t *o = json_object();
    char msg[400];
    *testmode = 0;
    for (size_t i = 0; i < f->n; i++) {
        const struct gw_form_field *ff = &f->v[i];
        const char *k = ff->name;
        /* text: no NUL inside and well-formed UTF-8 */
        int text = strlen(ff->data) == ff->len && util_utf8_valid(ff->data, ff->len);
        if (!strcmp(k, "attachment") || !strcmp(k, "inline")) {
            json_t *content = gw_compat_base64(ff->data, ff->len);
            const char *fn = ff->filename && *ff->filename ? ff->filename : "attachment";
            json_t *a = content ? json_pack("{s:s, s:o}", "filename", fn, "content", content) : NULL;
            if (!a) {
                snprintf(msg, sizeof(msg), "'%s' file name must be UTF-8 text", k);
                goto bad;
            }
            if (ff->content_type && *ff->content_type && strcasecmp(ff->content_type, "application/octet-stream"))
                json_object_set_new(a, "content_type", json_stringn(ff->content_type, strcspn(ff->content_type, ";")));
            if (!strcmp(k, "inline"))
                json_object_set_new(a, "content_id", json_string(fn));
            append(o, "attachments", a);
            continue;
        }
        if (!text) {
            snprintf(msg, sizeof(msg), "'%.100s' parameter must be UTF-8 text", k);
            goto bad;
        }
        const char *v = ff->data;
        if (!strcmp(k, "to") || !strcmp(k, "cc") || !strcmp(k, "bcc")) {
            if (*v)
                append(o, k, json_string(v));
        } else if (!strcmp(k, "from") || !strcmp(k, "subject") || !strcmp(k, "text") || !strcmp(k, "html") ||
                   !strcmp(k, "template")) {
            if (*v)
                json_object_set_new(o, k, json_string(v));
        } else if (!strcmp(k, "o:tag")) {
            append(o, "tags", json_string(v));
        } else if (!strcmp(k, "o:deliverytime")) {
            int64_t ms;
            char ts[40];
            if (parse_date(v, &ms) < 0) {
                snprintf(msg, sizeof(msg), "'o:deliverytime' parameter is not a valid RFC 2822 date: %.100s", v);
                goto bad;
            }
            json_object_set_new(o, "send_at", json_string(util_rfc3339(ms, ts, sizeof(ts))));
        } else if (!strcmp(k, "o:testmode")) {
            *testmode = yes(v);
        } else if (!strcmp(k, "o:tracking-opens")) {
            if (yes(v))
                json_object_set_new(o, "track_opens", json_true());
        } else if (!strcmp(k, "o:tracking-clicks")) {
            if (yes(v))
                json_object_set_new(o, "track_clicks", json_true());
        } else if (!strcasecmp(k, "h:Reply-To")) {
            json_object_set_new(o, "reply_to", json_string(v));
        } else if (!strcasecmp(k, "h:X-Mailgun-Variables") || !strcmp(k, "t:variables")) {
            json_error_t jerr;
            json_t *vars = json_loads(v, JSON_REJECT_DUPLICATES, &jerr);
            if (!json_is_object(vars)) {
                json_decref(vars);
                snprintf(msg, sizeof(msg), "'%s' parameter must be a JSON object", k);
                goto bad;
            }
            if (!strcmp(k, "t:variables"))
                json_object_set_new(o, "data", vars);
            else {
                json_object_update(object_of(o, "metadata"), vars);
                json_decref(vars);
            }
        } else if (!strncmp(k, "h:", 2) && k[2]) {
            json_object_set_new(object_of(o, "headers"), k + 2, json_string(v));
        } else if (!strncmp(k, "v:", 2) && k[2]) {
            json_object_set_new(object_of(o, "metadata"), k + 2, json_string(v));
        }
        /* anything else (o:dkim, recipient-variables, amp-html, ...) is ignored */
    }
    if (json_object_get(o, "template") && !json_object_get(o, "data"))
        json_object_set_new(o, "data", json_object());
    *out = o;
    return 0;
bad:
    json_decref(o);
    mg_error(resp, 400, msg);
    return -1;
}

void gw_mg_send(struct gw_req *req, struct gw_resp *resp, const char *domain)
{
    struct gw_form f = {0};
    char err[200];
    json_t *o = NULL;
    int testmode = 0;
    if (gw_form_parse(req, &f, err, sizeof(err)) < 0) {
        mg_error(resp, 400, err);
        goto out;
    }
    if (translate(&f, &o, &testmode, resp) < 0)
        goto out;
    gw_form_free(&f); /* the object holds copies; free the form early */
    if (!json_object_get(o, "from")) {
        mg_error(resp, 400, "'from' parameter is missing");
        goto out;
    }
    if (!json_object_get(o, "to") && !json_object_get(o, "cc") && !json_object_get(o, "bcc")) {
        mg_error(resp, 400, "'to' parameter is missing");
        goto out;
    }
    char id[400];
    if (testmode) {
        /* Mailgun's test mode accepts without delivering: check only. */
        if (gw_compat_precheck(o, resp) < 0) {
            gw_mg_shape(req, resp);
            goto out;
        }
        snprintf(id, sizeof(id), "<testmode@%s>", req->cfg->helo);
    } else {
        gw_send_object(req, o, resp);
        if (resp->status != 202) {
            gw_mg_shape(req, resp);
            goto out;
        }
        snprintf(id, sizeof(id), "<%s@%s>", json_string_value(json_object_get(resp->body, "id")), req->cfg->helo);
        json_decref(resp->body);
    }
    resp->body = json_pack("{s:s, s:s}", "id", id, "message", "Queued. Thank you.");
    resp->status = 200;
out:
    json_decref(o);
    gw_form_free(&f);
}
