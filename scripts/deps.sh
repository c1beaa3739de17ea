#!/bin/sh
# deps.sh - install what mailgate needs to build, run and test, from Debian 12.
#
# Idempotent: asks dpkg which packages are missing and installs only those,
# so a second run on a ready machine takes well under a second.
# Postfix is preseeded to "No configuration": we only want its smtp-sink and
# smtp-source tools, never a running MTA.
set -eu

PKGS="build-essential pkg-config ca-certificates openssl
libmicrohttpd-dev libjansson-dev libssl-dev libhiredis-dev libcurl4-openssl-dev
libidn2-dev zlib1g-dev libcmocka-dev clang redis-server redis-tools postfix
python3 python3-pytest python3-requests python3-aiosmtpd python3-dkim
python3-cryptography python3-yaml python3-nacl python3-jsonschema wrk"

missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
        "install ok installed") ;;
        *) missing="$missing $p" ;;
    esac
done
# Node.js (>= 18) and npm run the official provider clients in
# tests/compat. Any installation will do (Debian's, or NodeSource's nodejs
# that bundles npm and conflicts with Debian's npm package), so look for
# the commands rather than the packages.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "deps.sh: missing packages:$missing (run as root to install)" >&2
        exit 1
    fi
fi
echo "deps.sh: installing:$missing" >&2
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# The postfix package may start its daemon on some images; we never want it.
if command -v postfix >/dev/null 2>&1; then $SUDO postfix stop >/dev/null 2>&1 || true; fi
# Debian's redis-server package may start a system instance on 6379; tests
# and `make run` start their own under var/, so stop it to free the port.
if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
exit 0
