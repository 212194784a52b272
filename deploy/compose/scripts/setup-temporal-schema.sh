#!/bin/sh
# Create Temporal's two PostgreSQL databases (persistence and visibility) and
# bring their schemas to the version this admin-tools image ships. Safe to run
# on every `docker compose up` and before every Temporal upgrade:
#   - a database that does not exist yet is created and given the base schema;
#   - `update-schema` then applies only the versions above the current one.
# Needs temporal-sql-tool (the temporalio/admin-tools image has it).
#
# Environment: POSTGRES_SEEDS (host), DB_PORT (5432), POSTGRES_USER,
#              SQL_PASSWORD (read by temporal-sql-tool), DBNAME (temporal),
#              VISIBILITY_DBNAME (temporal_visibility).
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS (PostgreSQL host) is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${SQL_PASSWORD:?SQL_PASSWORD is required}"
PORT="${DB_PORT:-5432}"
SCHEMA_ROOT=/etc/temporal/schema/postgresql/v12

sql_tool() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$PORT" -u "$POSTGRES_USER" "$@"
}

# setup_database NAME SCHEMA_DIR
setup_database() {
  if out=$(sql_tool --db "$1" create 2>&1); then
    echo "schema: created database $1"
    sql_tool --db "$1" setup-schema -v 0.0
  else
    case "$out" in
      *"already exists"*) echo "schema: database $1 exists" ;;
      *) echo "$out" >&2; return 1 ;;
    esac
  fi
  sql_tool --db "$1" update-schema -d "$SCHEMA_ROOT/$2/versioned"
  echo "schema: database $1 is up to date"
}

echo "schema: waiting for PostgreSQL at $POSTGRES_SEEDS:$PORT"
n=0
until nc -z -w 5 "$POSTGRES_SEEDS" "$PORT"; do
  n=$((n + 1))
  if [ "$n" -ge 60 ]; then
    echo "schema: PostgreSQL did not come up" >&2
    exit 1
  fi
  sleep 2
done

setup_database "${DBNAME:-temporal}" temporal
setup_database "${VISIBILITY_DBNAME:-temporal_visibility}" visibility
echo "schema: done"
