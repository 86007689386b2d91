#!/usr/bin/env bash
# The README's first command. On a fresh machine, with no cloud account:
#   1. sets up the machine (apt packages, the venv), builds or reuses the local Debian 12 image and the
#      offline wheelhouse;
#   2. starts three containers with systemd on the podman network pgops-demo (10.213.48.0/24):
#      pgops-demo-db, pgops-demo-store (S3 and GCS emulators), pgops-demo-restore (bare);
#   3. builds the database host with playbooks/site.yml (which also sets up WAL archiving through pgBackRest
#      into the same bucket and takes a first full physical backup), loads pgbench data, backs it up now with
#      playbooks/backup.yml (the same engine and settings the 02:00 cron job uses);
#   4. rebuilds it on the bare container with playbooks/restore.yml, the disaster-recovery playbook;
#   5. compares the two databases and prints a summary, with the current RPO from `pgops status` and what
#      Prometheus (on pgops-demo-store, scraping the database host's exporters) shows.
# The containers stay up for you to explore (inventory/local); `scripts/demo.sh --down` removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CONTAINERS_CONF="$root/molecule/containers.conf"
export PATH="$root/.venv/bin:$PATH" ANSIBLE_CONFIG="$root/ansible.cfg" ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}
network=pgops-demo subnet=10.213.48.0/24
declare -A hosts=([pgops-demo-db]=10.213.48.10 [pgops-demo-store]=10.213.48.20 [pgops-demo-restore]=10.213.48.30)
key=.cache/local-stack/id_ed25519
log=.cache/local-stack/demo.log

down() {
  for h in "${!hosts[@]}"; do podman rm -f -t 5 "$h" >/dev/null 2>&1 || true; done
  podman network rm -f "$network" >/dev/null 2>&1 || true
}
if [ "${1:-}" = "--down" ]; then down; echo "demo: containers and network removed"; exit 0; fi

step() { printf '\ndemo: [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
play() { ansible-playbook -i inventory/local/hosts.yml "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "demo: failed, full log in $log" >&2; exit 1; }; }
t0=$SECONDS

step "machine setup (apt packages, venv)"
./scripts/bootstrap.sh
mkdir -p "$(dirname "$key")"; : >"$log"

step "local image and offline wheelhouse"
molecule/images/build.sh 12
if [ ! -f dist/pgops/constraints.txt ] || [ -n "$(find src pyproject.toml requirements -newer dist/pgops/constraints.txt -print -quit)" ]; then
  ./scripts/build-wheels.sh
fi

step "containers: ${!hosts[*]}"
down
podman network create --subnet "$subnet" "$network" >/dev/null
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key"
for h in "${!hosts[@]}"; do
  # pgBackRest reaches the store by the name its certificate carries.
  podman run -d --name "$h" --hostname "$h" --network "$network" --ip "${hosts[$h]}" --systemd=always \
    --add-host "pgops-demo-store:${hosts[pgops-demo-store]}" \
    --label owner=pgops-demo localhost/pgops-debian:12 /sbin/init >/dev/null
done
for h in "${!hosts[@]}"; do
  podman exec -i "$h" sh -c 'mkdir -p -m 700 /root/.ssh && cat >/root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys' <"$key.pub"
  for _ in $(seq 60); do podman exec "$h" systemctl is-active -q ssh && break; sleep 1; done
done

step "object store (S3 and GCS emulators) on pgops-demo-store"
play playbooks/local-objectstore.yml
# Its CA, for pgBackRest (pgbackrest_repo_ca_file in inventory/local/group_vars/pgops_db.yml).
podman cp pgops-demo-store:/etc/objectstore/tls/ca.crt .cache/local-stack/store-ca.crt
step "playbooks/site.yml: PostgreSQL, scheduled backups, WAL archiving through pgBackRest and the exporters on pgops-demo-db; Prometheus on pgops-demo-store"
play playbooks/site.yml
# The application's tables belong to its owner role (as in production), so the inventory's default
# privileges grant app_rw and app_ro on them.
podman exec -e PGOPTIONS='-c role=app_owner' pgops-demo-db runuser -u postgres -- pgbench -i -q -s 10 appdb >>"$log" 2>&1
step "playbooks/backup.yml: a backup now, to s3://pgops-demo/backups"
play playbooks/backup.yml -l pgops-demo-db -e pgops_backup_reason=demo
step "playbooks/restore.yml: disaster recovery onto the bare pgops-demo-restore"
play playbooks/restore.yml -e pgops_restore_host=pgops-demo-restore -e pgops_restore_from=pgops-demo-db
rto=$(grep -o 'Recovered .* in [0-9.]* s' "$log" | tail -n 1)

step "comparing the source and the restored database"
# Each ACL entry's GRANT lines sorted: their order follows role OIDs, which differ on a new host.
dump() { podman exec "$1" runuser -u postgres -- pg_dump --restrict-key=pgopsdemo -d appdb | python -m tests.fixtures.dumps | cut -c1-16; }
src=$(dump pgops-demo-db) dst=$(dump pgops-demo-restore)
rows=$(podman exec pgops-demo-restore runuser -u postgres -- psql -X -A -t -d appdb -c 'SELECT count(*) FROM pgbench_accounts')
listing=$(podman exec pgops-demo-restore pgops list --target pgops-demo-db)
version=$(podman exec pgops-demo-db runuser -u postgres -- psql -X -A -t -c 'SHOW server_version')
# The current RPO from the one view (pgops status; exit 11 would mean stale, which the line then shows).
rpo=$(podman exec pgops-demo-db runuser -u postgres -- pgops status --json | python -c '
import json, sys
p = json.load(sys.stdin)["physical"]
full = p["newest"].get("full", {}).get("label", "none")
rpo = p["archiver"]["rpo_seconds"] if p["archiver"] else None
state = "ok" if not p["problems"] else "STALE: " + "; ".join(p["problems"])
stanza = p["stanza"]
print(f"{rpo:.0f} s" if rpo is not None else "unknown", f"(stanza {stanza}, newest full {full}, {state})")
') || true

# What Prometheus on the store shows (roles/prometheus scrapes every 5 s here): the exporter's login, the backup just
# taken (node_exporter's textfile collector reads pgops.prom), and the alerts firing. Polled until it has both.
prom_url=http://${hosts[pgops-demo-store]}:9090
prom=$(python - "$prom_url" <<'PY'
import json, sys, time, urllib.parse, urllib.request

base = sys.argv[1]

def query(expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]

line = "not answering"
for _ in range(30):
    try:
        up = query('pg_up{instance="pgops-demo-db"}')
        ok = query('pgops_backup_last_attempt_success{instance="pgops-demo-db"} == 1')
        firing = query('ALERTS{alertstate="firing"}')
    except OSError as e:
        line = f"not answering ({e})"
    else:
        names = sorted({a["metric"]["alertname"] for a in firing})
        line = (f"pg_up {up[0]['value'][1] if up else 'absent'} for pgops-demo-db; last backup ok for"
                f" {len(ok)} of its databases (" + ", ".join(sorted(s["metric"].get("database", "?") for s in ok)) + ");"
                f" alerts firing: {', '.join(names) if names else 'none'}")
        if up and ok:
            break
    time.sleep(2)
print(line)
PY
) || prom="not answering"

cat <<SUMMARY

================================ pgops demo ================================
Built       pgops-demo-db (10.213.48.10): PostgreSQL $version from playbooks/site.yml,
            pgops in /opt/pgops, backups scheduled in /etc/cron.d/pgops
            pgops-demo-store (10.213.48.20): S3 API :9000, GCS API :4443, Prometheus :9090
Backed up   appdb (pgbench scale 10) and the roles to s3://pgops-demo/backups/pgops-demo-db/:
$(sed 's/^/              /' <<<"$listing")
Restored    on pgops-demo-restore (10.213.48.30) by playbooks/restore.yml:
            $rto
Compared    pg_dump of appdb: source $src, restored $dst, $rows rows in pgbench_accounts
RPO now     ${rpo:-unknown}: WAL archived through pgBackRest to s3://pgops-demo/pgbackrest
Prometheus  $prom_url (alerts: $prom_url/alerts): $prom
Result      $([ "$src" = "$dst" ] && echo "MATCHES: the restored data equals the source" || echo "DIFFERS")
Took        $((SECONDS - t0)) s. Log: $log. Explore: ansible -i inventory/local/hosts.yml all -m ping
            Remove: scripts/demo.sh --down
=============================================================================
SUMMARY
[ "$src" = "$dst" ]
