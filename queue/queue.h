/*
 * queue.h - everything mailgate keeps in Redis: API keys, tenants, message
 * records, rendered bodies, per-recipient status, events, and the job
 * stream the senders drain through a consumer group.
 *
 * Keys (one prefix "mg:"; {t} tenant, {id} message id):
 *   mg:key:{key_id}            hash  tenant, hash (SHA-256 hex of the key), scopes, test, created_at
 *   mg:tenant:{t}:keys         set   key ids of the tenant
 *   mg:tenant:{t}              hash  tenant settings (limits)
 *   mg:msg:{id}                hash  tenant, created_at, from, subject, tags, metadata, mail_from, rcpts
 *   mg:msg:{id}:rcpt           hash  email -> {"status","attempts","last_reply"} JSON
 *   mg:msg:{id}:body           string the rendered RFC 5322 message (CRLF, not dot-stuffed)
 *   mg:msg:{id}:events         list  event JSON, oldest first
 *   mg:tenant:{t}:messages     zset  message ids by created_at ms
 *   mg:events:{t}              stream one entry per event, field "e" = event JSON
 *   mg:jobs:{t}                stream the tenant's delivery jobs: m (message id), r (JSON
 *                                     array of recipients to try), a (attempt, from 1).
 *                                     One stream per tenant, read round-robin, so one
 *                                     tenant's burst cannot hold up another's mail
 *   mg:jobtenants              set   tenants that have a job stream
 *   mg:claims                  hash  "{t} {entry id}" -> times the entry was reclaimed
 *   mg:dead                    stream jobs reclaimed too often (poison): t, m, r, a
 *   mg:tmpl:{t}:{name}         hash  a stored template (see queue_tmpl.c below)
 *   mg:tmpl:{t}                zset  the tenant's template names
 *   mg:delayed                 zset  job JSON ({t,m,r,a}) by due time (ms); moved back to
 *                                     the tenant's stream by
 *                                     a Lua script, so several schedulers never double-fire
 *   mg:feed                    stream every event as it is recorded: t (tenant), e (event
 *                                     JSON); drained by the webhook dispatcher's group
 *   mg:open                    zset  ids of messages with a recipient not yet terminal,
 *                                     by created_at ms (the oldest is the queue's age)
 * The consumer group on every job stream is "senders". A job leaves its
 * stream by XACK + XDEL in the same MULTI that records its outcome, never by
 * trimming (Redis 7.0's XAUTOCLAIM drops trimmed pending entries silently).
 * A sender keeps its in-flight entries fresh with XCLAIM ... JUSTID; an
 * entry idle longer than the claim timeout belonged to a dead sender and
 * is taken over with XAUTOCLAIM. At-least-once: a duplicate is possible only
 * for a transaction cut off after the final "." and before its reply.
 *
 * Ownership: a struct queue is one Redis connection, used by one thread at
 * a time. Strings and json_t returned to the caller are the caller's.
 * Errors: functions return 0 on success and -1 when Redis is unreachable or
 * answered an error (the connection is then dropped and re-made on the next
 * call); lookups return 1 for "not found".
 *
 * SECURITY: API keys are stored only as SHA-256 hashes; the key id (a
 * public prefix of the key) locates the record and the hash is compared
 * in constant time.
 */
#ifndef MG_QUEUE_H
#define MG_QUEUE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define QUEUE_STREAM_PREFIX "mg:jobs:" /* + tenant */
#define QUEUE_TENANTS "mg:jobtenants"
#define QUEUE_CLAIMS "mg:claims"
#define QUEUE_DEAD "mg:dead"
#define QUEUE_GROUP "senders"
#define QUEUE_READ_STREAMS_MAX 64   /* tenant streams named in one XREADGROUP */
#define QUEUE_MAX_CLAIMS 3          /* reclaims before a job is dead-lettered */
#define QUEUE_DELAYED "mg:delayed"
#define QUEUE_FEED "mg:feed"    /* stream: every event of every tenant (t, e), for webhooks */
#define QUEUE_OPEN "mg:open"    /* zset: messages with a non-terminal recipient, by created_at ms */
#define QUEUE_KEY_MAX 128      /* bytes of an API key we accept */
#define QUEUE_TENANT_MAX 64    /* bytes of a tenant name */

struct queue;

/* queue_open - parse url ("redis://[:password@]host:port[/db]" or
 * "unix:///path") and connect. The connection is made lazily again after
 * any error. Returns NULL with a reason in err (no password in it) when the
 * URL is bad; an unreachable server is not an error here. */
struct queue *queue_open(const char *url, char *err, size_t errlen);

/* queue_close - disconnect and free; NULL is safe. */
void queue_close(struct queue *q);

/* queue_ping - 0 when Redis answers PING, else -1. */
int queue_ping(struct queue *q);

/* queue_url_check - validate a Redis URL without connecting. 0 or -1. */
int queue_url_check(const char *url, char *err, size_t errlen);

/* queue_maxmemory_policy - the server's maxmemory-policy into out.
 * Returns 0 or -1. */
int queue_maxmemory_policy(struct queue *q, char *out, size_t outlen);

/* ---- API keys and tenants (queue_keys.c) ------------------------------ */

struct queue_key_info {
    char id[32];
    char tenant[QUEUE_TENANT_MAX + 1];
    char scopes[128];      /* comma-separated */
    int test;
};

/* queue_tenant_name_ok - 1 when name is 1..64 of [A-Za-z0-9._-]. */
int queue_tenant_name_ok(const char *name);

/* queue_key_create - make a key "mg_<id>_<secret>" for tenant with scopes,
 * store its hash, print nothing. key_out gets the key (>= 80 bytes).
 * Returns 0 or -1. */
int queue_key_create(struct queue *q, const char *tenant, const char *scopes, int test,
                     char *key_out, size_t keylen);

/* queue_key_check - look the key up by its id and compare hashes in
 * constant time. Returns 0 with *info filled, 1 when unknown or revoked,
 * -1 when Redis failed. */
int queue_key_check(struct queue *q, const char *key, struct queue_key_info *info);

/* queue_key_list - JSON array of {id, prefix, scopes, test, created_at}
 * for the tenant (never the key or its hash). Returns 0 or -1. */
int queue_key_list(struct queue *q, const char *tenant, json_t **out);

/* queue_key_revoke - delete a key by id. 0, 1 when unknown, -1 on error. */
int queue_key_revoke(struct queue *q, const char *key_id);

/* queue_tenant_set - store tenant settings (fields given as pairs,
 * NULL-terminated). Returns 0 or -1. */
int queue_tenant_set(struct queue *q, const char *tenant, const char *const *pairs);

/* queue_tenant_get - tenant settings as a JSON object (empty when none). */
int queue_tenant_get(struct queue *q, const char *tenant, json_t **out);

/* ---- messages (queue_msg.c) ------------------------------------------- */

struct queue_rcpt {
    const char *email;
    const char *status;    /* "queued", "scheduled" or "suppressed" */
};

struct queue_new_message {
    const char *id;
    const char *tenant;
    int64_t created_ms;
    const char *from;          /* From as given (display form) */
    const char *subject;
    json_t *tags;              /* array, borrowed */
    json_t *metadata;          /* object, borrowed */
    const char *mail_from;     /* envelope sender */
    const struct queue_rcpt *rcpts;
    size_t nrcpts;
    const char *body;          /* rendered message */
    size_t bodylen;
    int64_t due_ms;            /* 0: send now; else scheduled for then */
};

/* queue_event_new - a new event object {id, type, created_at, message_id,
 * recipient, tags, metadata}; tags/metadata are copied. Caller owns it. */
json_t *queue_event_new(const char *type, const char *msg_id, const char *rcpt, json_t *tags,
                        json_t *metadata);

/* queue_message_enqueue - store the record, body, recipients, a "queued"
 * (or "suppressed") event per recipient, and the job (or the delayed job),
 * in one MULTI/EXEC: all or nothing. Returns 0 or -1. */
int queue_message_enqueue(struct queue *q, const struct queue_new_message *m);

/* queue_message_get - the message as the API shows it (contract
 * "GET /v1/messages/{id}"), with its status derived from its recipients.
 * Returns 0 with *out, 1 when unknown or another tenant's, -1 on error. */
int queue_message_get(struct queue *q, const char *tenant, const char *id, json_t **out);

/* queue_message_cancel - cancel a message that is still scheduled: its
 * recipients become "cancelled" (with events), atomically against the
 * scheduler. Returns 0 when cancelled, 1 when unknown or another tenant's,
 * 2 when it is no longer (or never was) scheduled, -1 on Redis error. */
int queue_message_cancel(struct queue *q, const char *tenant, const char *id);

/* queue_message_events - the message's events, oldest first. 0/1/-1. */
int queue_message_events(struct queue *q, const char *tenant, const char *id, json_t **out);

struct queue_query {
    const char *type, *message_id, *recipient, *status, *tag;
    int64_t since_ms, until_ms;    /* 0 = open */
    int limit;                     /* 1..1000 */
    const char *cursor;            /* opaque, from next_cursor, or NULL */
};

/* queue_events_query - {"data": [...], "next_cursor": ...} newest first.
 * Returns 0, 1 when the cursor is malformed, -1 on error. */
int queue_events_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out);

/* queue_messages_query - {"data": [...], "next_cursor": ...} newest first. */
int queue_messages_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out);

/* queue_message_status - derive the message status from recipient
 * statuses (contract "Message status"). Pure. */
const char *queue_message_status(const char *const *rcpt_status, size_t n);

/* ---- jobs (queue_jobs.c) ---------------------------------------------- */

struct queue_job {
    char tenant[QUEUE_TENANT_MAX + 1]; /* whose stream the entry is in */
    char entry_id[48];       /* stream entry id */
    char msg_id[64];
    json_t *rcpts;           /* array of recipient emails to try; owned */
    int attempt;             /* 1 for the first try */
    int reclaims;            /* times the entry was taken over from a dead sender */
};

/* queue_jobs_read - read up to max jobs for consumer, at most one per
 * tenant stream per call (round-robin over the tenants' streams, starting
 * at a rotating offset), blocking up to block_ms when there are none. The
 * jobs are pending for consumer until finished. Returns the number read
 * (0 when none arrived), or -1 on error. */
int queue_jobs_read(struct queue *q, const char *consumer, int block_ms, struct queue_job *out, int max);

/* An entry a sender is working on, as its keeper thread knows it. */
struct queue_inflight {
    char tenant[QUEUE_TENANT_MAX + 1];
    char entry_id[48];
    char consumer[128];
};

/* queue_jobs_touch - reset the idle time of in-flight entries (XCLAIM ...
 * JUSTID to their own consumer), so no other sender takes them over while
 * a transaction waits up to 10 minutes for its reply. One round trip.
 * Returns 0 or -1. */
int queue_jobs_touch(struct queue *q, const struct queue_inflight *v, int n);

/* queue_jobs_reclaim - take over up to max entries idle longer than
 * min_idle_ms in any tenant stream (their sender died), for consumer.
 * Each job's reclaims count is incremented and returned. Returns the
 * number of jobs in out, or -1. */
int queue_jobs_reclaim(struct queue *q, const char *consumer, int64_t min_idle_ms, struct queue_job *out, int max);

/* queue_job_dead_letter - copy a poison job to mg:dead (for inspection and
 * /metrics); the caller records its recipients' outcomes with
 * queue_job_finish, which removes it from its stream. Returns 0 or -1. */
int queue_job_dead_letter(struct queue *q, const struct queue_job *job, const char *reason);

/* queue_job_free - release job->rcpts; safe twice. */
void queue_job_free(struct queue_job *job);

/* What a sender needs for one job, loaded in one round trip. */
struct queue_delivery {
    char *body;              /* owned; NULL when the message is gone */
    size_t bodylen;
    char *tenant, *mail_from;
    int64_t created_ms;      /* when the message was accepted */
    json_t *tags, *metadata; /* owned */
    json_t *rcpt_state;      /* object email -> {status, attempts, ...}; owned */
    json_t *all_rcpts;       /* array of every recipient of the message; owned */
};

/* queue_delivery_load - fetch body, record and recipient states of job.
 * Returns 0, 1 when the message no longer exists, -1 on error. */
int queue_delivery_load(struct queue *q, const struct queue_job *job, struct queue_delivery *d);
void queue_delivery_free(struct queue_delivery *d);

/* One recipient's outcome, as the sender decided it. */
struct queue_outcome {
    const char *email;
    const char *status;      /* "delivered", "deferred", "bounced" */
    json_t *event;           /* the event to record (stolen: freed by finish) */
    const char *last_reply;  /* "250 2.0.0 ok" or a local reason */
    int suppress;            /* also add the address to the tenant's suppression
                                list (a hard bounce for a bad mailbox, 5.1.x) */
};

/* queue_job_finish - in one MULTI/EXEC: set each recipient's status and
 * attempts, append its event to the message and the tenant log, schedule
 * the deferred recipients as a new job due at retry_due_ms, delete the body
 * when every recipient is terminal, then XACK and XDEL the job. Returns 0,
 * or -1 (nothing recorded; the job stays pending and is read again). */
int queue_job_finish(struct queue *q, const struct queue_job *job, const struct queue_delivery *d,
                     struct queue_outcome *o, size_t n, int64_t retry_due_ms);

/* queue_schedule_due - move up to max delayed jobs whose time has come to
 * the stream, atomically (Lua). Returns the number moved, or -1. */
int queue_schedule_due(struct queue *q, int64_t now_ms, int max);

/* ---- suppressions (queue_supp.c) --------------------------------------
 * mg:supp:{t} hash: lower-cased email -> {"email","reason","created_at"}.
 * A suppressed recipient is recorded "suppressed" at send and never sent. */

/* queue_supp_add - add (or refresh) email with reason ("manual",
 * "hard_bounce", "unsubscribed", ...). *out gets the record when out is
 * not NULL. Returns 0 or -1. */
int queue_supp_add(struct queue *q, const char *tenant, const char *email, const char *reason, json_t **out);

/* queue_supp_remove - 0 when removed, 1 when absent, -1 on error. */
int queue_supp_remove(struct queue *q, const char *tenant, const char *email);

/* queue_supp_check - for each of n emails set hit[i] = 1 when suppressed.
 * One round trip. Returns 0 or -1. */
int queue_supp_check(struct queue *q, const char *tenant, const char *const *emails, size_t n, int *hit);

/* queue_supp_list - {"data": [...], "next_cursor": ...}; cursor is opaque
 * (Redis HSCAN cursor). Returns 0, 1 for a bad cursor, -1 on error. */
int queue_supp_list(struct queue *q, const char *tenant, const char *cursor, int limit, json_t **out);

/* ---- idempotency keys (queue_idem.c) ----------------------------------
 * mg:idem:{t}:{route}:{sha256(key)} hash: state (inflight|done), hash (of
 * the request body), status, body. Claimed atomically (Lua), so of two
 * concurrent requests with one key exactly one runs. */

#define QUEUE_IDEM_TTL_MS (24LL * 3600 * 1000)  /* answers are kept 24 h */
#define QUEUE_IDEM_INFLIGHT_MS (120LL * 1000)   /* a claim outlives a crash this long */

enum queue_idem { QUEUE_IDEM_NEW, QUEUE_IDEM_REPLAY, QUEUE_IDEM_CONFLICT, QUEUE_IDEM_IN_PROGRESS };

/* queue_idem_begin - claim key for a request whose body hashes to
 * body_sha256 (hex). NEW: the caller runs the request and must call
 * queue_idem_finish. REPLAY: *status and *body (caller frees) hold the
 * first answer. CONFLICT: the key was used with another body.
 * IN_PROGRESS: the first request is still running. -1 on Redis error. */
int queue_idem_begin(struct queue *q, const char *tenant, const char *route, const char *key,
                     const char *body_sha256, int *status, char **body);

/* queue_idem_finish - keep a 2xx answer for 24 h, or release the claim
 * for any other status so the request may be retried. 0 or -1. */
int queue_idem_finish(struct queue *q, const char *tenant, const char *route, const char *key,
                      int status, const char *body);

/* ---- stored templates (queue_tmpl.c) ----------------------------------
 * mg:tmpl:{t}:{name} hash: subject, text, html (Mustache sources; a part
 * the template lacks is absent), created_at, updated_at (RFC 3339).
 * mg:tmpl:{t} zset: the tenant's template names, all scored 0, so that
 * ZRANGE lists them sorted by name. */

#define QUEUE_TMPL_NAME_MAX 64 /* bytes of a template name */

/* The parts of a template; a NULL part is absent. Borrowed. */
struct queue_tmpl_src {
    const char *subject, *text, *html;
    size_t subject_len, text_len, html_len;
};

/* queue_tmpl_name_ok - 1 when name is 1..64 of [A-Za-z0-9._-]. */
int queue_tmpl_name_ok(const char *name);

/* queue_tmpl_put - create or replace the tenant's template name (parts not
 * in src are removed), keeping created_at of a replaced one. Returns 0 with
 * *created (1 new, 0 replaced) and *out (caller frees) = {name, subject,
 * text, html, created_at, updated_at}; 2 when name is new and the tenant
 * already has max_templates; -1 on error. Atomic (Lua). */
int queue_tmpl_put(struct queue *q, const char *tenant, const char *name, const struct queue_tmpl_src *src,
                   size_t max_templates, int *created, json_t **out);

/* queue_tmpl_get - *out (caller frees) = {name, subject, text, html,
 * created_at, updated_at}, absent parts null. 0, 1 when none, -1. */
int queue_tmpl_get(struct queue *q, const char *tenant, const char *name, json_t **out);

/* queue_tmpl_part - one part ("subject", "text" or "html") of a template:
 * *src (NUL-terminated, caller frees) and *len. 0, 1 when the template or
 * the part does not exist, -1 on error. */
int queue_tmpl_part(struct queue *q, const char *tenant, const char *name, const char *part, char **src,
                    size_t *len);

/* queue_tmpl_delete - remove a template. 0, 1 when none, -1 on error. */
int queue_tmpl_delete(struct queue *q, const char *tenant, const char *name);

/* queue_tmpl_list - *out (caller frees) = {"data": [{name, created_at,
 * updated_at}, ...]} sorted by name. 0 or -1. */
int queue_tmpl_list(struct queue *q, const char *tenant, json_t **out);

/* ---- queue statistics (queue_stats.c) ---------------------------------- */

struct queue_stats {
    long long stream_len;      /* jobs in the tenants' job streams (incl. pending) */
    long long dead;            /* jobs in the dead-letter stream */
    long long pending;         /* jobs read by a sender, not yet acknowledged */
    long long delayed;         /* retries and scheduled sends waiting for their time */
    long long open_messages;   /* messages with a non-terminal recipient */
    int64_t oldest_open_ms;    /* created_at of the oldest of those, 0 when none */
};

/* queue_stats_get - one pipelined round trip. Returns 0 or -1. */
int queue_stats_get(struct queue *q, struct queue_stats *st);

/* ---- webhooks (queue_webhooks.c) --------------------------------------
 * mg:wh:{t} hash: webhook id -> {"id","url","events","created_at","secret"};
 * mg:wh:{t}:{w}:log list: the last QUEUE_WH_LOG_MAX attempts, newest first;
 * mg:whd:{w}:{e} hash: one delivery (tenant, webhook, event id and type,
 * the exact body bytes, attempts made, creation ms, claim token);
 * mg:wh:due zset: delivery ids "{w}:{e}" by due ms. The consumer group
 * "dispatchers" drains mg:feed; a feed entry is acknowledged and deleted
 * by the same Lua script that creates its deliveries. */

#define QUEUE_FEED_GROUP "dispatchers"
#define QUEUE_WH_DUE "mg:wh:due"
#define QUEUE_WH_MAX 20        /* webhooks per tenant */
#define QUEUE_WH_LOG_MAX 100   /* attempts kept per webhook */

/* queue_wh_id_ok - 1 when id looks like "wh_" + lower-case hex (≤ 64). */
int queue_wh_id_ok(const char *id);

/* queue_wh_create - store hook (borrowed; must have "id") for tenant.
 * Returns 0, 2 when the tenant already has max webhooks, -1 on error. */
int queue_wh_create(struct queue *q, const char *tenant, const json_t *hook, size_t max);

/* queue_wh_list - *out (caller frees) = {"data": [...]} oldest first,
 * without the secrets. 0 or -1. */
int queue_wh_list(struct queue *q, const char *tenant, json_t **out);

/* queue_wh_delete - remove a webhook and its attempt log; its pending
 * deliveries are dropped when next claimed. 0, 1 when unknown, -1. */
int queue_wh_delete(struct queue *q, const char *tenant, const char *id);

/* queue_wh_deliveries - *out (caller frees) = {"data": [attempts newest
 * first]}. 0, 1 when the webhook is unknown (or another tenant's), -1. */
int queue_wh_deliveries(struct queue *q, const char *tenant, const char *id, json_t **out);

/* One entry of mg:feed. event is owned (NULL when the entry was empty). */
struct queue_feed_entry {
    char entry_id[48];
    char tenant[QUEUE_TENANT_MAX + 1];
    char *event;
    size_t eventlen;
};

/* queue_feed_group_ensure - create the group (and the stream) if missing. */
int queue_feed_group_ensure(struct queue *q);

/* queue_feed_read - up to max entries for consumer into v (*n of them):
 * first its own pending entries (after a restart or a lost connection),
 * then new ones, blocking up to block_ms. 0 (also when none) or -1. */
int queue_feed_read(struct queue *q, const char *consumer, int block_ms, struct queue_feed_entry *v, int max,
                    int *n);

/* queue_feed_autoclaim - take over up to max entries other consumers (a
 * dead process) left pending for at least min_idle_ms. 0 or -1. */
int queue_feed_autoclaim(struct queue *q, const char *consumer, int64_t min_idle_ms, struct queue_feed_entry *v,
                         int max, int *n);

/* queue_feed_fanout - for each entry, atomically: make one delivery per
 * webhook of its tenant whose events include the event's type (due now),
 * then XACK + XDEL the entry. One round trip. *made (may be NULL) gets the
 * deliveries made. 0, or -1 when any entry was not processed (it stays
 * pending). */
int queue_feed_fanout(struct queue *q, const struct queue_feed_entry *v, int n, int64_t now_ms, int *made);

/* queue_feed_entries_free - release the events of n entries. */
void queue_feed_entries_free(struct queue_feed_entry *v, int n);

/* One claimed delivery attempt. body, url and secret are owned. */
struct queue_wh_attempt {
    char id[140];            /* "{w}:{e}" */
    char token[32];          /* this claim */
    char tenant[QUEUE_TENANT_MAX + 1];
    char webhook_id[68];
    char event_id[68];
    char event_type[32];
    char *body;              /* the event JSON exactly as recorded */
    size_t bodylen;
    int attempt;             /* number of this attempt, from 1 */
    int64_t first_ms;        /* when the delivery was created */
    char *url, *secret;      /* of the webhook; secret never logged */
};

/* queue_wh_claim - claim one delivery due by now_ms for lease_ms (it comes
 * due again after that unless finished). Returns 0 with *a (free with
 * queue_wh_attempt_free), 1 when none is due, -1 on error. */
int queue_wh_claim(struct queue *q, int64_t now_ms, int64_t lease_ms, struct queue_wh_attempt *a);

enum queue_wh_outcome {
    QUEUE_WH_DONE,    /* delivered, or given up: the delivery is removed */
    QUEUE_WH_RETRY,   /* failed: due again at next_due_ms, attempt counted */
    QUEUE_WH_RELEASE, /* not attempted (shutdown): due again, not counted */
};

/* queue_wh_finish - record the outcome of a claimed attempt and append
 * log_entry (may be NULL) to the webhook's attempt log. Returns 0, 1 when
 * the claim was lost (lease expired and taken; nothing written), -1. */
int queue_wh_finish(struct queue *q, const struct queue_wh_attempt *a, enum queue_wh_outcome how,
                    int64_t next_due_ms, const json_t *log_entry);

/* queue_wh_attempt_free - release a's strings (wiping the secret). */
void queue_wh_attempt_free(struct queue_wh_attempt *a);

#endif
