"""Seeds a shared vhost the way a platform team's broker looks: QUEUES application queues under one
vhost-wide dead-letter policy (no routing key: dead letters keep their keys) to a topic exchange
`dlx`, and TEAMS team dead-letter queues bound to it by wildcards (`teamT.#`); queue `appN` is bound
to the application exchange `events` with `teamT.appN` (T = N % TEAMS). All in one definitions
import (one request).

usage: bench_shared.py VHOST QUEUES TEAMS
"""

import base64
import http.client
import json
import time
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

URL = os.environ["CSTEST_RABBITMQ_URL"]
AUTH = base64.b64encode(f'{os.environ["CSTEST_RABBITMQ_USERNAME"]}:{os.environ["CSTEST_RABBITMQ_PASSWORD"]}'.encode()).decode()


BATCH = 10000


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{URL}/api/{path}", data=data, method=method)
    request.add_header("authorization", f"Basic {AUTH}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if method == "DELETE" and err.code == 404:
            return b""
        raise


def main():
    vhost, queues, teams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    segment = urllib.parse.quote(vhost, safe="")
    try:
        call("DELETE", f"vhosts/{segment}")
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        pass  # a big vhost outlasts the request; the broker goes on deleting it
    for _ in range(600):  # until it is gone
        try:
            call("GET", f"vhosts/{segment}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                break
            raise
        time.sleep(1)
    call("PUT", f"vhosts/{segment}", {})
    user = os.environ["CSTEST_RABBITMQ_USERNAME"]
    call("PUT", f"permissions/{segment}/{urllib.parse.quote(user, safe='')}", {"configure": ".*", "write": ".*", "read": ".*"})
    definitions = {
        "queues": [{"name": f"app{i}", "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}} for i in range(queues)]
        + [{"name": f"team{t}-dlq", "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}} for t in range(teams)],
        "exchanges": [
            {"name": name, "vhost": vhost, "type": "topic", "durable": True, "auto_delete": False, "internal": False, "arguments": {}}
            for name in ("dlx", "events")
        ],
        "bindings": [
            {"source": "events", "vhost": vhost, "destination": f"app{i}", "destination_type": "queue", "routing_key": f"team{i % teams}.app{i}", "arguments": {}}
            for i in range(queues)
        ]
        + [
            {"source": "dlx", "vhost": vhost, "destination": f"team{t}-dlq", "destination_type": "queue", "routing_key": f"team{t}.#", "arguments": {}}
            for t in range(teams)
        ],
        "policies": [
            {"vhost": vhost, "name": "dead-letters", "pattern": "^app", "apply-to": "queues", "priority": 0,
             "definition": {"dead-letter-exchange": "dlx"}}
        ],
    }
    # In batches: the management API refuses a body over its limit (`management.http.max_body_size`,
    # 20 MB by default), which 50,000 queues with their bindings pass. Imports add up.
    for kind in ("exchanges", "policies", "queues", "bindings"):
        items = definitions[kind]
        for start in range(0, len(items), BATCH):
            call("POST", f"definitions/{segment}", {kind: items[start:start + BATCH]})


if __name__ == "__main__":
    main()
