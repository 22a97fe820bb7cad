#!/usr/bin/env bash
# Make sure the real services the tests talk to answer: PostgreSQL (127.0.0.1:5432) and
# Mosquitto (127.0.0.1:1883), plus Debian's chromium for the browser tests. On the project's
# CI machines they already run; elsewhere we install (apt-get, as root) and start them.
# Without root we only report: the tests that need a missing service then skip with a reason.
set -u
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
updated=0
apt_install() {
  can_install || { echo "ensure-services: $* missing and not root; dependent tests will skip"; return 1; }
  if [ $updated = 0 ]; then apt-get update -qq >/dev/null && updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! answers 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  if command -v pg_ctlcluster >/dev/null; then
    ver=$(ls /etc/postgresql | head -1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
    for _ in $(seq 30); do answers 5432 && break; sleep 1; done
    # trust auth for local TCP, and the `test` database the suite uses
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"; pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
    fi
    su postgres -c "psql -tc \"select 1 from pg_database where datname='test'\" | grep -q 1 || createdb test" 2>/dev/null || true
  fi
fi
answers 5432 && echo "ensure-services: PostgreSQL answers on 5432" || echo "ensure-services: PostgreSQL not reachable"

if ! answers 1883; then
  command -v mosquitto >/dev/null || apt_install mosquitto
  if command -v mosquitto >/dev/null; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf 2>/dev/null || mosquitto -d -p 1883
    for _ in $(seq 20); do answers 1883 && break; sleep 0.5; done
  fi
fi
answers 1883 && echo "ensure-services: Mosquitto answers on 1883" || echo "ensure-services: Mosquitto not reachable"

if [ ! -x /usr/bin/chromium ]; then apt_install chromium || true; fi
[ -x /usr/bin/chromium ] && echo "ensure-services: chromium at /usr/bin/chromium" || echo "ensure-services: chromium missing"
exit 0
