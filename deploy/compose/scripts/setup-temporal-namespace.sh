#!/bin/sh
# Create billow's Temporal namespace and register its custom search
# attributes. Idempotent: run it on every `docker compose up` (and from the
# Kubernetes Job in deploy/k8s/temporal-setup-job.yaml, which carries a copy).
#
# Needs the `temporal` CLI (the temporalio/admin-tools image has it).
#
# Environment:
#   TEMPORAL_ADDRESS              frontend host:port        (default temporal:7233)
#   BILLOW_TEMPORAL_NAMESPACE     namespace to set up       (default billow)
#   TEMPORAL_NAMESPACE_RETENTION  closed-workflow retention (default 30d)
#   SETUP_ATTEMPTS, SETUP_SLEEP   retry budget              (default 60 x 2 s)
set -eu

ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"
NAMESPACE="${BILLOW_TEMPORAL_NAMESPACE:-billow}"
RETENTION="${TEMPORAL_NAMESPACE_RETENTION:-30d}"
ATTEMPTS="${SETUP_ATTEMPTS:-60}"
SLEEP="${SETUP_SLEEP:-2}"

# Name=Type pairs. Keep in sync with workflows/search_attributes.py
# (tests/deploy/test_temporal_setup.py checks that they match).
SEARCH_ATTRIBUTES="CustomerId=Keyword PlanKey=Keyword ContractStatus=Keyword BillingCycle=Keyword NextBillingAt=Datetime HasOverdueInvoice=Bool CreditBalance=Double CommitmentShortfall=Double"

# retry DESCRIPTION COMMAND...: run COMMAND until it succeeds or attempts run out.
retry() {
  what="$1"
  shift
  n=1
  until "$@"; do
    if [ "$n" -ge "$ATTEMPTS" ]; then
      echo "setup: giving up on: $what (after $n attempts)" >&2
      return 1
    fi
    echo "setup: waiting for: $what (attempt $n/$ATTEMPTS)" >&2
    n=$((n + 1))
    sleep "$SLEEP"
  done
}

healthy() {
  temporal operator cluster health --address "$ADDRESS" >/dev/null 2>&1
}

ensure_namespace() {
  temporal operator namespace describe --address "$ADDRESS" --namespace "$NAMESPACE" \
    >/dev/null 2>&1 && return 0
  temporal operator namespace create --address "$ADDRESS" --namespace "$NAMESPACE" \
    --retention "$RETENTION"
}

# has_attribute NAME: is NAME registered in the namespace already?
has_attribute() {
  temporal operator search-attribute list --address "$ADDRESS" --namespace "$NAMESPACE" \
    --output json | grep -q "\"$1\""
}

ensure_attribute() {
  has_attribute "$1" && return 0
  temporal operator search-attribute create --address "$ADDRESS" --namespace "$NAMESPACE" \
    --name "$1" --type "$2"
}

retry "Temporal at $ADDRESS to be healthy" healthy
retry "namespace $NAMESPACE" ensure_namespace
echo "setup: namespace $NAMESPACE is ready"

for pair in $SEARCH_ATTRIBUTES; do
  name="${pair%%=*}"
  type="${pair#*=}"
  retry "search attribute $name ($type)" ensure_attribute "$name" "$type"
  echo "setup: search attribute $name ($type) is registered"
done
echo "setup: done"
