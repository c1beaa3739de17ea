/*
 * log.c - structured JSON log lines (see log.h).
 */
#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"

#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

static enum log_level log_min = LOG_INFO;

/* Lines held by this thread between log_hold and log_release. */
/* bytes held before they are written anyway: at most PIPE_BUF, so that
 * one write(2) of held lines stays whole on a pipe (docker, systemd) */
#define LOG_HOLD_MAX PIPE_BUF
static _Thread_local struct buf held;
static _Thread_local int held_on;

static void log_flush_held(void)
{
    if (held.len) {
        ssize_t w = write(STDERR_FILENO, held.data, held.len);
        (void)w;
        buf_reset(&held);
    }
}
static const char *log_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    log_min = level;
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, log_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

/* log_quote - append s as a JSON string, capped and without control bytes. */
static void log_quote(struct buf *b, const char *s)
{
    size_t n = 0;
    buf_putc(b, '"');
    for (; *s && n < LOG_VALUE_MAX; s++, n++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)c);
        } else if (c < 0x20 || c == 0x7f) {
            buf_putc(b, ' ');
        } else {
            buf_putc(b, (char)c);
        }
    }
    if (*s)
        buf_puts(b, "...");
    buf_putc(b, '"');
}

void log_kv(enum log_level level, const char *event, ...)
{
    if (level < log_min)
        return;
    struct buf b;
    char ts[40];
    buf_init(&b, 64 * 1024);
    util_rfc3339(util_now_ms(), ts, sizeof(ts));
    buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts, log_names[level]);
    log_quote(&b, event);
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (!v)
            continue;
        buf_putc(&b, ',');
        log_quote(&b, k);
        buf_putc(&b, ':');
        log_quote(&b, v);
    }
    va_end(ap);
    buf_puts(&b, "}\n");
    if (b.data && held_on && held.len + b.len <= LOG_HOLD_MAX) {
        buf_append(&held, b.data, b.len);
    } else if (b.data) {
        log_flush_held();
        ssize_t w = write(STDERR_FILENO, b.data, b.len);
        (void)w;
    }
    buf_free(&b);
}

void log_hold(void)
{
    held_on = 1;
}

void log_release(void)
{
    log_flush_held();
    buf_free(&held); /* nothing stays allocated in a thread that may end */
    held_on = 0;
}
