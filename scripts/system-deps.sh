#!/usr/bin/env bash
# Install the Debian packages that some tests compare Governor with (promtool and
# prometheus for the metrics and burn-rate checks, alertmanager). Only as root (CI);
# otherwise print what is missing: the affected tests skip and name the package.
set -u
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "warning: could not install ${need[*]}; tests that need them will skip"
  # Debian starts the services on install; tests run their own instances.
  for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
    command -v systemctl >/dev/null 2>&1 && systemctl stop "$svc" >/dev/null 2>&1
    pkill -x "$svc" >/dev/null 2>&1 || true
  done
else
  echo "not root: tests needing ${need[*]} will skip (install those Debian packages to run them)"
fi
exit 0
