# docker/smtp-capture.Dockerfile - a development SMTP capture server.
#
# Debian 12 slim plus python3-aiosmtpd (the same server `make run` and the
# tests use): accepts every message on port 2525, without TLS or auth, and
# files it in the maildir /var/mail/capture (new/ holds one file per
# message). For development only: it never relays anything anywhere.
#
#   docker compose -f docker/compose.yml exec smtp-capture ls /var/mail/capture/new
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-aiosmtpd \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 capture \
 && useradd --system --uid 10002 --gid 10002 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin capture \
 && mkdir -p /var/mail/capture/tmp /var/mail/capture/new /var/mail/capture/cur \
 && chown -R capture:capture /var/mail/capture
USER 10002:10002
EXPOSE 2525
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 2525), 2).close()"]
ENTRYPOINT ["python3", "-m", "aiosmtpd", "-n"]
CMD ["-u", "-l", "0.0.0.0:2525", "-c", "aiosmtpd.handlers.Mailbox", "/var/mail/capture"]
