#!/bin/bash
# Start PostgreSQL in the foreground. On the first start (no cluster in the volume yet) create the
# cluster, let TCP clients in with a password (POSTGRES_PASSWORD, scram-sha-256) and load the demo
# database. The cluster is built in pgdata.init and renamed to pgdata only when all of that succeeded,
# so a start that fails half way is simply repeated from scratch the next time.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD: the password of the postgres role for TCP clients}"
demo_sql=${PGOPS_DEMO_SQL:-/usr/local/share/pgops-demo/demo.sql}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init="$PGDATA.init"
  rm -rf "$init"
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$init" --username=postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  trap - EXIT
  cat >>"$init/postgresql.conf" <<'CONF'

# pgops compose stack
listen_addresses = '*'
unix_socket_directories = '/var/run/postgresql'
log_line_prefix = '%m [%p] %q%u@%d '
CONF
  cat >>"$init/pg_hba.conf" <<'HBA'
# pgops compose stack: the other containers of the stack, with a password
host    all             all             0.0.0.0/0               scram-sha-256
host    all             all             ::/0                    scram-sha-256
HBA
  # Load the demo with a server that listens on its socket only, so the health check (TCP) fails until
  # the final server below is up.
  pg_ctl --pgdata="$init" --options="-c listen_addresses=''" --wait --silent start
  psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres --file="$demo_sql" >/dev/null
  pg_ctl --pgdata="$init" --mode=fast --wait --silent stop
  mv "$init" "$PGDATA"
  echo "pgops-postgres: created the cluster and loaded $demo_sql"
fi
exec postgres -D "$PGDATA"
