#!/usr/bin/env bash
# One-time Garage set-up for compose.yaml: give the single node a role in the cluster layout,
# import the access key from .env, create the `fhirvault` bucket and let the key use it.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . ./.env; set +a
garage() { docker compose exec -T garage /garage "$@"; }

node=$(garage node id -q | cut -d@ -f1)
garage layout assign -z dc1 -c 10G "$node"
garage layout apply --version 1
garage key import --yes -n fhirvault "$GARAGE_KEY_ID" "$GARAGE_SECRET_KEY"
garage bucket create fhirvault
garage bucket allow --read --write --owner fhirvault --key fhirvault
