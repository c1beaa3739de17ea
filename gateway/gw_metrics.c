/*
 * gw_metrics.c - GET /metrics in the Prometheus text format (0.0.4), and
 * the gateway's own counters and API latency histogram.
 *
 * Queue numbers come from Redis (shared by every process: one pipelined
 * round trip per scrape); counters, histograms and pool gauges are this
 * process's own, so a Prometheus sums them across instances. Every metric
 * has HELP and TYPE lines; counters end in _total, durations are seconds.
 * Counting is lock-free (atomics in static storage), so the request and
 * delivery paths never allocate or wait for a scrape.
 *
 * Metric names (stable; dashboards depend on them):
 *   mailgate_{accepted,delivered,deferred,bounced,suppressed,opened,clicked}_total
 *   mailgate_api_request_seconds, mailgate_smtp_transaction_seconds,
 *   mailgate_accepted_to_delivered_seconds (histograms)
 *   mailgate_queue_jobs, mailgate_queue_pending, mailgate_queue_delayed,
 *   mailgate_messages_open, mailgate_oldest_open_age_seconds (gauges, Redis)
 *   mailgate_smtp_pool_{size,open,busy}{relay="name"} (gauges)
 *   mailgate_webhook_backlog, mailgate_webhook_pending (gauges, Redis),
 *   mailgate_webhook_failures_total, mailgate_webhook_deliveries_total
 * SECURITY: no label carries a tenant, address or secret; the only label
 * value from configuration is a relay's name=, escaped.
 */
#include "gateway/gw.h"

#include <stdatomic.h>
#include <stdio.h>

#include "common/buf.h"
#include "common/hist.h"
#include "common/util.h"
#include "smtp/smtp_deliver.h"

#define METRICS_TEXT_MAX (256 * 1024) /* bytes of one exposition */
#define METRICS_POOLS_MAX 32          /* relays shown */

static atomic_ullong http_by_class[6]; /* index: status / 100 */
static atomic_ullong counters[GW_C_COUNT];

/* API latency: a cached answer takes well under a millisecond, a send with
 * DKIM a few, a batch of 500 personal copies up to seconds. */
static const uint64_t api_bounds_us[] = {250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
                                         100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
static struct hist h_api = HIST_INIT(api_bounds_us);

void gw_count_http(int status)
{
    int c = status / 100;
    if (c >= 1 && c <= 5)
        atomic_fetch_add_explicit(&http_by_class[c], 1, memory_order_relaxed);
}

void gw_count(enum gw_counter c, unsigned long n)
{
    if ((int)c >= 0 && c < GW_C_COUNT)
        atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

void gw_observe_api(uint64_t us)
{
    hist_observe_us(&h_api, us);
}

static unsigned long long counter(enum gw_counter c)
{
    return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

static void metric(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* single - a metric family with one unlabelled sample. */
static void single(struct buf *b, const char *name, const char *type, const char *help, unsigned long long v)
{
    metric(b, name, type, help);
    buf_printf(b, "%s %llu\n", name, v);
}

/* label_value - s escaped for a label value (backslash, quote, newline). */
static void label_value(const char *s, char *out, size_t outlen)
{
    size_t k = 0;
    for (; *s && k + 3 < outlen; s++) {
        if (*s == '\\' || *s == '"') {
            out[k++] = '\\';
            out[k++] = *s;
        } else if (*s == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
}

static void pool_metrics(struct buf *b)
{
    struct smtp_deliver_pool pools[METRICS_POOLS_MAX];
    size_t n = smtp_deliver_pools(pools, METRICS_POOLS_MAX);
    static const struct {
        const char *name, *help;
    } fam[] = {
        {"mailgate_smtp_pool_size", "Connections each relay's pool may hold (pool=)."},
        {"mailgate_smtp_pool_open", "Pooled SMTP connections open now, per relay."},
        {"mailgate_smtp_pool_busy", "Pooled SMTP connections in a transaction now, per relay."},
    };
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        metric(b, fam[f].name, "gauge", fam[f].help);
        for (size_t i = 0; i < n; i++) {
            char relay[2 * SMTP_DELIVER_POOL_NAME_MAX + 1];
            label_value(pools[i].relay, relay, sizeof(relay));
            int v = f == 0 ? pools[i].size : f == 1 ? pools[i].open : pools[i].busy;
            buf_printf(b, "%s{relay=\"%s\"} %d\n", fam[f].name, relay, v);
        }
    }
}

void gw_metrics(struct gw_req *req, struct gw_resp *resp)
{
    struct buf b;
    buf_init(&b, METRICS_TEXT_MAX);
    struct smtp_deliver_counters dc;
    smtp_deliver_counters_get(&dc);

    /* the message lifecycle, one counter each */
    single(&b, "mailgate_accepted_total", "counter", "Messages accepted (answered 202), batch items included.",
           counter(GW_C_ACCEPTED));
    single(&b, "mailgate_delivered_total", "counter", "Recipients the upstream relay accepted.", dc.delivered);
    single(&b, "mailgate_deferred_total", "counter", "Recipient attempts that failed temporarily (retried).",
           dc.deferred);
    single(&b, "mailgate_bounced_total", "counter", "Recipients bounced (hard, or expired after retries).",
           dc.bounced);
    single(&b, "mailgate_suppressed_total", "counter", "Recipients suppressed at acceptance (never sent).",
           counter(GW_C_SUPPRESSED));
    single(&b, "mailgate_opened_total", "counter", "Opens recorded (machine opens included).",
           counter(GW_C_OPENED));
    single(&b, "mailgate_clicked_total", "counter", "Clicks recorded (machine clicks included).",
           counter(GW_C_CLICKED));

    metric(&b, "mailgate_http_requests_total", "counter", "HTTP requests answered, by status class.");
    for (int c = 1; c <= 5; c++)
        buf_printf(&b, "mailgate_http_requests_total{code=\"%dxx\"} %llu\n", c,
                   (unsigned long long)atomic_load(&http_by_class[c]));
    metric(&b, "mailgate_recipients_total", "counter", "Recipient outcomes recorded by this process's senders.");
    buf_printf(&b, "mailgate_recipients_total{outcome=\"delivered\"} %llu\n", dc.delivered);
    buf_printf(&b, "mailgate_recipients_total{outcome=\"deferred\"} %llu\n", dc.deferred);
    buf_printf(&b, "mailgate_recipients_total{outcome=\"bounced\"} %llu\n", dc.bounced);
    single(&b, "mailgate_smtp_transactions_total", "counter", "SMTP delivery attempts (one per job).", dc.attempts);
    single(&b, "mailgate_smtp_connections_total", "counter", "SMTP connections opened.", dc.connections);
    single(&b, "mailgate_smtp_connect_failures_total", "counter", "SMTP connections that could not be opened.",
           dc.connect_failures);
    single(&b, "mailgate_webhook_deliveries_total", "counter", "Webhook attempts answered 2xx.",
           counter(GW_C_WEBHOOK_OK));
    single(&b, "mailgate_webhook_failures_total", "counter",
           "Webhook attempts that failed (non-2xx, timeout, refused address); each is retried until 24 h.",
           counter(GW_C_WEBHOOK_FAILED));

    const struct hist *txn, *acc;
    smtp_deliver_hists(&txn, &acc);
    hist_write(&h_api, "mailgate_api_request_seconds",
               "Time from a request's arrival to its answer, every route.", NULL, &b);
    hist_write(txn, "mailgate_smtp_transaction_seconds",
               "One SMTP transaction (MAIL FROM to the end of DATA), connection set-up excluded.", NULL, &b);
    hist_write(acc, "mailgate_accepted_to_delivered_seconds",
               "Time from a message's acceptance to a recipient's delivery, retries included.", NULL, &b);

    pool_metrics(&b);

    struct queue_stats st;
    int up = req->q && queue_stats_get(req->q, &st) == 0;
    metric(&b, "mailgate_redis_up", "gauge", "1 when Redis answered this scrape.");
    buf_printf(&b, "mailgate_redis_up %d\n", up);
    if (up) {
        metric(&b, "mailgate_queue_jobs", "gauge", "Jobs in the delivery stream, pending included.");
        buf_printf(&b, "mailgate_queue_jobs %lld\n", st.stream_len);
        metric(&b, "mailgate_queue_pending", "gauge", "Jobs read by a sender and not yet acknowledged.");
        buf_printf(&b, "mailgate_queue_pending %lld\n", st.pending);
        metric(&b, "mailgate_queue_delayed", "gauge", "Retries and scheduled sends waiting for their time.");
        buf_printf(&b, "mailgate_queue_delayed %lld\n", st.delayed);
        metric(&b, "mailgate_queue_dead", "gauge", "Jobs in the dead-letter stream.");
        buf_printf(&b, "mailgate_queue_dead %lld\n", st.dead);
        metric(&b, "mailgate_messages_open", "gauge", "Messages with a recipient not yet in a terminal state.");
        buf_printf(&b, "mailgate_messages_open %lld\n", st.open_messages);
        metric(&b, "mailgate_oldest_open_age_seconds", "gauge",
               "Age of the oldest message with a non-terminal recipient (0 when none).");
        double age = st.oldest_open_ms ? (double)(util_now_ms() - st.oldest_open_ms) / 1000.0 : 0.0;
        buf_printf(&b, "mailgate_oldest_open_age_seconds %.3f\n", age < 0 ? 0.0 : age);
        metric(&b, "mailgate_webhook_backlog", "gauge", "Webhook deliveries due now and not yet claimed.");
        buf_printf(&b, "mailgate_webhook_backlog %lld\n", st.wh_due);
        metric(&b, "mailgate_webhook_pending", "gauge",
               "Webhook deliveries not yet done: due, in flight or waiting for a retry.");
        buf_printf(&b, "mailgate_webhook_pending %lld\n", st.wh_pending);
    }
    resp->status = 200;
    resp->text = buf_steal(&b);
    resp->text_type = "text/plain; version=0.0.4; charset=utf-8";
}
