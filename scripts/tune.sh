#!/usr/bin/env bash
# Applies sysctl/99-roomcast.conf (as root) and installs sysctl/limits.conf, or with
# --check only compares: prints one line per setting that falls short of what a million
# connections need, and exits non-zero if any does.
#
#   sudo scripts/tune.sh          apply (sysctls now and at boot, limits for new sessions)
#   scripts/tune.sh --check       verify, change nothing
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
[ "${1:-}" = "--check" ] && check=1
conf=sysctl/99-roomcast.conf
short=0

# key = value lines, comments and blanks skipped.
while IFS='=' read -r key value; do
  key=$(echo "$key" | xargs)
  value=$(echo "$value" | xargs)
  [ -z "$key" ] && continue
  path="/proc/sys/${key//.//}"
  if [ ! -e "$path" ]; then
    echo "skip  $key (not on this kernel: module not loaded)"
    continue
  fi
  current=$(xargs <"$path")
  # Counts are minimums: more is fine. Lists (port range, tcp_mem, …) compare field by
  # field; switches (io_uring_disabled, tcp_tw_reuse) must be exactly as wanted.
  ok=1
  if [ "$key" = "kernel.io_uring_disabled" ] || [ "$key" = "net.ipv4.tcp_tw_reuse" ]; then
    [ "$current" = "$value" ] || ok=0
  elif [ "$key" = "net.ipv4.ip_local_port_range" ]; then
    read -r want_lo want_hi <<<"$value"
    read -r cur_lo cur_hi <<<"$current"
    [ $((cur_hi - cur_lo)) -ge $((want_hi - want_lo)) ] || ok=0
  elif [[ "$key" == net.ipv4.tcp_[rw]mem ]]; then
    # Smaller per-socket defaults are the point: only the max must be at least as large.
    [ "$(echo "$current" | awk '{print $3}')" -ge "$(echo "$value" | awk '{print $3}')" ] || ok=0
  else
    read -r -a want <<<"$value"
    read -r -a cur <<<"$current"
    for i in "${!want[@]}"; do
      [ "${cur[$i]:-0}" -ge "${want[$i]}" ] || ok=0
    done
  fi
  if [ "$ok" = 1 ]; then
    [ "$check" = 1 ] && echo "ok    $key = $current"
    continue
  fi
  if [ "$check" = 1 ]; then
    echo "SHORT $key = $current (want $value)"
    short=1
  elif echo "$value" >"$path" 2>/dev/null; then
    echo "set   $key = $value (was $current)"
  else
    echo "FAIL  $key: cannot write $path (root? inside a container?)"
    short=1
  fi
done < <(grep -v '^\s*#' "$conf" | grep '=')

# The open-file limit of the shell that will start roomcast.
want_nofile=1048576
cur_nofile=$(ulimit -Hn)
if [ "$cur_nofile" != unlimited ] && [ "$cur_nofile" -lt "$want_nofile" ]; then
  echo "SHORT RLIMIT_NOFILE (hard) = $cur_nofile (want $want_nofile: sysctl/limits.conf, or LimitNOFILE= in sysctl/roomcast.service)"
  short=1
else
  [ "$check" = 1 ] && echo "ok    RLIMIT_NOFILE (hard) = $cur_nofile"
fi

if [ "$check" = 0 ]; then
  if [ -w /etc/sysctl.d ]; then
    cp "$conf" /etc/sysctl.d/99-roomcast.conf && echo "installed /etc/sysctl.d/99-roomcast.conf"
  fi
  if [ -w /etc/security/limits.d ] || mkdir -p /etc/security/limits.d 2>/dev/null; then
    cp sysctl/limits.conf /etc/security/limits.d/99-roomcast.conf &&
      echo "installed /etc/security/limits.d/99-roomcast.conf (new sessions)"
  fi
fi
exit "$short"
