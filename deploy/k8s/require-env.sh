#!/bin/sh
# Runs the command after "--" only when every variable named before it has a value: a credential
# left empty in nexus-secrets.env must stop the pod, not fall back to something (an empty
# NEXUS_EVENT_LOG_URL would give each replica a SQLite file of its own, an empty NATS password
# would be one anybody could send).
#   sh /etc/nexus/require-env.sh NAME... -- COMMAND ARG...
set -eu
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    "" | [0-9]* | *[!A-Za-z0-9_]*) echo "require-env.sh: $1 is not a variable name" >&2; exit 64 ;;
  esac
  eval "value=\${$1:-}"
  if [ -z "$value" ]; then
    echo "$1 is empty: give it a value in deploy/k8s/nexus-secrets.env (see nexus-secrets.env.example)" >&2
    exit 64
  fi
  shift
done
if [ "$#" -lt 2 ]; then
  echo "require-env.sh: no command after --" >&2
  exit 64
fi
shift
exec "$@"
