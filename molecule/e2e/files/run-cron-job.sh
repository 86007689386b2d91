#!/bin/sh
# Run one job of a cron.d file exactly as cron runs it: the line's own command, as the line's user, with
# cron's environment (the file's SHELL and PATH, HOME and LOGNAME from passwd, nothing else), through
# "$SHELL -c", from the user's home directory. Exits with the job's status.
#   run-cron-job.sh /etc/cron.d/pgops backup
set -eu
file=$1 job=$2
line=$(awk -v marker="# $job" 'found { print; exit } $0 == marker { found = 1 }' "$file")
[ -n "$line" ] || { echo "run-cron-job: no job '$job' in $file" >&2; exit 2; }
user=$(printf '%s\n' "$line" | awk '{ print $6 }')
cmd=$(printf '%s\n' "$line" | cut -d' ' -f7-)
shell=$(sed -n 's/^SHELL=//p' "$file"); shell=${shell:-/bin/sh}
path=$(sed -n 's/^PATH=//p' "$file"); path=${path:-/usr/bin:/bin}
home=$(getent passwd "$user" | cut -d: -f6)
echo "run-cron-job: as $user: $cmd" >&2
cd "$home"
exec runuser -u "$user" -- env -i HOME="$home" LOGNAME="$user" USER="$user" SHELL="$shell" PATH="$path" "$shell" -c "$cmd"
