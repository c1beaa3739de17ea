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
 *   mg:msg:{id}:body:{n}       string recipient n's own copy (n from 1, its place in rcpts),
 *                                     instead of :body, when the message is tracked or has
 *                                     unsubscribe links ("copies" in mg:msg:{id} = n max)
 *   mg:msg:{id}:events         list  event ids, oldest first (each JSON is mg:event:{ev id};
 *                                     an older version's list holds JSON: it begins with '{')
 *   mg:msg:{id}:uniq           set   "opened_unique:{email}", "clicked_unique:{email}":
 *                                     who opened / clicked already (unique counts)
 *   mg:msg:{id} field st               the status the message is indexed under (a final one)
 *   mg:tenant:{t}:messages     zset  message ids, all scored 0 (lex order = time order)
 *   mg:msgi:{t}:tag:{tag}      zset  the same, of messages with that tag
 *   mg:msgi:{t}:rcpt:{email}   zset  the same, of messages to that (lower-cased) address
 *   mg:msgi:{t}:status:{s}     zset  the same, of messages whose status is now s, for the
 *                                     final statuses only: queued, scheduled and sending are
 *                                     answered from the other indexes and mg:open
 *   mg:event:{ev id}           string event JSON: the one stored copy; SET NX makes
 *                                     recording an event idempotent
 *   mg:evi:{t}                 zset  the tenant's event ids, all scored 0 (lex = time)
 *   mg:evi:{t}:type:{type}     zset  the same, of one event type
 *   mg:evi:{t}:rcpt:{email}    zset  the same, of one (lower-cased) recipient
 *   mg:stats:{t}:{day ms}      hash  "{HH}:{counter}" -> count, for the UTC day
 *   mg:stats:{t}:{day ms}:tag:{tag} hash  the same, of events with that tag
 *   Retention (queue_set_retention_ms): index writes trim entries older
 *   than the retention (ZREMRANGEBYLEX; a process trims one index at most
 *   about once a second) and refresh the index's TTL;
 *   mg:event:*, mg:msg:{id}, :rcpt, :events, :uniq expire a retention after
 *   their last event (a scheduled message: after it is due); stats days
 *   expire a retention after the day ends. Nothing sweeps.
 *   mg:jobs:{t}                stream the tenant's delivery jobs: m (message id), r (JSON
 *                                     array of recipients to try), a (attempt, from 1),
 *                                     b (only for a personal copy: its n; r then names
 *                                     that one recipient).
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
 *   mg:feed                    stream every event of a tenant that has a webhook, as it is
 *                                     recorded: t (tenant), e (event id; an older version's
 *                                     entries hold the JSON); drained by the dispatcher's group
 *   mg:open                    zset  ids of messages with a recipient not yet terminal,
 *                                     by created_at ms (the oldest is the queue's age)
 *   mg:guard:{id}              string set (10 s) by the suppression guard of an enqueue
 *                                     (queue_message_enqueue) when a recipient is
 *                                     suppressed: it is WATCHed, so the EXEC is aborted
 *   mg:secret                  string 32 random bytes: the key of tracking tokens when
 *                                     MAILGATE_SECRET is unset (SET NX: made once, shared)
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
#define QUEUE_FEED "mg:feed"    /* stream: events (t, e = event id) of tenants with webhooks */
#define QUEUE_OPEN "mg:open"    /* zset: messages with a non-terminal recipient, by created_at ms */
#define QUEUE_KEY_MAX 128      /* bytes of an API key we accept */
#define QUEUE_TENANT_MAX 64    /* bytes of a tenant name */
#define QUEUE_COPIES_MAX 10000 /* personal copies of one message (recipients) */

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

/* queue_redis_version - the server's version (INFO server, redis_version)
 * as major and minor. Returns 0, or -1 when unreachable or unreadable. */
int queue_redis_version(struct queue *q, int *major, int *minor);

/* The oldest Redis mailgate runs on: the scripts use PEXPIRE ... GT (7.0). */
#define QUEUE_REDIS_MIN_MAJOR 7

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

/* ---- key and tenant cache (queue_cache.c) ------------------------------
 * queue_key_check and queue_tenant_get answer from a process-wide cache of
 * key records and tenant settings (at most 10,000 entries, each kept at most
 * 10 s) while, and only while, this process holds a live Redis
 * invalidation subscription (Redis 6+ client-side caching, broadcast mode
 * on mg:key: and mg:tenant:): a revoked key or a changed tenant setting is
 * dropped from the cache as soon as Redis reports the write. Without the
 * subscription (not started, starting, Redis down) every lookup goes to
 * Redis; the cache is emptied whenever the subscription is (re)made or
 * lost, and on FLUSHALL / FLUSHDB. */

/* queue_cache_start - start the subscriber thread for url (as queue_open:
 * direct, unix or Sentinel, with AUTH and SELECT); it connects and
 * reconnects with back-off on its own, so an unreachable Redis is not an
 * error here. Call once, from the process that serves the API. Returns 0,
 * or -1 with a reason in err (a bad URL; no password in it). */
int queue_cache_start(const char *url, char *err, size_t errlen);

/* queue_cache_stop - stop and join the subscriber (within about 200 ms,
 * or a connect timeout) and empty the cache; safe when not started. */
void queue_cache_stop(void);

/* ---- messages (queue_msg.c) ------------------------------------------- */

struct queue_rcpt {
    const char *email;
    const char *status;    /* "queued", "scheduled" or "suppressed" */
    const char *body;      /* personal copy (queue_new_message.personal), else NULL */
    size_t bodylen;
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
    const char *body;          /* rendered message (unused when personal) */
    size_t bodylen;
    int64_t due_ms;            /* 0: send now; else scheduled for then */
    int personal;              /* 1: each recipient that is not suppressed has its
                                  own copy (rcpts[i].body) and its own job */
    const char *key_id;        /* the API key the send came with, or NULL: the checked
                                  enqueue stores nothing when it no longer exists */
};

/* queue_event_new - a new event object {id, type, created_at, message_id,
 * recipient, tags, metadata}; tags/metadata are copied. Caller owns it. */
json_t *queue_event_new(const char *type, const char *msg_id, const char *rcpt, json_t *tags,
                        json_t *metadata);

/* queue_message_enqueue - store the record, body, recipients, a "queued"
 * (or "suppressed") event per recipient, and the job (or the delayed job),
 * in one MULTI/EXEC: all or nothing. With m->personal, recipient i's copy
 * is stored as mg:msg:{id}:body:{i+1} and gets a job of its own (field b).
 * The suppression check rides in the same one round trip: WATCH
 * mg:guard:{id} and mg:supp:{t}, a guard script that looks up the
 * recipients whose status is not already "suppressed" (lower-cased, as
 * queue_supp_check) and, when any is listed, touches the guard, then the
 * MULTI ... EXEC with every write done as if none were: Redis aborts that
 * EXEC when a watched key changed, so a hit (or a suppression added
 * meanwhile, then retried here) writes nothing. The same script checks
 * that m->key_id (when set) still exists, so that a key revoked a moment
 * ago sends nothing even if this process's cache (queue_cache.c) has not
 * yet heard of it.
 * Returns 0 when stored; 1 when hit (m->nrcpts ints, caller's) marks the
 * recipients found suppressed and nothing was stored: set their status
 * (and drop their personal copies), then call again; QUEUE_KEY_REVOKED
 * when the key is gone (nothing stored: answer 401); -1 on error (the EXEC
 * may have committed: ask queue_message_exists). */
#define QUEUE_KEY_REVOKED 3
int queue_message_enqueue(struct queue *q, const struct queue_new_message *m, int *hit);

/* queue_message_exists - 1 when the message record exists, 0 when not,
 * -1 when Redis cannot say. Used after an EXEC whose reply was lost: the
 * transaction may have committed. */
int queue_message_exists(struct queue *q, const char *id);

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

/* ---- event store, log indexes, stats (queue_events.c, queue_evstats.c) */

#define QUEUE_LIMIT_MAX 1000          /* items in one page of a log query */
#define QUEUE_CURSOR_MAX 112          /* bytes of a cursor, with its NUL */
#define QUEUE_STATS_HOURS_MAX (24 * 31) /* buckets of an hourly stats query */
#define QUEUE_STATS_DAYS_MAX 400        /* buckets of a daily stats query */

/* queue_set_retention_ms - how long messages and events stay readable
 * (MAILGATE_RETENTION_DAYS; default 30 days). Call once at start-up, before
 * any thread uses a queue; ms <= 0 is ignored. */
void queue_set_retention_ms(int64_t ms);
int64_t queue_retention_ms(void);

/* queue_event_type_ok / queue_message_status_ok - 1 when s is one of the
 * contract's event types / message statuses. */
int queue_event_type_ok(const char *s);
int queue_message_status_ok(const char *s);

/* queue_cursor_encode - the opaque cursor (base64url, no padding) for the
 * position after key (an event or message id: 1..64 of [A-Za-z0-9_-]) in
 * a list of kind ('e' events, 'm' messages) into out. 0, or -1 when key is
 * not an id or out is too small (QUEUE_CURSOR_MAX is enough). Pure. */
int queue_cursor_encode(char kind, const char *key, char *out, size_t outlen);

/* queue_cursor_decode - the id inside a cursor of kind into key. 0, or -1
 * when cursor is not one queue_cursor_encode made for kind. Pure. */
int queue_cursor_decode(const char *cursor, char kind, char *key, size_t keylen);

/* The rates of a stats bucket, each 0 when its denominator is 0:
 * delivery = delivered / (delivered + bounced), bounce = bounced /
 * (delivered + bounced), open = unique human opens / delivered, click =
 * unique human clicks / delivered, click_to_open = unique human clicks /
 * unique human opens. Rounded to 4 decimals. */
struct queue_rates {
    double delivery, bounce, open, click, click_to_open;
};

/* queue_stats_rates - fill r from the counts. Pure. */
void queue_stats_rates(long long delivered, long long bounced, long long opened_unique, long long clicked_unique,
                       struct queue_rates *r);

/* queue_stats_span - the buckets of [since_ms, until_ms) for buckets of
 * step_ms (an hour or a day): *start = since rounded down, the count of
 * buckets up to until rounded up. Returns the count (0 when until <= since). Pure. */
long queue_stats_span(int64_t since_ms, int64_t until_ms, int64_t step_ms, int64_t *start);

/* queue_stats_query - {"interval", "data": [{"start", "counts", "rates"}
 * oldest first, one per bucket, empty ones included], "totals": {"counts",
 * "rates"}} for tenant (or its events tagged tag when tag is not NULL)
 * over the buckets of [since_ms, until_ms); step_ms is 3600000 ("hour") or
 * 86400000 ("day"). The caller bounds the bucket count. One round trip.
 * Returns 0 with *out (caller frees), or -1. */
int queue_stats_query(struct queue *q, const char *tenant, const char *tag, int64_t since_ms, int64_t until_ms,
                      int64_t step_ms, json_t **out);

/* ---- jobs (queue_jobs.c) ---------------------------------------------- */

struct queue_job {
    char tenant[QUEUE_TENANT_MAX + 1]; /* whose stream the entry is in */
    char entry_id[48];       /* stream entry id */
    char msg_id[64];
    json_t *rcpts;           /* array of recipient emails to try; owned */
    int attempt;             /* 1 for the first try */
    int reclaims;            /* times the entry was taken over from a dead sender */
    int copy;                /* 0: the shared body; n > 0: the personal copy
                                mg:msg:{id}:body:{n} of the job's one recipient */
};

/* queue_jobs_read - read up to max jobs for consumer from up to max tenant
 * streams (round-robin over the tenants' streams, starting at a rotating
 * offset), the same COUNT (max / streams) from each, interleaved by tenant
 * in out; blocking up to block_ms when there are none. The jobs are
 * pending for consumer until finished. Returns the number read (0 when
 * none arrived), or -1 on error. */
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
    int copies;              /* personal copies the message has (0: one shared body) */
};

/* queue_delivery_load - fetch body (the job's personal copy when it names
 * one), record and recipient states of job.
 * Returns 0, 1 when the message no longer exists, -1 on error. */
int queue_delivery_load(struct queue *q, const struct queue_job *job, struct queue_delivery *d);
/* queue_delivery_load_many - queue_delivery_load for jobs[0..n) in one
 * round trip: d[i] filled and gone[i] 0, or gone[i] 1 (message no longer
 * exists, d[i] zeroed). Returns 0, or -1 on error (every d[i] zeroed; the
 * jobs stay pending). The caller frees each d[i]. */
int queue_delivery_load_many(struct queue *q, const struct queue_job *jobs, int n, struct queue_delivery *d,
                             int *gone);
void queue_delivery_free(struct queue_delivery *d);

/* One recipient's outcome, as the sender decided it. */
struct queue_outcome {
    const char *email;
    const char *status;      /* "delivered", "deferred", "bounced" */
    json_t *event;           /* the event to record (stolen: freed by finish when it
                                succeeds; after a failure the caller retries with it
                                or frees it) */
    const char *last_reply;  /* "250 2.0.0 ok" or a local reason */
    int suppress;            /* also add the address to the tenant's suppression
                                list (a hard bounce for a bad mailbox, 5.1.x) */
};

/* queue_job_finish - in one MULTI/EXEC: set each recipient's status and
 * attempts, append its event to the message and the tenant log, schedule
 * the deferred recipients as a new job due at retry_due_ms (keeping the
 * job's personal copy), delete the job's personal copy once its recipient
 * is terminal and every body when every recipient is terminal, then XACK
 * and XDEL the job. Returns 0, or -1 (nothing recorded; the job stays
 * pending and is read again). */
int queue_job_finish(struct queue *q, const struct queue_job *job, const struct queue_delivery *d,
                     struct queue_outcome *o, size_t n, int64_t retry_due_ms);

/* One job's outcomes for queue_jobs_finish (the arguments of
 * queue_job_finish); all borrowed except the events, as there. */
struct queue_finish {
    const struct queue_job *job;
    const struct queue_delivery *d;
    struct queue_outcome *o;
    size_t n;
    int64_t retry_due_ms;
    int done;                /* 1 once recorded (skipped by a retry) */
};

/* A queue_jobs_read to run after the outcomes, in the same round trip. */
struct queue_read {
    const char *consumer;
    int block_ms;
    struct queue_job *out;   /* up to max jobs; the caller frees them */
    int max;
    int n;                   /* out: jobs read, or -1 (failed or not sent) */
};

/* Outcomes written ahead, for a sender's batch: queue_jobs_rec_add writes
 * one job's MULTI/EXEC (exactly as queue_job_finish, so one job's failed
 * transaction never touches another's) to Redis at once, without waiting
 * for its reply, so that it is recorded while the caller sends the next
 * message; queue_jobs_rec_end reads every reply in one wait, with the
 * read rd describes queued last when asked (it may block: what came
 * before is recorded by then). Between begin and end the connection
 * belongs to the recorder: no other call on q. A job whose bodies go only
 * thanks to an earlier job of the same message whose reply is not in yet
 * (merged into its d->rcpt_state by the caller) waits for that reply
 * first: one more round trip. Each f added (borrowed until end) gets
 * done = 1 once recorded; after a failure nothing more is written, and
 * the events of a job not done stay with the caller, who retries with
 * the same f (queue_jobs_finish; events are idempotent per event id).
 * begin returns NULL on ENOMEM (then add does nothing and end returns
 * -1); end frees r and returns 0, or -1 when a reply or the connection
 * failed. rd->n: jobs read (the caller owns them), or -1. */
struct queue_rec;
struct queue_rec *queue_jobs_rec_begin(struct queue *q, struct queue_read *rd);
void queue_jobs_rec_add(struct queue_rec *r, struct queue_finish *f);
int queue_jobs_rec_end(struct queue_rec *r, int read);

/* queue_jobs_finish - the f[i] not yet done through one recorder, with
 * the read rd (may be NULL) at the end. Returns 0 when every f[i] is
 * done, else -1 (then rd->n may still be >= 0: jobs read). */
int queue_jobs_finish(struct queue *q, struct queue_finish *f, int n, struct queue_read *rd);

/* queue_schedule_due - move up to max delayed jobs whose time has come to
 * the stream, atomically (Lua). Returns the number moved, or -1. */
int queue_schedule_due(struct queue *q, int64_t now_ms, int max);

/* ---- tracking events (queue_msg.c) ------------------------------------
 * Opens, clicks and unsubscribes arrive with a signed token that outlives
 * the message record (retention): they are recorded on the message while it
 * exists, and in the tenant's event log (and webhook feed) always. */

/* What a tracking request needs to know about its message. */
struct queue_track_info {
    int exists;              /* the message record is still there */
    json_t *tags, *metadata; /* owned; [] and {} when the record is gone */
    int64_t delivered_ms;    /* when the recipient's "delivered" was recorded; 0 unknown */
};

/* queue_track_load - the record of tenant's message id and, for rcpt, the
 * time of its first "delivered" event (the message's first
 * QUEUE_TRACK_SCAN_MAX events are looked at). One round trip. A record of
 * another tenant counts as gone. Returns 0 or -1; free with
 * queue_track_info_free. */
#define QUEUE_TRACK_SCAN_MAX 1000
int queue_track_load(struct queue *q, const char *tenant, const char *id, const char *rcpt,
                     struct queue_track_info *out);
void queue_track_info_free(struct queue_track_info *t);

/* queue_track_event - record ev (borrowed) of tenant's message id through
 * q_event_append, in one MULTI/EXEC. When exists is 0 (the record passed
 * its retention) the event still reaches the tenant log, its indexes and
 * the webhook feed; what is written under the message's keys is never shown
 * (the record is gone) and expires with the retention. Returns 0 or -1. */
int queue_track_event(struct queue *q, const char *tenant, const char *id, int exists, json_t *ev);

/* queue_secret_get - the shared token key kept at mg:secret: made of n
 * fresh random bytes by the first process that asks (SET NX), then read
 * back, so every process signs with the same key. out gets up to cap
 * bytes, *len how many. Returns 0 or -1. The key is never logged. */
int queue_secret_get(struct queue *q, size_t n, unsigned char *out, size_t cap, size_t *len);

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
    long long wh_pending;      /* webhook deliveries not yet done (mg:wh:due) */
    long long wh_due;          /* of those, due now (score <= now): the backlog */
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

/* One entry of mg:feed. event is its e field, owned (NULL when the entry
 * was empty): the event id, or from an older version the event JSON. */
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
 * with the event's body read by its id (none when it has expired), then
 * XACK + XDEL the entry. One round trip. *made (may be NULL) gets the
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

/* ---- per-tenant send limits (queue_limits.c) ----------------------------
 * mg:rl:{t}:{unix second} and mg:daily:{t}:{yyyymmdd} counters, both
 * checked and taken in one Lua call so concurrent requests on several API
 * processes cannot overshoot. */

struct queue_limit_result {
    int allowed;           /* 1: taken; 0: over a limit, nothing taken */
    long limit;            /* the per-second limit (0: none) */
    long remaining;        /* left in this second (or today, when only daily applies) */
    int64_t reset_ms;      /* when the window that refused (or the second) resets, epoch ms */
    int daily;             /* 1 when the daily limit is the one that refused */
};

/* queue_limits_take - take n messages from the tenant's rate (per second)
 * and daily budgets (0 = no limit). Returns 0 with *r filled, -1 on error. */
int queue_limits_take(struct queue *q, const char *tenant, long rate, long daily, long n,
                      struct queue_limit_result *r);

#endif
