#!/bin/sh
# Register the Avro schemas of schemas/ with a Confluent-compatible Schema
# Registry, under the ids of schemas/manifest.json (every version of each:
# the earlier versions of schemas/history/ too, under their old ids).
#
#   deploy/register-schemas.sh http://127.0.0.1:8081 schemas
#
# Records framed with the manifest's ids (billstream without
# kafka.schema_registry_url, producers that use the manifest) and the
# registry must agree, so missing schemas are registered in IMPORT mode with
# their manifest id; `billstream run` with the registry then looks up those
# same ids. (`billstream schemas register` registers under the same
# subjects but lets the registry choose the ids.) Subjects follow
# TopicRecordNameStrategy, `<topic>-<record full name>`, because most topics
# carry several record types; a topic with a single record type also gets
# `<topic>-value` (TopicNameStrategy). Idempotent: a schema already under
# its subject with the right id is left alone; a different id stops the
# script (the registry's ids and billstream's would disagree).
#
# Needs curl and jq (1.6 or later).
set -eu

usage="usage: register-schemas.sh REGISTRY_URL SCHEMAS_DIR"
registry="${1:?$usage}"
dir="${2:?$usage}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# call METHOD PATH [BODY]: the response body on stdout; status 0 on 2xx,
# 1 on 404, 2 (with a message) on anything else.
call() {
  code=$(curl -sS -o "$work/body" -w '%{http_code}' -X "$1" \
    -H "Content-Type: application/vnd.schemaregistry.v1+json" \
    ${3:+--data-binary "$3"} "$registry$2") || return 2
  case "$code" in
    2??) cat "$work/body"; return 0 ;;
    404) return 1 ;;
    *) echo "register-schemas: $1 $2 answered $code: $(cat "$work/body")" >&2; return 2 ;;
  esac
}

schema_body() { # FILE [ID VERSION]
  if [ $# -eq 1 ]; then
    jq -n --rawfile s "$dir/$1" '{schema: ($s | fromjson | tojson)}'
  else
    jq -n --rawfile s "$dir/$1" --argjson id "$2" --argjson v "$3" \
      '{schema: ($s | fromjson | tojson), id: $id, version: $v}'
  fi
}

# One line per subject and schema version: subject, id, file. A schema's
# earlier versions (its `history`, schemas/history/) come first, oldest
# first, so that their manifest ids resolve through the registry too and
# the subject's versions stay in order.
jq -r '
  (.schemas | group_by(.topic) | map(select(length == 1) | .[0].topic)) as $single
  | .schemas[]
  | . as $e
  | ((.history // []) + [{id: .id, file: .file}])[]
  | "\($e.topic)-\($e.name) \(.id) \(.file)",
    (select($e.topic as $t | $single | index($t)) | "\($e.topic)-value \(.id) \(.file)")
' "$dir/manifest.json" > "$work/all"
: > "$work/todo"

while read -r subject id file; do
  st=0
  found=$(call POST "/subjects/$subject" "$(schema_body "$file")") || st=$?
  case "$st" in
    0)
      have=$(printf '%s' "$found" | jq -r .id)
      if [ "$have" != "$id" ]; then
        echo "register-schemas: $subject holds $file as id $have, the manifest says $id" >&2
        exit 1
      fi
      echo "register-schemas: $subject: id $id, already registered" ;;
    1) echo "$subject $id $file" >> "$work/todo" ;;
    *) exit 1 ;;
  esac
done < "$work/all"

if [ ! -s "$work/todo" ]; then
  echo "register-schemas: all $(wc -l < "$work/all") subjects registered"
  exit 0
fi

# IMPORT mode takes a schema under a chosen id; force=true because the
# registry may already hold other schemas (a rerun, other producers).
call PUT "/mode?force=true" '{"mode": "IMPORT"}' > /dev/null || exit 1
trap 'call PUT /mode "{\"mode\": \"READWRITE\"}" > /dev/null; rm -rf "$work"' EXIT
while read -r subject id file; do
  st=0
  versions=$(call GET "/subjects/$subject/versions") || st=$?
  case "$st" in
    0) version=$(printf '%s' "$versions" | jq 'max + 1') ;;
    1) version=1 ;;
    *) exit 1 ;;
  esac
  reply=$(call POST "/subjects/$subject/versions" "$(schema_body "$file" "$id" "$version")") || exit 1
  got=$(printf '%s' "$reply" | jq -r .id)
  if [ "$got" != "$id" ]; then
    echo "register-schemas: $subject was registered as id $got, expected $id" >&2
    exit 1
  fi
  echo "register-schemas: $subject: id $id registered (version $version)"
done < "$work/todo"
