#!/bin/bash
# Prepare the backup runner like roles/postgresql_backup prepares a host, then run CMD (cron -f):
# - /etc/pgops/pgops.env from the container's PGOPS_* variables (mode 0600, owner postgres), checked
#   with `pgops check --settings-only` as the role's validate: does. cron jobs see only this file: cron
#   does not pass the container's environment on to them.
# - /etc/cron.d/pgops with the role's jobs and command lines. The schedules are the role's defaults unless
#   CRON_BACKUP, CRON_RETENTION, CRON_VERIFY or CRON_RESTORE_TEST (five cron fields) say otherwise;
#   an empty value leaves that job out.
set -euo pipefail
user=postgres
bin=/opt/pgops/venv/bin/pgops
env_file=/etc/pgops/pgops.env
log_dir=/var/log/pgops

umask 077
tmp=$(mktemp /etc/pgops/.pgops.env.XXXXXX)
{
  echo "# Written by the runner's entrypoint from the container's PGOPS_* variables. Mode 0600: it may hold secrets."
  for name in $(compgen -e | grep '^PGOPS_' | sort); do
    value=${!name//\\/\\\\}
    printf "%s='%s'\n" "$name" "${value//\'/\\\'}"
  done
} >"$tmp"
chown "$user:$user" "$tmp"
chmod 0600 "$tmp"
mv "$tmp" "$env_file"
if ! out=$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin runuser -u "$user" -- "$bin" check --settings-only --env-file "$env_file" 2>&1); then
  echo "pgops-runner: $env_file is not valid:" >&2
  echo "$out" >&2
  exit 2
fi

umask 022
declare -A when=(
  [backup]=${CRON_BACKUP-0 2 * * *}
  [restore_test]=${CRON_RESTORE_TEST-30 5 1 * *}
  [retention]=${CRON_RETENTION-30 4 * * *}
  [verify]=${CRON_VERIFY-0 5 * * 0}
)
declare -A command=([backup]=backup [restore_test]="verify --restore-test" [retention]=retention [verify]=verify)
tmp=$(mktemp /etc/cron.d/.pgops.XXXXXX)
{
  echo "# Written by the runner's entrypoint: the jobs of roles/postgresql_backup's /etc/cron.d/pgops. Each appends"
  echo "# to $log_dir/<job>.log; success and failure also show in /var/lib/pgops/metrics/pgops.prom."
  echo "SHELL=/bin/sh"
  echo "PATH=/usr/local/bin:/usr/bin:/bin"
  for job in backup restore_test retention verify; do
    [ -n "${when[$job]}" ] || continue
    echo "# $job"
    echo "${when[$job]} $user $bin ${command[$job]} --env-file $env_file >>$log_dir/${job//_/-}.log 2>&1"
  done
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" /etc/cron.d/pgops
echo "pgops-runner: $env_file and /etc/cron.d/pgops written; storage ${PGOPS_STORAGE_URL:-}"
exec "$@"
