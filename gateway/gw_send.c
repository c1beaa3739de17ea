/*
 * gw_send.c - POST /v1/messages: validate the request, render the message,
 * queue it.
 *
 * Validation is complete before anything is written: the first problem is
 * answered with a 4xx naming the failing field ("to[1]", "headers.X-Tag"),
 * and nothing is queued. The rendered message is stored with its record,
 * recipients, events and job in one Redis transaction (queue layer), in
 * one round trip that also checks the suppression list: a listed
 * recipient aborts it, and it is made again with that one "suppressed".
 * Attachments are base64-decoded and checked here; the rendered message is
 * bounded by MAILGATE_MAX_MESSAGE_SIZE (413) and DKIM-signed last, when the
 * From domain has a key and the tenant's allowed_from names that domain.
 * With track_opens, track_clicks or unsubscribe, each recipient gets a copy
 * of its own, rendered with tokens that name it (gw_track.c): links and
 * the open pixel in the html part (templates/mime_track.c), and the RFC
 * 8058 List-Unsubscribe headers; each copy is DKIM-signed and queued with a
 * job of its own, all in the same one transaction. Without the flags the
 * one shared body is queued as before.
 * SECURITY: every value that becomes a header or an SMTP command is
 * refused when it holds CR or LF; owned headers cannot be set by callers
 * (List-Unsubscribe* included: only the gateway writes those).
 */
#include "gateway/gw.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"
#include "templates/mime.h"

static int json_scan(const char *p, size_t n, int max, char *field, size_t fieldlen);

#define GW_TAG_MAX 256 /* characters in one tag */

static const char *const known_fields[] = {
    "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "template", "data",
    "headers", "attachments", "tags", "metadata", "track_opens", "track_clicks", "unsubscribe",
    "strict", "send_at", NULL};

/* Headers mailgate writes itself (contract); prefixes end in '*'. */
static const char *const owned_headers[] = {
    "From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Subject", "Date", "Message-ID",
    "MIME-Version", "Return-Path", "DKIM-Signature", "List-Unsubscribe*", "Content-*", NULL};

/* A send request being validated. */
struct send {
    struct gw_req *req;
    struct gw_resp *resp;
    struct mime_addr from;
    struct mime_addr_list to, cc, bcc, reply_to;
    struct mime_header_field *headers;
    size_t nheaders;
    const char *subject, *text, *html;
    json_t *tags, *metadata;
    int64_t send_at_ms;
    struct mime_attachment *att; /* decoded attachments, owned */
    size_t natt;
    int track_opens, track_clicks, unsubscribe;
    json_t *tenant;              /* the tenant's settings (limits), owned */
};

static void send_free(struct send *s)
{
    json_decref(s->tenant);
    mime_addr_free(&s->from);
    mime_addr_list_free(&s->to);
    mime_addr_list_free(&s->cc);
    mime_addr_list_free(&s->bcc);
    mime_addr_list_free(&s->reply_to);
    for (size_t i = 0; i < s->nheaders; i++) {
        free(s->headers[i].name);
        free(s->headers[i].value);
    }
    free(s->headers);
    for (size_t i = 0; i < s->natt; i++)
        mime_attachment_free(&s->att[i]);
    free(s->att);
}

/* fail - answer 422 naming field; fmt takes one %s (detail). */
static int fail(struct send *s, const char *field, const char *fmt, const char *detail)
{
    char msg[400];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(msg, sizeof(msg), fmt, detail ? detail : "");
#pragma GCC diagnostic pop
    gw_error(s->resp, 422, "validation_error", field, "%s %s", field ? field : "body", msg);
    return -1;
}

/* utf8_chars - number of characters (code points) in a UTF-8 string. */
static size_t utf8_chars(const char *p)
{
    size_t n = 0;
    for (; *p; p++)
        if (((unsigned char)*p & 0xc0) != 0x80)
            n++;
    return n;
}


/* string_field - an optional string member: NULL when absent; -1 (and the
 * error set) when present but not a clean string. max is in characters. */
static int string_field(struct send *s, json_t *o, const char *name, int header, size_t max,
                        const char **out)
{
    *out = NULL;
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return fail(s, name, "%smust be a string", "");
    const char *str = json_string_value(v);
    if (strlen(str) != json_string_length(v))
        return fail(s, name, "%smust not contain NUL characters", "");
    if (header && util_has_crlf(str))
        return fail(s, name, "%smust not contain CR or LF characters", "");
    if (max && utf8_chars(str) > max)
        return fail(s, name, "is longer than %s characters", header ? "1000" : "allowed");
    *out = str;
    return 0;
}

/* addr_item - one address value: "Name <a@x>" / "a@x" (an address-list
 * is allowed in a string) or {email, name}; appended to list. */
static int addr_item(struct send *s, json_t *v, const char *field, struct mime_addr_list *list)
{
    char err[256];
    if (json_is_string(v)) {
        const char *str = json_string_value(v);
        if (strlen(str) != json_string_length(v) || util_has_crlf(str))
            return fail(s, field, "%smust not contain CR, LF or NUL characters", "");
        size_t before = list->n;
        if (mime_addr_parse_list(str, list, err, sizeof(err)) < 0)
            return fail(s, field, "is not a valid address: %s", err);
        if (list->n == before)
            return fail(s, field, "%sholds no address", "");
        return 0;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) {
            if (strcmp(k, "email") && strcmp(k, "name")) {
                char f[300];
                snprintf(f, sizeof(f), "%s.%s", field, k);
                return fail(s, f, "%sis not a known field (email, name)", "");
            }
            if (!json_is_string(m) && !(json_is_null(m) && !strcmp(k, "name")))
                return fail(s, field, "%smust have a string email and name", "");
            if (json_is_string(m) && strlen(json_string_value(m)) != json_string_length(m))
                return fail(s, field, "%smust not contain NUL characters", "");
        }
        const char *email = json_string_value(json_object_get(v, "email"));
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!email)
            return fail(s, field, "%sneeds an email", "");
        if (name && utf8_chars(name) > GW_HEADER_VALUE_MAX)
            return fail(s, field, "%sname is longer than 1000 characters", "");
        struct mime_addr a = {0};
        if (mime_addr_set(&a, email, name && *name ? name : NULL, err, sizeof(err)) < 0)
            return fail(s, field, "is not a valid address: %s", err);
        int rc = mime_addr_list_push(list, &a);
        mime_addr_free(&a);
        return rc < 0 ? fail(s, field, "%sout of memory", "") : 0;
    }
    return fail(s, field, "%smust be an address string, an {email, name} object, or a list of them", "");
}

/* addr_field - an address field: one item or an array of items. */
static int addr_field(struct send *s, json_t *o, const char *name, struct mime_addr_list *list)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return addr_item(s, v, name, list);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        char field[64];
        snprintf(field, sizeof(field), "%s[%zu]", name, i);
        if (addr_item(s, item, field, list) < 0)
            return -1;
    }
    return 0;
}

static int header_owned(const char *name)
{
    for (const char *const *h = owned_headers; *h; h++) {
        size_t n = strlen(*h);
        if ((*h)[n - 1] == '*') {
            if (!strncasecmp(name, *h, n - 1))
                return 1;
        } else if (!strcasecmp(name, *h)) {
            return 1;
        }
    }
    return 0;
}

static int headers_field(struct send *s, json_t *o)
{
    json_t *v = json_object_get(o, "headers");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return fail(s, "headers", "%smust be an object of name: value", "");
    if (json_object_size(v) > GW_HEADERS_MAX)
        return fail(s, "headers", "%shas more than 100 headers", "");
    s->headers = calloc(json_object_size(v) + 1, sizeof(*s->headers));
    const char *k;
    json_t *val;
    json_object_foreach(v, k, val) {
        char field[300];
        snprintf(field, sizeof(field), "headers.%.200s", k);
        size_t kl = strlen(k);
        if (kl == 0 || kl > 76)
            return fail(s, field, "%sis not a valid header name: 1 to 76 characters", "");
        for (const char *p = k; *p; p++)
            if ((unsigned char)*p < 33 || (unsigned char)*p > 126 || *p == ':')
                return fail(s, field, "%sis not a valid header name (RFC 5322 §3.6.8)", "");
        if (header_owned(k))
            return fail(s, field, "%sis set by mailgate itself and cannot be given", "");
        if (!json_is_string(val))
            return fail(s, field, "%smust be a string", "");
        const char *str = json_string_value(val);
        if (strlen(str) != json_string_length(val) || util_has_crlf(str))
            return fail(s, field, "%smust not contain CR, LF or NUL characters", "");
        if (utf8_chars(str) > GW_HEADER_VALUE_MAX)
            return fail(s, field, "%sis longer than 1000 characters", "");
        s->headers[s->nheaders].name = strdup(k);
        s->headers[s->nheaders].value = strdup(str);
        s->nheaders++;
    }
    return 0;
}

/* attachments_field - "attachments": [{filename, content_type?, content,
 * content_id?}]; content is base64, decoded here. Each problem is a 422
 * naming the member at fault ("attachments[1].content"). */
static int attachments_field(struct send *s, json_t *o)
{
    static const char *const members[] = {"filename", "content_type", "content", "content_id", NULL};
    json_t *v = json_object_get(o, "attachments");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return fail(s, "attachments", "%smust be an array of {filename, content_type, content, content_id}", "");
    if (json_array_size(v) > MIME_ATTACH_MAX)
        return fail(s, "attachments", "%shas more than 100 items", "");
    s->att = calloc(json_array_size(v) + 1, sizeof(*s->att));
    if (!s->att)
        return fail(s, "attachments", "%scould not be stored (out of memory)", "");
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        char field[64];
        snprintf(field, sizeof(field), "attachments[%zu]", i);
        if (!json_is_object(item))
            return fail(s, field, "%smust be an object {filename, content_type, content, content_id}", "");
        const char *k;
        json_t *m;
        json_object_foreach(item, k, m) {
            char f[300];
            snprintf(f, sizeof(f), "attachments[%zu].%.200s", i, k);
            int known = 0;
            for (const char *const *p = members; *p; p++)
                if (!strcmp(k, *p))
                    known = 1;
            if (!known)
                return fail(s, f, "%sis not a known field (filename, content_type, content, content_id)", "");
            if (json_is_null(m) && strcmp(k, "filename") && strcmp(k, "content"))
                continue;
            if (!json_is_string(m))
                return fail(s, f, "%smust be a string", "");
            if (strlen(json_string_value(m)) != json_string_length(m))
                return fail(s, f, "%smust not contain NUL characters", "");
        }
        json_t *fn = json_object_get(item, "filename"), *c = json_object_get(item, "content");
        if (!fn) {
            snprintf(field, sizeof(field), "attachments[%zu].filename", i);
            return fail(s, field, "%sis required", "");
        }
        if (!c) {
            snprintf(field, sizeof(field), "attachments[%zu].content", i);
            return fail(s, field, "%sis required (base64)", "");
        }
        const char *which = "content";
        char err[256];
        if (mime_attachment_set(&s->att[s->natt], json_string_value(fn),
                                json_string_value(json_object_get(item, "content_type")), json_string_value(c),
                                json_string_length(c), json_string_value(json_object_get(item, "content_id")),
                                &which, err, sizeof(err)) < 0) {
            snprintf(field, sizeof(field), "attachments[%zu].%s", i, which);
            return fail(s, field, "%s", err);
        }
        s->natt++;
    }
    return 0;
}

static int tags_metadata(struct send *s, json_t *o)
{
    json_t *t = json_object_get(o, "tags");
    if (t && !json_is_null(t)) {
        if (!json_is_array(t))
            return fail(s, "tags", "%smust be an array of strings", "");
        if (json_array_size(t) > GW_TAGS_MAX)
            return fail(s, "tags", "%shas more than 100 tags", "");
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            char f[32];
            snprintf(f, sizeof(f), "tags[%zu]", i);
            if (!json_is_string(e) || json_string_length(e) == 0 ||
                utf8_chars(json_string_value(e)) > GW_TAG_MAX ||
                strlen(json_string_value(e)) != json_string_length(e))
                return fail(s, f, "%smust be a non-empty string of at most 256 characters", "");
        }
        s->tags = t;
    }
    json_t *m = json_object_get(o, "metadata");
    if (m && !json_is_null(m)) {
        if (!json_is_object(m))
            return fail(s, "metadata", "%smust be an object", "");
        if (json_object_size(m) > GW_METADATA_MAX)
            return fail(s, "metadata", "%shas more than 100 keys", "");
        const char *k;
        json_t *e;
        json_object_foreach(m, k, e) {
            if (json_is_object(e) || json_is_array(e)) {
                char f[300];
                snprintf(f, sizeof(f), "metadata.%.200s", k);
                return fail(s, f, "%smust be a string, number, boolean or null", "");
            }
        }
        s->metadata = m;
    }
    return 0;
}

/* domain_listed - 1 when the comma-separated list (a tenant's
 * allowed_from: "a.com, @b.com") names domain, case-insensitively. */
static int domain_listed(const char *list, const char *domain)
{
    size_t dl = strlen(domain);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',' || *p == '@')
            p++;
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t > 0 && p[t - 1] == ' ')
            t--;
        if (t == dl && t && !strncasecmp(p, domain, dl))
            return 1;
        p += n;
    }
    return 0;
}

/* validate - check the whole request into s. 0, or -1 with resp set. */
static int validate(struct send *s, json_t *o)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int known = 0;
        for (const char *const *f = known_fields; *f; f++)
            if (!strcmp(k, *f))
                known = 1;
        if (!known) {
            char field[200];
            snprintf(field, sizeof(field), "%.190s", k);
            return fail(s, field, "%sis not a known field", "");
        }
    }
    static const char *const flags[] = {"track_opens", "track_clicks", "unsubscribe", "strict", NULL};
    for (const char *const *f = flags; *f; f++) {
        json_t *b = json_object_get(o, *f);
        if (b && !json_is_boolean(b) && !json_is_null(b))
            return fail(s, *f, "%smust be true or false", "");
    }
    s->track_opens = json_is_true(json_object_get(o, "track_opens"));
    s->track_clicks = json_is_true(json_object_get(o, "track_clicks"));
    s->unsubscribe = json_is_true(json_object_get(o, "unsubscribe"));

    json_t *from = json_object_get(o, "from");
    if (!from || json_is_null(from))
        return fail(s, "from", "%sis required", "");
    struct mime_addr_list fl = {0};
    if (json_is_array(from)) {
        mime_addr_list_free(&fl);
        return fail(s, "from", "%smust be one address", "");
    }
    if (addr_item(s, from, "from", &fl) < 0) {
        mime_addr_list_free(&fl);
        return -1;
    }
    if (fl.n != 1) {
        mime_addr_list_free(&fl);
        return fail(s, "from", "%smust be exactly one address", "");
    }
    s->from = fl.v[0];
    fl.n = 0;
    mime_addr_list_free(&fl);

    if (addr_field(s, o, "to", &s->to) < 0 || addr_field(s, o, "cc", &s->cc) < 0 ||
        addr_field(s, o, "bcc", &s->bcc) < 0 || addr_field(s, o, "reply_to", &s->reply_to) < 0)
        return -1;
    size_t total = s->to.n + s->cc.n + s->bcc.n;
    if (total == 0)
        return fail(s, "to", "%sneeds at least one recipient (to, cc or bcc)", "");
    long maxr = GW_RCPTS_MAX;
    if (!s->tenant && queue_tenant_get(s->req->q, s->req->key.tenant, &s->tenant) < 0) {
        gw_error(s->resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; nothing was queued");
        util_strlcpy(s->resp->retry_after, "5", sizeof(s->resp->retry_after));
        return -1;
    }
    const char *mr = json_string_value(json_object_get(s->tenant, "max_recipients"));
    if (mr && atol(mr) > 0)
        maxr = atol(mr);
    /* --allowed-from: a tenant that names its domains sends from no other */
    const char *allowed = json_string_value(json_object_get(s->tenant, "allowed_from"));
    const char *fat = strrchr(s->from.email, '@');
    if (allowed && *allowed && (!fat || !domain_listed(allowed, fat + 1)))
        return fail(s, "from", "uses a domain this tenant may not send from (allowed: %s)", allowed);
    if ((long)total > maxr) {
        char n[32];
        snprintf(n, sizeof(n), "%ld", maxr);
        return fail(s, "to", "has more than %s recipients (to + cc + bcc)", n);
    }

    /* template/data/strict: the rendered parts replace subject, text and
     * html in o, so the checks below see what will be sent. */
    if (gw_tmpl_apply(s->req, s->resp, o) < 0)
        return -1;
    if (string_field(s, o, "subject", 1, GW_HEADER_VALUE_MAX, &s->subject) < 0 ||
        string_field(s, o, "text", 0, 0, &s->text) < 0 || string_field(s, o, "html", 0, 0, &s->html) < 0)
        return -1;
    if (!s->subject)
        return fail(s, "subject", "%sis required", "");
    if (!s->text && !s->html)
        return fail(s, "text", "%sis required when there is no html", "");
    if (headers_field(s, o) < 0 || attachments_field(s, o) < 0 || tags_metadata(s, o) < 0)
        return -1;

    json_t *at = json_object_get(o, "send_at");
    if (at && !json_is_null(at)) {
        if (!json_is_string(at) || util_parse_rfc3339(json_string_value(at), &s->send_at_ms) < 0)
            return fail(s, "send_at", "%smust be an RFC 3339 date-time such as 2026-12-01T09:00:00Z", "");
        if (s->send_at_ms > util_now_ms() + s->req->cfg->send_at_horizon_ms) {
            /* the horizon in the largest unit that states it exactly */
            long long ms = (long long)s->req->cfg->send_at_horizon_ms;
            static const struct { long long ms; const char *unit; } units[] = {
                {86400000LL, "days"}, {3600000LL, "hours"}, {60000LL, "minutes"}, {1000LL, "seconds"}, {1, "ms"}};
            size_t u = 0;
            while (u + 1 < sizeof(units) / sizeof(*units) && ms % units[u].ms)
                u++;
            char h[48];
            snprintf(h, sizeof(h), "%lld %s", ms / units[u].ms, units[u].unit);
            return fail(s, "send_at", "may be at most %s ahead (MAILGATE_SEND_AT_HORIZON)", h);
        }
        if (s->send_at_ms <= util_now_ms())
            s->send_at_ms = 0;
    }
    return 0;
}

/* add_rcpts - envelope recipients in order, each address once
 * (case-insensitively: the same mailbox in To and Bcc is sent once). */

/* dkim_sign - sign body with the key of the From domain, if there is one
 * and the tenant's allowed_from names that domain: a key never signs for
 * a tenant that was not given its domain. Returns 0 (signed, or nothing to
 * sign with), or -1 with resp set (413, 503, 500). */
static int dkim_sign(struct send *s, struct buf *body, int64_t now_ms)
{
    const char *at = strrchr(s->from.email, '@');
    const struct mime_dkim_key *key = at ? mime_dkim_key_for(s->req->cfg->dkim, at + 1) : NULL;
    if (!key)
        return 0;
    const char *allowed = json_string_value(json_object_get(s->tenant, "allowed_from"));
    int ok = allowed && domain_listed(allowed, at + 1);
    if (!ok)
        return 0;
    char err[256] = "";
    if (mime_dkim_sign(key, body, now_ms / 1000, err, sizeof(err)) < 0) {
        if (strstr(err, "too large")) {
            gw_error(s->resp, 413, "message_too_large", NULL,
                     "the signed message exceeds %zu bytes (MAILGATE_MAX_MESSAGE_SIZE)", s->req->cfg->max_message);
        } else {
            log_kv(LOG_ERROR, "dkim_failed", "tenant", s->req->key.tenant, "domain", at + 1, "error", err, NULL);
            gw_error(s->resp, 500, "internal_error", NULL, "DKIM signing failed; nothing was queued");
        }
        return -1;
    }
    return 0;
}

static void add_rcpts(struct queue_rcpt *v, size_t *n, const struct mime_addr_list *l, const char *status)
{
    for (size_t i = 0; i < l->n; i++) {
        int dup = 0;
        for (size_t j = 0; j < *n; j++)
            if (!strcasecmp(v[j].email, l->v[i].email))
                dup = 1;
        if (!dup) {
            v[*n].email = l->v[i].email;
            v[*n].status = status;
            (*n)++;
        }
    }
}

/* recheck_suppressed - after a failed build of the personal copies: mark
 * the recipients on the tenant's suppression list "suppressed" (recorded,
 * never sent). Returns how many were found (0: none), or -1 when Redis
 * failed. */
static int recheck_suppressed(struct gw_req *req, struct queue_rcpt *v, size_t n)
{
    const char **emails = calloc(n ? n : 1, sizeof(*emails));
    int *hit = calloc(n ? n : 1, sizeof(*hit));
    if (!emails || !hit) {
        free(emails);
        free(hit);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        emails[i] = v[i].email;
    int rc = queue_supp_check(req->q, req->key.tenant, emails, n, hit);
    int found = 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (hit[i]) {
            v[i].status = "suppressed";
            found++;
        }
    free(emails);
    free(hit);
    return rc < 0 ? -1 : found;
}

/* enqueue - store the message with the suppression check in the same
 * round trip (queue_message_enqueue). Recipients found suppressed
 * become "suppressed" (no job, and no personal copy: copies[i] is freed)
 * and the message is stored again without them, so a second round trip is
 * paid only when somebody is suppressed. 0, QUEUE_KEY_REVOKED (nothing
 * stored), or -1 as queue_message_enqueue. */
static int enqueue(struct queue *q, struct queue_new_message *qm, struct queue_rcpt *rcpts, struct buf *copies)
{
    int *hit = calloc(qm->nrcpts ? qm->nrcpts : 1, sizeof(*hit));
    if (!hit)
        return -1;
    int rc;
    /* each pass marks at least one more recipient, so this ends */
    while ((rc = queue_message_enqueue(q, qm, hit)) == 1) {
        for (size_t i = 0; i < qm->nrcpts; i++) {
            if (!hit[i])
                continue;
            rcpts[i].status = "suppressed";
            if (copies)
                buf_free(&copies[i]);
            rcpts[i].body = NULL;
            rcpts[i].bodylen = 0;
        }
    }
    free(hit);
    return rc;
}

/* ---- personal copies (tracking, unsubscribe) --------------------------- */

/* What the link callback needs to sign a click token for one recipient. */
struct link_ctx {
    const unsigned char *key;
    size_t keylen;
    const char *public_url;
    struct gw_token *t;       /* tenant, message id, recipient set; url per link */
};

/* track_url - append public_url "/t/{kind}/" token for *t to out. 0 / -1. */
static int track_url(const char *public_url, const unsigned char *key, size_t keylen, const struct gw_token *t,
                     struct buf *out)
{
    if (buf_printf(out, "%s/t/%c/", public_url, t->kind) < 0)
        return -1;
    return gw_token_sign(key, keylen, t, out);
}

/* link_cb - mime_track_link_fn: the click URL for one link, or 1 (leave it)
 * when its URL cannot be signed (control characters). */
static int link_cb(void *ctx, const char *url, size_t len, struct buf *out)
{
    struct link_ctx *c = ctx;
    if (len > MIME_TRACK_URL_MAX || memchr(url, '\0', len))
        return 1;
    memcpy(c->t->url, url, len);
    c->t->url[len] = '\0';
    size_t before = out->len;
    int rc = track_url(c->public_url, c->key, c->keylen, c->t, out);
    c->t->url[0] = '\0';
    if (rc < 0) {
        if (out->data) {
            out->len = before;
            out->data[before] = '\0';
        }
        return 1;
    }
    return 0;
}

/* render_error - answer a failed mime_build of a copy as the shared path
 * does: 413 when too large, else 422. */
static void render_error(struct send *s, const char *err)
{
    if (strstr(err, "too large"))
        gw_error(s->resp, 413, "message_too_large", NULL,
                 "the rendered message exceeds %zu bytes (MAILGATE_MAX_MESSAGE_SIZE)", s->req->cfg->max_message);
    else
        gw_error(s->resp, 422, "validation_error", NULL, "cannot render the message: %s", err);
}

/* build_copy - render the copy of base for token owner t (kind changed
 * here) into body, DKIM-signed. 0, or -1 with resp set. */
static int build_copy(struct send *s, const struct mime_message *base, const unsigned char *key, size_t keylen,
                      struct gw_token *t, struct buf *body, int64_t now)
{
    const char *pub = s->req->cfg->public_url;
    struct buf links, html, unsub;
    buf_init(&links, s->req->cfg->max_message);
    buf_init(&html, s->req->cfg->max_message);
    buf_init(&unsub, 0);
    struct mime_header_field *hdrs = calloc(s->nheaders + 2, sizeof(*hdrs));
    int rc = hdrs ? 0 : -1;
    const char *h = s->html;
    if (rc == 0 && h && s->track_clicks) {
        struct link_ctx lc = {.key = key, .keylen = keylen, .public_url = pub, .t = t};
        t->kind = 'c';
        rc = mime_track_links(h, strlen(h), link_cb, &lc, &links);
        h = links.data ? links.data : "";
    }
    if (rc == 0 && h && s->track_opens) {
        struct buf px;
        buf_init(&px, 0);
        t->kind = 'o';
        rc = track_url(pub, key, keylen, t, &px);
        if (rc == 0)
            rc = mime_track_pixel(h, strlen(h), px.data, &html);
        h = html.data ? html.data : "";
        buf_free(&px);
    }
    size_t nh = s->nheaders;
    if (rc == 0 && hdrs) {
        if (s->nheaders)
            memcpy(hdrs, s->headers, s->nheaders * sizeof(*hdrs));
        if (s->unsubscribe) {
            /* RFC 2369 and RFC 8058 §3.1: one https URI, and the POST key */
            t->kind = 'u';
            rc = buf_putc(&unsub, '<') < 0 || track_url(pub, key, keylen, t, &unsub) < 0 || buf_putc(&unsub, '>') < 0
                     ? -1
                     : 0;
            hdrs[nh].name = (char *)"List-Unsubscribe";
            hdrs[nh++].value = unsub.data;
            hdrs[nh].name = (char *)"List-Unsubscribe-Post";
            hdrs[nh++].value = (char *)"List-Unsubscribe=One-Click";
        }
    }
    if (rc < 0) {
        gw_error(s->resp, 413, "message_too_large", NULL,
                 "the message with its tracking links exceeds %zu bytes (MAILGATE_MAX_MESSAGE_SIZE)",
                 s->req->cfg->max_message);
    } else {
        struct mime_message mm = *base;
        mm.html = h;
        mm.headers = hdrs;
        mm.nheaders = nh;
        char err[256] = "";
        if (mime_build(&mm, body, err, sizeof(err)) < 0) {
            render_error(s, err);
            rc = -1;
        } else {
            rc = dkim_sign(s, body, now);
        }
    }
    free(hdrs);
    buf_free(&links);
    buf_free(&html);
    buf_free(&unsub);
    return rc;
}

/* build_copies - one copy per recipient that is not suppressed into
 * bodies[i] (rcpts[i].body then points into it). The copies together may
 * hold at most GW_COPIES_BYTES_MAX. 0, or -1 with resp set (413, 422, 503). */
static int build_copies(struct send *s, const struct mime_message *base, const char *id, struct queue_rcpt *rcpts,
                        size_t nr, struct buf *bodies, int64_t now)
{
    unsigned char key[GW_TRACK_KEY_MAX];
    size_t keylen = 0;
    if (gw_track_key(s->req->cfg, s->req->q, key, &keylen) < 0) {
        gw_error(s->resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; nothing was queued");
        util_strlcpy(s->resp->retry_after, "5", sizeof(s->resp->retry_after));
        return -1;
    }
    struct gw_token *t = calloc(1, sizeof(*t));
    int rc = t ? 0 : -1;
    if (!t)
        gw_error(s->resp, 500, "internal", NULL, "out of memory");
    size_t total = 0;
    for (size_t i = 0; rc == 0 && i < nr; i++) {
        if (!strcmp(rcpts[i].status, "suppressed"))
            continue;
        memset(t, 0, sizeof(*t));
        util_strlcpy(t->tenant, s->req->key.tenant, sizeof(t->tenant));
        util_strlcpy(t->msg_id, id, sizeof(t->msg_id));
        if (util_strlcpy(t->rcpt, rcpts[i].email, sizeof(t->rcpt)) >= sizeof(t->rcpt)) {
            gw_error(s->resp, 422, "validation_error", NULL, "a recipient address is too long to track");
            rc = -1;
            break;
        }
        buf_init(&bodies[i], s->req->cfg->max_message);
        rc = build_copy(s, base, key, keylen, t, &bodies[i], now);
        total += bodies[i].len;
        if (rc == 0 && total > GW_COPIES_BYTES_MAX) {
            gw_error(s->resp, 413, "message_too_large", NULL,
                     "the recipients' personal copies (tracking, unsubscribe) together exceed %zu bytes; "
                     "send fewer recipients per message",
                     GW_COPIES_BYTES_MAX);
            rc = -1;
        }
        rcpts[i].body = bodies[i].data;
        rcpts[i].bodylen = bodies[i].len;
    }
    OPENSSL_cleanse(key, sizeof(key));
    free(t);
    return rc;
}

/* take_limits - count this message against the tenant's --rate (per
 * second) and --daily limits; 0, or -1 with 429 (or 503) set. The
 * X-RateLimit-* headers go on the answer either way. */
static int take_limits(struct send *s)
{
    const char *rate_s = json_string_value(json_object_get(s->tenant, "rate"));
    const char *daily_s = json_string_value(json_object_get(s->tenant, "daily"));
    long rate = rate_s ? atol(rate_s) : 0, daily = daily_s ? atol(daily_s) : 0;
    if (rate <= 0 && daily <= 0)
        return 0;
    struct queue_limit_result lr;
    if (queue_limits_take(s->req->q, s->req->key.tenant, rate, daily, 1, &lr) < 0) {
        gw_error(s->resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; nothing was queued");
        util_strlcpy(s->resp->retry_after, "5", sizeof(s->resp->retry_after));
        return -1;
    }
    int64_t wait_ms = lr.reset_ms - util_now_ms();
    s->resp->rl_set = 1;
    s->resp->rl_limit = lr.daily || rate <= 0 ? daily : rate;
    s->resp->rl_remaining = lr.remaining;
    s->resp->rl_reset_s = wait_ms > 0 ? (wait_ms + 999) / 1000 : 0;
    if (lr.allowed)
        return 0;
    gw_error(s->resp, 429, "rate_limited", NULL, "%s limit of %ld messages reached; retry later",
             lr.daily ? "the daily" : "the per-second", lr.daily ? daily : rate);
    snprintf(s->resp->retry_after, sizeof(s->resp->retry_after), "%lld", (long long)(s->resp->rl_reset_s ? s->resp->rl_reset_s : 1));
    return -1;
}

/* parse_body - the request body as JSON (duplicate keys refused), or NULL
 * with a 400 set. */
static json_t *parse_body(struct gw_req *req, struct gw_resp *resp)
{
    /* Depth first, on the raw bytes: jansson itself stops at 2048 levels
     * with a parse error, and we want to name the member at fault. */
    char field[128];
    if (gw_json_too_deep(req->body, req->bodylen, GW_JSON_DEPTH_MAX, field, sizeof(field))) {
        gw_error(resp, 422, "validation_error", field[0] ? field : NULL, "%s is nested deeper than %d levels",
                 field[0] ? field : "the body", GW_JSON_DEPTH_MAX);
        return NULL;
    }
    json_error_t jerr;
    /* NUL inside strings is let through the parser so that validation can
     * name the field it is in (422); NUL in a key cannot be represented. */
    json_t *o = json_loadb(req->body, req->bodylen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!o && strstr(jerr.text, "NUL byte in object key")) {
        /* name the top-level member the bad key sits in */
        const char *nul = memmem(req->body, req->bodylen, "\\u0000", 6);
        json_scan(req->body, nul ? (size_t)(nul - req->body) : 0, 0, field, sizeof(field));
        gw_error(resp, 422, "validation_error", field[0] ? field : NULL, "a member name in %s contains a NUL character",
                 field[0] ? field : "the body");
    }
    else if (!o)
        gw_error(resp, 400, "invalid_json", NULL, "body is not valid JSON: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
    return o;
}

void gw_send_message(struct gw_req *req, struct gw_resp *resp)
{
    json_t *o = parse_body(req, resp);
    if (o)
        gw_send_object(req, o, resp);
    json_decref(o);
}

void gw_send_batch(struct gw_req *req, struct gw_resp *resp)
{
    json_t *o = parse_body(req, resp);
    if (!o)
        return;
    json_t *msgs = json_object_get(o, "messages");
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (strcmp(k, "messages") != 0) {
            gw_error(resp, 422, "validation_error", k, "%.100s is not a known field (messages)", k);
            json_decref(o);
            return;
        }
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        gw_error(resp, 422, "validation_error", "messages", "messages must be a non-empty array");
    } else if (json_array_size(msgs) > GW_BATCH_MAX) {
        gw_error(resp, 413, "batch_too_large", "messages", "a batch holds at most %d messages", GW_BATCH_MAX);
    } else {
        /* Each item stands alone: a bad one fails without touching the
         * others, in order, and the answer lists every outcome. */
        json_t *results = json_array();
        int queued = 0;
        size_t i;
        json_t *item;
        json_array_foreach(msgs, i, item) {
            struct gw_resp one = {0};
            gw_send_object(req, item, &one);
            if (one.status == 202) {
                queued++;
                json_array_append_new(results, json_pack("{s:O, s:O, s:O}", "id", json_object_get(one.body, "id"),
                                                         "status", json_object_get(one.body, "status"),
                                                         "recipients", json_object_get(one.body, "recipients")));
            } else {
                json_t *err = json_object_get(one.body, "error");
                if (err && json_is_string(json_object_get(err, "field"))) {
                    char f[300];
                    snprintf(f, sizeof(f), "messages[%zu].%s", i, json_string_value(json_object_get(err, "field")));
                    json_object_set_new(err, "field", json_string(f));
                }
                json_array_append_new(results, json_pack("{s:O}", "error", err));
                if (one.status == 503) {
                    /* Redis is away: the rest would fail the same way. */
                    util_strlcpy(resp->retry_after, one.retry_after, sizeof(resp->retry_after));
                }
            }
            json_decref(one.body);
        }
        resp->status = queued ? 202 : (resp->retry_after[0] ? 503 : 422);
        resp->body = json_pack("{s:o}", "results", results);
    }
    json_decref(o);
}

void gw_send_object(struct gw_req *req, json_t *o, struct gw_resp *resp)
{
    struct send s = {.req = req, .resp = resp};
    if (!json_is_object(o)) {
        gw_error(resp, 422, "validation_error", NULL, "a message must be a JSON object");
        goto out;
    }
    if (validate(&s, o) < 0)
        goto out;

    char id[33], msgid[400];
    util_new_id(id);
    snprintf(msgid, sizeof(msgid), "%s@%s", id, req->cfg->helo);
    int64_t now = util_now_ms();
    struct mime_message mm = {
        .from = s.from, .to = s.to, .cc = s.cc, .reply_to = s.reply_to,
        .subject = s.subject, .text = s.text, .html = s.html,
        .headers = s.headers, .nheaders = s.nheaders,
        .message_id = msgid, .date_ms = now,
        .attachments = s.att, .nattachments = s.natt,
    };
    struct buf body;
    buf_init(&body, req->cfg->max_message);
    char err[256] = "";
    if (mime_build(&mm, &body, err, sizeof(err)) < 0) {
        if (strstr(err, "too large"))
            gw_error(resp, 413, "message_too_large", NULL, "the rendered message exceeds %zu bytes (MAILGATE_MAX_MESSAGE_SIZE)",
                     req->cfg->max_message);
        else
            gw_error(resp, 422, "validation_error", NULL, "cannot render the message: %s", err);
        buf_free(&body);
        goto out;
    }
    /* DKIM last: the signature covers exactly the bytes that are queued.
     * Personal copies are signed one by one below; the body built above
     * then only proved the message renders (and fits). */
    int personal = s.track_opens || s.track_clicks || s.unsubscribe;
    if (!personal && dkim_sign(&s, &body, now) < 0) {
        buf_free(&body);
        goto out;
    }

    size_t total = s.to.n + s.cc.n + s.bcc.n, nr = 0;
    struct queue_rcpt *rcpts = calloc(total, sizeof(*rcpts));
    const char *st = s.send_at_ms ? "scheduled" : "queued";
    add_rcpts(rcpts, &nr, &s.to, st);
    add_rcpts(rcpts, &nr, &s.cc, st);
    add_rcpts(rcpts, &nr, &s.bcc, st);
    /* Suppressions are not looked up here: the enqueue below checks them
     * in its own round trip and, on a hit, writes nothing and says who;
     * until then every recipient is taken to be sendable. */
    struct buf *copies = NULL;
    if (personal) {
        buf_free(&body);
        copies = calloc(nr ? nr : 1, sizeof(*copies));
        int brc = copies ? build_copies(&s, &mm, id, rcpts, nr, copies, now) : -1;
        /* A copy that fails (too long an address to track, all copies too
         * large) may belong to a suppressed recipient, who gets none: look
         * the list up now and build again, as if it had been known. */
        if (brc < 0 && copies && recheck_suppressed(req, rcpts, nr) > 0) {
            for (size_t i = 0; i < nr; i++) {
                buf_free(&copies[i]);
                rcpts[i].body = NULL;
                rcpts[i].bodylen = 0;
            }
            memset(copies, 0, nr * sizeof(*copies));
            json_decref(resp->body);
            resp->body = NULL;
            resp->status = 0;
            resp->retry_after[0] = '\0';
            brc = build_copies(&s, &mm, id, rcpts, nr, copies, now);
        }
        if (brc < 0) {
            if (!copies)
                gw_error(resp, 500, "internal", NULL, "out of memory");
            for (size_t i = 0; copies && i < nr; i++)
                buf_free(&copies[i]);
            free(copies);
            free(rcpts);
            goto out;
        }
    }

    if (take_limits(&s) < 0) {
        free(rcpts);
        buf_free(&body);
        goto out;
    }

    /* The record keeps the From as a person reads it, not encoded. */
    char from_plain[2200];
    if (s.from.name)
        snprintf(from_plain, sizeof(from_plain), "%s <%s>", s.from.name, s.from.email);
    else
        util_strlcpy(from_plain, s.from.email, sizeof(from_plain));

    struct queue_new_message qm = {
        .id = id, .tenant = req->key.tenant, .created_ms = now, .from = from_plain,
        .subject = s.subject, .tags = s.tags, .metadata = s.metadata,
        .mail_from = s.from.email, .rcpts = rcpts, .nrcpts = nr,
        .body = body.data, .bodylen = body.len, .due_ms = s.send_at_ms, .personal = personal,
        .key_id = req->key.id,
    };
    /* An EXEC whose reply was lost (Redis went away) may have committed:
     * look before saying "nothing was queued", or a retrying client would
     * send the message twice. */
    int qrc = enqueue(req->q, &qm, rcpts, copies);
    if (qrc == QUEUE_KEY_REVOKED) {
        /* revoked after this process cached it: nothing was queued */
        gw_error(resp, 401, "unauthorized", NULL, "unknown or revoked API key");
    } else if (qrc < 0 && queue_message_exists(req->q, id) != 1) {
        gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; nothing was queued");
        util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
    } else {
        json_t *list = json_array();
        for (size_t i = 0; i < nr; i++)
            json_array_append_new(list, json_pack("{s:s, s:s}", "email", rcpts[i].email, "status", rcpts[i].status));
        resp->status = 202;
        resp->body = json_pack("{s:s, s:s, s:o}", "id", id, "status", st, "recipients", list);
        unsigned long nsupp = 0;
        for (size_t i = 0; i < nr; i++)
            nsupp += !strcmp(rcpts[i].status, "suppressed");
        gw_count(GW_C_ACCEPTED, 1);
        gw_count(GW_C_SUPPRESSED, nsupp);
        char size[24];
        size_t bytes = body.len;
        for (size_t i = 0; copies && i < nr; i++)
            bytes += copies[i].len;
        snprintf(size, sizeof(size), "%zu", bytes);
        log_kv(LOG_INFO, "message_queued", "message_id", id, "tenant", req->key.tenant, "size", size,
               "copies", personal ? "per_recipient" : NULL, NULL);
    }
    for (size_t i = 0; copies && i < nr; i++)
        buf_free(&copies[i]);
    free(copies);
    free(rcpts);
    buf_free(&body);
out:
    send_free(&s);
}

/* json_scan - walk raw JSON text up to n bytes; returns 1 when nesting
 * passes max (0: no limit). key gets the top-level member name last seen. */
static int json_scan(const char *p, size_t n, int max, char *field, size_t fieldlen)
{
    int depth = 0, in_str = 0, esc = 0, key_next = 0;
    size_t kstart = 0;
    field[0] = '\0';
    char key[128] = "";
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"') {
                in_str = 0;
                /* a string directly inside the top-level object, followed
                 * by ':', is a member name */
                if (key_next && depth == 1) {
                    size_t kl = i - kstart;
                    if (kl >= sizeof(key))
                        kl = sizeof(key) - 1;
                    memcpy(key, p + kstart, kl);
                    key[kl] = '\0';
                    key_next = 0;
                }
            }
            continue;
        }
        switch (c) {
        case '"':
            in_str = 1;
            kstart = i + 1;
            break;
        case '{':
        case '[':
            if (++depth > max && max > 0) {
                util_strlcpy(field, key, fieldlen);
                return 1;
            }
            key_next = c == '{';
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ',':
            key_next = depth == 1;
            break;
        default:
            break;
        }
    }
    util_strlcpy(field, key, fieldlen);
    return 0;
}

int gw_json_too_deep(const char *p, size_t n, int max, char *field, size_t fieldlen)
{
    int deep = json_scan(p, n, max, field, fieldlen);
    if (!deep)
        field[0] = '\0';
    return deep;
}
