/*
 * queue_tmpl.c - stored Mustache templates, per tenant.
 *
 * One hash per template (mg:tmpl:{t}:{name}: subject, text, html,
 * created_at, updated_at; a part the template lacks is simply absent) and
 * one sorted set of names per tenant (mg:tmpl:{t}, every score 0, so ZRANGE
 * returns the names in byte order without a SORT). A PUT replaces the hash
 * and indexes the name in one Lua script, so the count limit, the
 * created/updated decision and the kept created_at cannot race; a DELETE
 * removes both keys in one MULTI.
 *
 * Limits: the caller validates names (queue_tmpl_name_ok) and source sizes;
 * the number of templates per tenant is bounded by the max passed to
 * queue_tmpl_put, which also bounds queue_tmpl_list.
 * SECURITY: every key is built from the authenticated tenant plus a name
 * restricted to [A-Za-z0-9._-], which cannot contain ':' - so no tenant
 * can name a key of another. Sources are passed as binary-safe arguments.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const char *const tmpl_parts[] = {"subject", "text", "html"};

/*
 * KEYS[1] template hash, KEYS[2] name index; ARGV[1] name, ARGV[2] now
 * (RFC 3339), ARGV[3] most templates per tenant, then for subject, text and
 * html a flag ("1" present / "0" absent) and the source. Returns
 * {created (1/0, or -1 when the tenant is full), created_at}.
 */
const char q_lua_tmpl_put[] =
    "local cat = redis.call('HGET', KEYS[1], 'created_at')\n"
    "local created = 0\n"
    "if not cat then\n"
    "  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {-1, ''} end\n"
    "  created = 1\n"
    "  cat = ARGV[2]\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 'created_at', cat, 'updated_at', ARGV[2])\n"
    "local parts = {'subject', 'text', 'html'}\n"
    "for i = 1, 3 do\n"
    "  if ARGV[2 + 2 * i] == '1' then redis.call('HSET', KEYS[1], parts[i], ARGV[3 + 2 * i]) end\n"
    "end\n"
    "redis.call('ZADD', KEYS[2], 0, ARGV[1])\n"
    "return {created, cat}\n";

int queue_tmpl_name_ok(const char *name)
{
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= QUEUE_TMPL_NAME_MAX;
}

static void hash_key(char *out, size_t len, const char *tenant, const char *name)
{
    snprintf(out, len, "mg:tmpl:%s:%s", tenant, name);
}

static void index_key(char *out, size_t len, const char *tenant)
{
    snprintf(out, len, "mg:tmpl:%s", tenant);
}

/* str_or_null - a JSON string of a bulk reply, null for nil. */
static json_t *str_or_null(const redisReply *r)
{
    if (r && r->type == REDIS_REPLY_STRING) {
        json_t *s = json_stringn(r->str, r->len);
        if (s)
            return s;
    }
    return json_null();
}

int queue_tmpl_put(struct queue *q, const char *tenant, const char *name, const struct queue_tmpl_src *src,
                   size_t max_templates, int *created, json_t **out)
{
    char hk[160], ik[96], now[40], max[24];
    hash_key(hk, sizeof(hk), tenant, name);
    index_key(ik, sizeof(ik), tenant);
    util_rfc3339(util_now_ms(), now, sizeof(now));
    snprintf(max, sizeof(max), "%zu", max_templates);
    const char *part_src[3] = {src->subject, src->text, src->html};
    size_t part_len[3] = {src->subject_len, src->text_len, src->html_len};
    const char *argv[13];
    size_t lens[13];
    int n = 0;
#define ARG(s, l) (argv[n] = (s), lens[n] = (l), n++)
    ARG("2", 1);
    ARG(hk, strlen(hk));
    ARG(ik, strlen(ik));
    ARG(name, strlen(name));
    ARG(now, strlen(now));
    ARG(max, strlen(max));
    for (int i = 0; i < 3; i++) {
        ARG(part_src[i] ? "1" : "0", 1);
        ARG(part_src[i] ? part_src[i] : "", part_src[i] ? part_len[i] : 0);
    }
#undef ARG
    redisReply *r = q_script_cmdv(q, q_lua_tmpl_put, n, argv, lens);
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER) {
        if (r->element[0]->integer < 0) {
            rc = 2;
        } else {
            *created = r->element[0]->integer == 1;
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(name));
            for (int i = 0; i < 3; i++)
                json_object_set_new(o, tmpl_parts[i],
                                    part_src[i] ? json_stringn(part_src[i], part_len[i]) : json_null());
            json_object_set_new(o, "created_at", str_or_null(r->element[1]));
            json_object_set_new(o, "updated_at", json_string(now));
            *out = o;
            rc = 0;
        }
    }
    freeReplyObject(r);
    return rc;
}

int queue_tmpl_get(struct queue *q, const char *tenant, const char *name, json_t **out)
{
    char hk[160];
    hash_key(hk, sizeof(hk), tenant, name);
    redisReply *r = q_cmd(q, "HMGET %s subject text html created_at updated_at", hk);
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 5) {
        if (r->element[3]->type != REDIS_REPLY_STRING) {
            rc = 1; /* every stored template has created_at */
        } else {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(name));
            for (int i = 0; i < 3; i++)
                json_object_set_new(o, tmpl_parts[i], str_or_null(r->element[i]));
            json_object_set_new(o, "created_at", str_or_null(r->element[3]));
            json_object_set_new(o, "updated_at", str_or_null(r->element[4]));
            *out = o;
            rc = 0;
        }
    }
    freeReplyObject(r);
    return rc;
}

int queue_tmpl_part(struct queue *q, const char *tenant, const char *name, const char *part, char **src,
                    size_t *len)
{
    char hk[160];
    hash_key(hk, sizeof(hk), tenant, name);
    redisReply *r = q_cmd(q, "HGET %s %s", hk, part);
    if (!r)
        return -1;
    int rc = 1;
    if (r->type == REDIS_REPLY_STRING) {
        *src = malloc(r->len + 1);
        if (*src) {
            memcpy(*src, r->str, r->len);
            (*src)[r->len] = '\0';
            *len = r->len;
            rc = 0;
        } else {
            rc = -1;
        }
    }
    freeReplyObject(r);
    return rc;
}

int queue_tmpl_delete(struct queue *q, const char *tenant, const char *name)
{
    char hk[160], ik[96];
    hash_key(hk, sizeof(hk), tenant, name);
    index_key(ik, sizeof(ik), tenant);
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_pipe_cmd(&p, "DEL %s", hk);
    q_pipe_cmd(&p, "ZREM %s %s", ik, name);
    q_pipe_cmd(&p, "EXEC");
    redisReply **r = q_pipe_end(&p);
    int rc = -1;
    if (r && r[3]->type == REDIS_REPLY_ARRAY && r[3]->elements == 2)
        rc = r[3]->element[0]->integer > 0 ? 0 : 1;
    q_replies_free(r, p.n);
    return rc;
}

int queue_tmpl_list(struct queue *q, const char *tenant, json_t **out)
{
    char ik[96];
    index_key(ik, sizeof(ik), tenant);
    redisReply *names = q_cmd(q, "ZRANGE %s 0 -1", ik);
    if (!names)
        return -1;
    json_t *data = json_array();
    if (names->type != REDIS_REPLY_ARRAY || names->elements == 0) {
        freeReplyObject(names);
        *out = json_pack("{s:o}", "data", data);
        return 0;
    }
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (size_t i = 0; i < names->elements; i++) {
        char hk[160];
        hash_key(hk, sizeof(hk), tenant, names->element[i]->str);
        q_pipe_cmd(&p, "HMGET %s created_at updated_at", hk);
    }
    redisReply **r = q_pipe_end(&p);
    if (!r) {
        freeReplyObject(names);
        json_decref(data);
        return -1;
    }
    for (size_t i = 0; i < names->elements; i++) {
        redisReply *t = r[i];
        /* A name whose hash is gone was deleted between the two calls. */
        if (t->type != REDIS_REPLY_ARRAY || t->elements != 2 || t->element[0]->type != REDIS_REPLY_STRING)
            continue;
        json_array_append_new(data, json_pack("{s:s, s:o, s:o}", "name", names->element[i]->str, "created_at",
                                              str_or_null(t->element[0]), "updated_at",
                                              str_or_null(t->element[1])));
    }
    q_replies_free(r, p.n);
    freeReplyObject(names);
    *out = json_pack("{s:o}", "data", data);
    return 0;
}
