#!/bin/sh
# The one-shot set-up of docker-compose.yml (service billstream-init), run
# once Kafka, ScyllaDB and the Schema Registry are healthy; every step is
# idempotent, so `docker compose up` may run it again.
#   1. the topics of the configuration (BILLSTREAM_PARTITIONS each);
#   2. the ScyllaDB keyspace and tables (`billstream migrate`);
#   3. the Avro schemas of schemas/, under their manifest ids, in the
#      registry at SCHEMA_REGISTRY_URL (billstream run looks them up there;
#      producers and consumers may use either the manifest or the registry).
# Configuration comes from the same BILLSTREAM__… variables as the processor.
set -eu

share=/usr/local/share/billstream
billstream topics create --partitions "${BILLSTREAM_PARTITIONS:-6}" --replication 1
billstream migrate
"$share/register-schemas.sh" "${SCHEMA_REGISTRY_URL:?set SCHEMA_REGISTRY_URL}" "$share/schemas"
echo "billstream-init: done"
