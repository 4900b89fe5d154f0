#!/usr/bin/env python3
"""What record headers cost a producer on a broker (BENCHMARKS.md, "id
headers"): produces N records of SIZE bytes, keyed over 10,000 accounts,
through an idempotent producer (acks=all, linger.ms=5, as billstream's
sink) to a new 4-partition topic, with HEADERS of billstream's id headers
(0, 1 = event_id, 2 = event_id and causation_id, 36 bytes each), and prints
records/s. Extra librdkafka properties as key=value arguments.

  python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install confluent-kafka
  /tmp/kvenv/bin/python scripts/produce-headers.py 127.0.0.1:9092 100000 310 2
"""
import os
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

brokers, n, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
extra = dict(kv.split("=", 1) for kv in sys.argv[5:])
topic = f"produce-headers-{os.getpid()}-{size}-{count}"
admin = AdminClient({"bootstrap.servers": brokers})
for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
    f.result()
conf = {"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
conf.update(extra)
producer = Producer(conf)
payload = b"x" * size
headers = [("event_id", b"e" * 36), ("causation_id", b"c" * 36)][:count] or None
started = time.time()
for i in range(n):
    while True:
        try:
            producer.produce(topic, key=b"acct-%06d" % (i % 10000), value=payload, headers=headers)
            break
        except BufferError:
            producer.poll(0.01)
    if i % 1000 == 0:
        producer.poll(0)
producer.flush()
took = time.time() - started
print(f"size={size} headers={count} {extra} {n / took:,.0f} records/s {n * size / took / 1e6:.1f} MB/s")
