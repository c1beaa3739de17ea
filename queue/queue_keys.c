/*
 * queue_keys.c - API keys and tenants in Redis.
 *
 * A key looks like "mg_<id>_<secret>": id is 16 hex digits that locate the
 * record (and serve as the public prefix shown by `key list`), secret is
 * 32 random bytes in hex. Only SHA-256(key) is stored. A check fetches the
 * record by id and compares hashes with CRYPTO_memcmp, so timing reveals
 * nothing about the secret. Records and tenant settings are served from
 * the invalidation-driven cache (queue_cache.c) when it is live; the hash
 * comparison still runs on every check.
 *
 * Also the shared token key mg:secret (queue_secret_get): made once with
 * SET NX, so that every process signs tracking tokens with the same key;
 * copies of it in memory are wiped when no longer needed.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define KEY_ID_HEX 16
#define KEY_SECRET_BYTES 32

int queue_tenant_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > QUEUE_TENANT_MAX)
        return 0;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return 0;
    return 1;
}

int queue_key_create(struct queue *q, const char *tenant, const char *scopes, int test,
                     char *key_out, size_t keylen)
{
    unsigned char idb[KEY_ID_HEX / 2], secret[KEY_SECRET_BYTES];
    char id[KEY_ID_HEX + 1], sh[2 * KEY_SECRET_BYTES + 1], hash[65], now[24];
    if (util_random_bytes(idb, sizeof(idb)) < 0 || util_random_bytes(secret, sizeof(secret)) < 0)
        return -1;
    util_hex(idb, sizeof(idb), id);
    util_hex(secret, sizeof(secret), sh);
    int n = snprintf(key_out, keylen, "mg_%s_%s", id, sh);
    if (n < 0 || (size_t)n >= keylen)
        return -1;
    util_sha256_hex(key_out, strlen(key_out), hash);
    snprintf(now, sizeof(now), "%lld", (long long)util_now_ms());

    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_pipe_cmd(&p, "HSET mg:key:%s tenant %s hash %s scopes %s test %d created_at %s", id, tenant,
               hash, scopes, test ? 1 : 0, now);
    q_pipe_cmd(&p, "SADD mg:tenant:%s:keys %s", tenant, id);
    q_pipe_cmd(&p, "SADD mg:tenants %s", tenant);
    q_pipe_cmd(&p, "EXEC");
    redisReply **r = q_pipe_end(&p);
    int ok = r && r[4]->type == REDIS_REPLY_ARRAY;
    q_replies_free(r, p.n);
    memset(sh, 0, sizeof(sh));
    return ok ? 0 : -1;
}

int queue_key_check(struct queue *q, const char *key, struct queue_key_info *info)
{
    size_t klen = strlen(key);
    /* "mg_" + id + "_" + secret; anything else is simply unknown. */
    if (klen != 3 + KEY_ID_HEX + 1 + 2 * KEY_SECRET_BYTES || strncmp(key, "mg_", 3) != 0 ||
        key[3 + KEY_ID_HEX] != '_')
        return 1;
    char id[KEY_ID_HEX + 1];
    memcpy(id, key + 3, KEY_ID_HEX);
    id[KEY_ID_HEX] = '\0';
    for (int i = 0; i < KEY_ID_HEX; i++)
        if (!isxdigit((unsigned char)id[i]))
            return 1;
    /* The record comes from the cache (queue_cache.c) when it holds it;
     * the hash comparison below runs on every request either way. */
    struct q_cached_key rec;
    if (q_cache_key_get(id, &rec) != 0) {
        uint64_t gen = q_cache_gen();
        redisReply *r = q_cmd(q, "HMGET mg:key:%s hash tenant scopes test", id);
        if (!r)
            return -1;
        int found = r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
                    r->element[0]->type == REDIS_REPLY_STRING && r->element[0]->len == 64 &&
                    r->element[1]->type == REDIS_REPLY_STRING;
        if (found) {
            memset(&rec, 0, sizeof(rec));
            memcpy(rec.hash, r->element[0]->str, 64);
            util_strlcpy(rec.tenant, r->element[1]->str, sizeof(rec.tenant));
            if (r->element[2]->type == REDIS_REPLY_STRING)
                util_strlcpy(rec.scopes, r->element[2]->str, sizeof(rec.scopes));
            rec.test = r->element[3]->type == REDIS_REPLY_STRING && r->element[3]->str[0] == '1';
        }
        freeReplyObject(r);
        if (!found)
            return 1; /* unknown ids are never cached */
        q_cache_key_put(gen, id, &rec);
    }
    char hash[65];
    util_sha256_hex(key, klen, hash);
    if (!util_ct_equal(hash, rec.hash, 64))
        return 1;
    memset(info, 0, sizeof(*info));
    util_strlcpy(info->id, id, sizeof(info->id));
    util_strlcpy(info->tenant, rec.tenant, sizeof(info->tenant));
    util_strlcpy(info->scopes, rec.scopes, sizeof(info->scopes));
    info->test = rec.test;
    return 0;
}

int queue_key_list(struct queue *q, const char *tenant, json_t **out)
{
    redisReply *r = q_cmd(q, "SMEMBERS mg:tenant:%s:keys", tenant);
    if (!r)
        return -1;
    json_t *arr = json_array();
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (size_t i = 0; i < r->elements; i++)
        q_pipe_cmd(&p, "HMGET mg:key:%s scopes test created_at", r->element[i]->str);
    redisReply **v = p.n ? q_pipe_end(&p) : NULL;
    if (p.n && !v) {
        freeReplyObject(r);
        json_decref(arr);
        return -1;
    }
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *h = v[i];
        if (h->type != REDIS_REPLY_ARRAY || h->element[0]->type != REDIS_REPLY_STRING)
            continue;
        char prefix[40];
        snprintf(prefix, sizeof(prefix), "mg_%s_", r->element[i]->str);
        long long created = h->element[2]->str ? atoll(h->element[2]->str) : 0;
        char ts[40];
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:b, s:s}", "id", r->element[i]->str, "prefix", prefix,
                           "scopes", h->element[0]->str, "test",
                           h->element[1]->str && h->element[1]->str[0] == '1', "created_at",
                           util_rfc3339(created, ts, sizeof(ts))));
    }
    q_replies_free(v, p.n);
    freeReplyObject(r);
    *out = arr;
    return 0;
}

int queue_key_revoke(struct queue *q, const char *key_id)
{
    redisReply *r = q_cmd(q, "HGET mg:key:%s tenant", key_id);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        return 1;
    }
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_pipe_cmd(&p, "DEL mg:key:%s", key_id);
    q_pipe_cmd(&p, "SREM mg:tenant:%s:keys %s", r->str, key_id);
    q_pipe_cmd(&p, "EXEC");
    freeReplyObject(r);
    redisReply **v = q_pipe_end(&p);
    int ok = v && v[3]->type == REDIS_REPLY_ARRAY;
    q_replies_free(v, p.n);
    return ok ? 0 : -1;
}

int queue_tenant_set(struct queue *q, const char *tenant, const char *const *pairs)
{
    const char *argv[64];
    int argc = 0;
    argv[argc++] = "HSET";
    char key[128];
    snprintf(key, sizeof(key), "mg:tenant:%s", tenant);
    argv[argc++] = key;
    for (; *pairs && argc < 62; pairs += 2) {
        argv[argc++] = pairs[0];
        argv[argc++] = pairs[1];
    }
    redisReply *r;
    if (argc > 2) {
        r = q_cmdv(q, argc, argv, NULL);
        if (!r)
            return -1;
        freeReplyObject(r);
    }
    r = q_cmd(q, "SADD mg:tenants %s", tenant);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

int queue_tenant_get(struct queue *q, const char *tenant, json_t **out)
{
    if (q_cache_tenant_get(tenant, out) == 0)
        return 0;
    uint64_t gen = q_cache_gen();
    redisReply *r = q_cmd(q, "HGETALL mg:tenant:%s", tenant);
    if (!r)
        return -1;
    json_t *o = json_object();
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        json_object_set_new(o, r->element[i]->str, json_string(r->element[i + 1]->str));
    freeReplyObject(r);
    /* no settings is an answer too (a tenant that has none): creating
     * the hash invalidates it like any other change */
    q_cache_tenant_put(gen, tenant, o);
    *out = o;
    return 0;
}

int queue_secret_get(struct queue *q, size_t n, unsigned char *out, size_t cap, size_t *len)
{
    unsigned char fresh[64];
    if (n == 0 || n > sizeof(fresh) || util_random_bytes(fresh, n) < 0)
        return -1;
    /* SET NX: the first process to ask makes the key; everyone (this one
     * included) then reads back the same bytes. */
    const char *argv[] = {"SET", "mg:secret", (const char *)fresh, "NX"};
    size_t lens[] = {3, 9, n, 2};
    redisReply *r = q_cmdv(q, 4, argv, lens);
    OPENSSL_cleanse(fresh, sizeof(fresh));
    if (!r)
        return -1;
    freeReplyObject(r);
    r = q_cmd(q, "GET mg:secret");
    if (!r)
        return -1;
    int ok = r->type == REDIS_REPLY_STRING && r->len >= 16 && r->len <= cap;
    if (ok) {
        memcpy(out, r->str, r->len);
        *len = r->len;
        OPENSSL_cleanse(r->str, r->len);
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}
