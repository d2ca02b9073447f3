#!/bin/sh
# Runs once, when the PostgreSQL volume is new: the role the services connect as. It gets its
# rights from `ledgerci migrate --grant ledgerci_app` (run by the owner), which lets it read and
# append events but never change or delete them.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set app_password="$LEDGERCI_APP_DB_PASSWORD" <<'SQL'
CREATE ROLE ledgerci_app LOGIN PASSWORD :'app_password';
SQL
