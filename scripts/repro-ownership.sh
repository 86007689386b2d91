#!/bin/bash
# Issue 10 before/after: a second cluster on the same target, restore of "latest", and an operator's file under
# the target vs retention. Run from the repo root after scripts/bootstrap.sh, as root (clusters run as postgres):
#   scripts/repro-ownership.sh src                     # this checkout
#   git archive <old commit> src | tar -x -C /tmp/old && scripts/repro-ownership.sh /tmp/old/src
set -u
SRC=$(realpath "${1:-src}"); W=$(mktemp -d /tmp/repro.XXXX); chmod 755 $W; chown postgres $W
PY=$(pwd)/.venv/bin/python
export PYTHONPATH=$SRC
mkc(){ su postgres -c "/usr/lib/postgresql/15/bin/initdb -D $W/$1 -A trust >/dev/null && /usr/lib/postgresql/15/bin/pg_ctl -D $W/$1 -o '-k $W -p $2 -c listen_addresses=' -l $W/$1.log start >/dev/null"; }
mkc a 5601; mkc b 5602
touch $W/env; export PGOPS_ENV_FILE=$W/env PGOPS_STORAGE_URL=file://$W/store PGOPS_TARGET=t PGOPS_LOCK_DIR=$W/lock PGOPS_PG_BINDIR=/usr/lib/postgresql/15/bin
mkdir -p $W/store
for c in a:5601 b:5602; do n=${c%%:*}; p=${c##*:}; psql -h $W -p $p -U postgres -qc "create database app" ; psql -h $W -p $p -U postgres -d app -qc "create table t(v text); insert into t values ('cluster $n')"; done
PGOPS_PG_CONNINFO="host=$W port=5601 user=postgres" $PY -m pgops backup --databases app >/dev/null 2>&1; echo "backup A: $?"
sleep 1.2
PGOPS_PG_CONNINFO="host=$W port=5602 user=postgres" $PY -m pgops backup --databases app > /dev/null 2>$W/b.err; echo "backup B (other cluster, same target): $? $(grep -o 'level=error.*' $W/b.err | cut -c1-160)"
PGOPS_PG_CONNINFO="host=$W port=5601 user=postgres" $PY -m pgops restore --database app --target-db latest >/dev/null 2>&1; echo "restore latest on A gives: $(psql -h $W -p 5601 -U postgres -d latest -Atc 'select v from t' 2>/dev/null)"
mkdir -p $W/store/t/archive/2023 && echo x > $W/store/t/archive/2023/old.sql && touch -d '400 days ago' $W/store/t/archive/2023/old.sql
PGOPS_PG_CONNINFO="host=$W port=5601 user=postgres" $PY -m pgops retention >/dev/null 2>&1
echo "operator's t/archive/2023/old.sql after retention: $(test -f $W/store/t/archive/2023/old.sql && echo kept || echo DELETED)"
for d in a b; do su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $W/$d stop -m immediate" >/dev/null; done
rm -rf $W
