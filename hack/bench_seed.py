"""Seeds the benchmark data fast: AMQP publishing (pika, one process per core) and etcd
transactions of 128 puts through etcd's JSON gateway. Also seeds survivors that every contender
must leave alone: the queue bench-keep, and keys under bench/monorepo-keep/ and /registry/bench/.

usage: bench_seed.py QUEUES MESSAGES_TOTAL KEYS
"""

import base64
import json
import multiprocessing
import os
import sys
import urllib.request

import pika

AMQP_PORT = int(os.environ.get("CSTEST_AMQP_PORT", "5682"))
USER = os.environ["CSTEST_RABBITMQ_USERNAME"]
PASSWORD = os.environ["CSTEST_RABBITMQ_PASSWORD"]
ETCD = os.environ["CSTEST_ETCD_ENDPOINT"]
BODY = b'{"game":"stale","moves":["e4","e5","Nf3"]}'
SURVIVOR_MESSAGES = 100
SURVIVOR_KEYS = 100


def channel():
    credentials = pika.PlainCredentials(USER, PASSWORD)
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", AMQP_PORT, credentials=credentials))
    return connection, connection.channel()


def publish(job):
    queues, per_queue = job
    connection, ch = channel()
    for queue in queues:
        for _ in range(per_queue):
            ch.basic_publish("", queue, BODY)
    connection.close()


def etcd_put_all(keys):
    for start in range(0, len(keys), 128):
        ops = [
            {"requestPut": {"key": base64.b64encode(k.encode()).decode(), "value": base64.b64encode(b"v").decode()}}
            for k in keys[start : start + 128]
        ]
        request = urllib.request.Request(f"{ETCD}/v3/kv/txn", data=json.dumps({"success": ops}).encode(), method="POST")
        with urllib.request.urlopen(request) as response:
            response.read()


def main():
    queues_count, messages, keys = (int(a) for a in sys.argv[1:4])
    queues = [f"bench-q{i:04d}" for i in range(queues_count)]
    connection, ch = channel()
    for queue in queues + ["bench-keep"]:
        ch.queue_declare(queue, durable=True)
    connection.close()
    per_queue = messages // queues_count
    workers = max(1, os.cpu_count() or 1)
    jobs = [(queues[i::workers], per_queue) for i in range(workers)] + [(["bench-keep"], SURVIVOR_MESSAGES)]
    with multiprocessing.Pool(len(jobs)) as pool:
        pool.map(publish, jobs)
    etcd_put_all([f"bench/monorepo/game/{i:07d}" for i in range(keys)])
    etcd_put_all([f"bench/monorepo-keep/{i:04d}" for i in range(SURVIVOR_KEYS)])
    etcd_put_all([f"/registry/bench/{i:04d}" for i in range(SURVIVOR_KEYS)])


if __name__ == "__main__":
    main()
