#!/bin/sh
# Start the local PostgreSQL 15 cluster and make the role and database the
# postgres store tests use. Idempotent: safe to run again on a running,
# already-configured cluster. Run as root on Debian with postgresql-15 from
# apt. Everything goes to stderr except one line on stdout:
#
#   export SECTUN_TEST_POSTGRES_DSN=postgres://sectun:...@127.0.0.1:5432/sectun?sslmode=disable
#
# so a shell can do:  eval "$(sh .ci/postgres-setup.sh)"
#
# Environment: PGVERSION (15), PGCLUSTER (main), PGPORT (5432),
# SECTUN_PG_PASSWORD (sectun; test-only credentials on a loopback cluster).
#
# Not needed by CI or "go test": without the variable the tests start a
# throwaway cluster of their own (internal/testing/pgtest). This script is
# for pointing them at a long-lived cluster instead. The role gets CREATEDB
# for pgtest.Database.
set -eu

ver=${PGVERSION:-15}
cluster=${PGCLUSTER:-main}
port=${PGPORT:-5432}
password=${SECTUN_PG_PASSWORD:-sectun}

log() { echo "postgres-setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "must run as root (it starts the cluster and switches to the postgres user)"
	exit 1
fi
case $password in
*[!A-Za-z0-9_-]*)
	log "SECTUN_PG_PASSWORD may hold only letters, digits, '_' and '-'"
	exit 1
	;;
esac

if ! pg_lsclusters -h "$ver" "$cluster" >/dev/null 2>&1; then
	log "creating cluster $ver/$cluster on port $port"
	pg_createcluster --port "$port" "$ver" "$cluster" >&2
fi

# pg_lsclusters -h prints: version cluster port status owner datadir logfile
status=$(pg_lsclusters -h "$ver" "$cluster" | awk '{print $4}')
case $status in
online*) log "cluster $ver/$cluster already running" ;;
*)
	log "starting cluster $ver/$cluster"
	pg_ctlcluster "$ver" "$cluster" start >&2
	;;
esac
port=$(pg_lsclusters -h "$ver" "$cluster" | awk '{print $3}')

# Wait (at most 30 s) until it accepts TCP connections on loopback.
i=0
until pg_isready -q -h 127.0.0.1 -p "$port"; do
	i=$((i + 1))
	if [ "$i" -ge 60 ]; then
		log "cluster did not become ready on 127.0.0.1:$port within 30 s"
		exit 1
	fi
	sleep 0.5
done

psql_admin() {
	runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"
}

psql_admin -d postgres >&2 <<SQL
DO \$\$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sectun') THEN
		CREATE ROLE sectun LOGIN;
	END IF;
END
\$\$;
ALTER ROLE sectun WITH LOGIN CREATEDB PASSWORD '$password';
SQL

if [ "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sectun'")" != 1 ]; then
	log "creating database sectun"
	psql_admin -d postgres -c "CREATE DATABASE sectun OWNER sectun" >&2
fi
# The tests create and drop one schema per run: the role needs CREATE on the
# database (it owns it, but make that explicit for databases made elsewhere).
psql_admin -d postgres -c "GRANT ALL ON DATABASE sectun TO sectun" >&2

echo "export SECTUN_TEST_POSTGRES_DSN='postgres://sectun:$password@127.0.0.1:$port/sectun?sslmode=disable'"
