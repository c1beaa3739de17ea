/*
 * queue_supp.c - the per-tenant suppression list.
 *
 * Addresses are keyed lower-cased: mailbox local parts are case-sensitive
 * in theory (RFC 5321 §2.4) but no real mailbox provider treats them so,
 * and a suppression that misses because of case would send mail a person
 * asked not to get.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define SUPP_EMAIL_MAX Q_SUPP_EMAIL_MAX

void q_supp_lower(const char *in, char *out, size_t len)
{
    size_t i = 0;
    for (; in[i] && i + 1 < len; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[i] = '\0';
}

int queue_supp_add(struct queue *q, const char *tenant, const char *email, const char *reason, json_t **out)
{
    char key[SUPP_EMAIL_MAX + 1], ts[40];
    q_supp_lower(email, key, sizeof(key));
    json_t *rec = json_pack("{s:s, s:s, s:s}", "email", email, "reason", reason ? reason : "manual",
                            "created_at", util_rfc3339(util_now_ms(), ts, sizeof(ts)));
    char *s = json_dumps(rec, JSON_COMPACT);
    redisReply *r = q_cmd(q, "HSET mg:supp:%s %s %s", tenant, key, s);
    free(s);
    if (!r) {
        json_decref(rec);
        return -1;
    }
    freeReplyObject(r);
    if (out)
        *out = rec;
    else
        json_decref(rec);
    return 0;
}

int queue_supp_remove(struct queue *q, const char *tenant, const char *email)
{
    char key[SUPP_EMAIL_MAX + 1];
    q_supp_lower(email, key, sizeof(key));
    redisReply *r = q_cmd(q, "HDEL mg:supp:%s %s", tenant, key);
    if (!r)
        return -1;
    int rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? 0 : 1;
    freeReplyObject(r);
    return rc;
}

int queue_supp_check(struct queue *q, const char *tenant, const char *const *emails, size_t n, int *hit)
{
    if (n == 0)
        return 0;
    const char **argv = calloc(n + 2, sizeof(*argv));
    char (*keys)[SUPP_EMAIL_MAX + 1] = calloc(n, sizeof(*keys));
    char name[128];
    snprintf(name, sizeof(name), "mg:supp:%s", tenant);
    argv[0] = "HMGET";
    argv[1] = name;
    for (size_t i = 0; i < n; i++) {
        q_supp_lower(emails[i], keys[i], sizeof(keys[i]));
        argv[i + 2] = keys[i];
    }
    redisReply *r = q_cmdv(q, (int)n + 2, argv, NULL);
    free(argv);
    free(keys);
    if (!r)
        return -1;
    for (size_t i = 0; i < n; i++)
        hit[i] = r->type == REDIS_REPLY_ARRAY && i < r->elements && r->element[i]->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    return 0;
}

int queue_supp_list(struct queue *q, const char *tenant, const char *cursor, int limit, json_t **out)
{
    const char *c = cursor ? cursor : "0";
    for (const char *p = c; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 1;
    json_t *data = json_array();
    char next[32];
    util_strlcpy(next, c, sizeof(next));
    /* HSCAN's COUNT is a hint: loop until the page is full or the scan ends. */
    do {
        redisReply *r = q_cmd(q, "HSCAN mg:supp:%s %s COUNT %d", tenant, next, limit);
        if (!r) {
            json_decref(data);
            return -1;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            break;
        }
        util_strlcpy(next, r->element[0]->str, sizeof(next));
        redisReply *kv = r->element[1];
        for (size_t i = 0; i + 1 < kv->elements; i += 2) {
            json_t *rec = json_loads(kv->element[i + 1]->str, 0, NULL);
            if (rec)
                json_array_append_new(data, rec);
        }
        freeReplyObject(r);
    } while (strcmp(next, "0") != 0 && (int)json_array_size(data) < limit);
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor",
                     strcmp(next, "0") ? json_string(next) : json_null());
    return 0;
}
