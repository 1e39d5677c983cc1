"""`warrenctl`: administer a WarrenMQ node through its management HTTP API, with
rabbitmqctl's command names (add_vhost, set_permissions, list_queues name messages …)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

DEFAULT_URL = "http://127.0.0.1:15672"
DEFAULT_TIMEOUT = 30.0  # seconds a command waits for the node's answer
MOVE_SYNC_TIMEOUT = 120.0  # the node's own bound on a move waiting for its target
NDJSON = "application/x-ndjson"  # a move's answer: its progress, a line at a time
LINE_TIMEOUT = 60.0  # seconds without a line from a move that goes on (one comes each second)

# list command -> (API path, default columns); rabbitmqctl's defaults where it has them
LISTS: dict[str, tuple[str, list[str]]] = {
    "list_vhosts": ("/api/vhosts", ["name"]),
    "list_users": ("/api/users", ["name", "tags"]),
    "list_permissions": ("/api/permissions", ["user", "vhost", "configure", "write", "read"]),
    "list_queues": ("/api/queues", ["name", "messages"]),
    "list_exchanges": ("/api/exchanges", ["name", "type"]),
    "list_bindings": ("/api/bindings", ["source", "destination", "destination_type",
                                         "routing_key"]),
    "list_connections": ("/api/connections", ["name", "user", "vhost", "channels"]),
    "list_channels": ("/api/channels", ["name", "user", "consumer_count",
                                        "messages_unacknowledged"]),
    "list_consumers": ("/api/consumers", ["queue_name", "channel", "consumer_tag",
                                          "ack_required", "prefetch_count", "active",
                                          "arguments"]),
    "list_policies": ("/api/policies", ["vhost", "name", "pattern", "apply-to", "definition",
                                        "priority"]),
}
VHOST_SCOPED = {"list_queues", "list_exchanges", "list_bindings", "list_permissions",
                "list_consumers", "list_policies"}
# vhost-scoped lists whose API has no per-vhost path: filter on the "vhost" key instead
FILTERED_BY_VHOST = {"list_permissions"}

# rabbitmqctl column names that are nested or renamed in the API's JSON
COLUMN_ALIASES = {
    "queue_name": "queue.name", "channel": "channel_details.name",
    "channel_pid": "channel_details.name", "connection": "connection_details.name",
}


class CtlError(Exception):
    pass


class Client:
    def __init__(self, url: str, username: str, password: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.auth = f"Basic {token}"
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        """One API call; every way it can fail is a CtlError (one line, never a
        traceback): an HTTP error, no answer in time, a refused or dropped connection."""
        wait = self.timeout if timeout is None else timeout
        with self._errors(method, path, wait):
            with urllib.request.urlopen(self._request(method, path, body, headers),
                                        timeout=wait) as resp:
                raw = resp.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise CtlError(f"{method} {path}: the answer is not JSON") from None

    def stream(self, method: str, path: str, body: Any = None,
               timeout: float | None = None) -> Iterator[dict]:
        """The events of a call answered one JSON object a line (a move's progress);
        ``timeout`` bounds each wait for the next line (the node sends one a second)."""
        wait = self.timeout if timeout is None else timeout
        with self._errors(method, path, wait):
            req = self._request(method, path, body, {"Accept": NDJSON})
            with urllib.request.urlopen(req, timeout=wait) as resp:
                if NDJSON not in resp.headers.get("Content-Type", ""):
                    raw = resp.read()
                    yield {"result": json.loads(raw) if raw else None}
                    return
                for line in resp:
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except ValueError:
                            raise CtlError(f"{method} {path}: a line of the answer is not "
                                           "JSON") from None

    def _request(self, method: str, path: str, body: Any,
                 headers: dict[str, str] | None) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        return req

    @contextlib.contextmanager
    def _errors(self, method: str, path: str, wait: float) -> Iterator[None]:
        try:
            yield
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("reason", e.reason)
            except (ValueError, AttributeError, OSError):
                reason = e.reason
            raise CtlError(f"{method} {path}: HTTP {e.code}: {reason}") from None
        except urllib.error.URLError as e:
            why = "no answer" if isinstance(e.reason, TimeoutError) else e.reason
            raise CtlError(f"cannot reach {self.url}: {why}") from None
        except TimeoutError:
            raise CtlError(f"{method} {path}: no answer from {self.url} within {wait:g} s "
                           "(the node may still be working on it)") from None
        except (OSError, http.client.HTTPException) as e:
            raise CtlError(f"{method} {path}: the connection to {self.url} failed: "
                           f"{e.strerror if isinstance(e, OSError) and e.strerror else e!r}"
                           ) from None


def q(name: str) -> str:
    return quote(name, safe="")


def fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def column(row: dict, name: str) -> Any:
    """A column of a row by rabbitmqctl's name or a dotted path into the API's JSON."""
    cur: Any = row
    for part in COLUMN_ALIASES.get(name, name).split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def print_rows(rows: list[dict], columns: list[str], formatter: str) -> None:
    if formatter == "json":
        print(json.dumps([{c: column(r, c) for c in columns} for r in rows], indent=2))
        return
    table = [columns] + [[fmt(column(r, c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())


def print_status(overview: dict, nodes: list[dict], formatter: str) -> None:
    if formatter == "json":
        print(json.dumps({"overview": overview, "nodes": nodes}, indent=2))
        return
    totals, queued = overview.get("object_totals", {}), overview.get("queue_totals", {})
    stats = overview.get("message_stats", {})
    print(f"Status of node {overview.get('node')} ...")
    print(f"Product: {overview.get('product_name')} {overview.get('product_version')}")
    print(f"Cluster name: {overview.get('cluster_name')}")
    for n in nodes:
        print(f"Uptime (seconds): {n.get('uptime', 0) // 1000}")
        print(f"Memory used: {n.get('mem_used')} bytes (limit {n.get('mem_limit')}), "
              f"alarm: {fmt(n.get('mem_alarm'))}")
        print(f"Disk free: {n.get('disk_free')} bytes (limit {n.get('disk_free_limit')}), "
              f"alarm: {fmt(n.get('disk_free_alarm'))}")
        raft = n.get("raft") or {}
        print(f"Raft: {raft.get('state')}, leader {raft.get('leader')}, term "
              f"{raft.get('term')}, commit index {raft.get('commit_index')}")
    print("Totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print(f"Messages: {queued.get('messages', 0)} (ready {queued.get('messages_ready', 0)}, "
          f"unacknowledged {queued.get('messages_unacknowledged', 0)})")
    rates = {k: stats.get(k + "_details", {}).get("rate", 0.0)
             for k in ("publish", "deliver_get", "ack")}
    print("Rates (msg/s): " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    for listener in overview.get("listeners", []):
        print(f"Listener: {listener.get('protocol')} on port {listener.get('port')}")


def read_file(path: str) -> Any:
    try:
        with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
            return json.load(f)
    except OSError as e:
        raise CtlError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise CtlError(f"{path} is not JSON: {e}") from None


def parse_definition(raw: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise CtlError(f"policy definition is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise CtlError("policy definition must be a JSON object")
    return value


def run(args: argparse.Namespace, client: Client) -> None:
    cmd, rest = args.command, args.args
    vhost = args.vhost

    def need(n: int, usage: str) -> list[str]:
        if len(rest) < n:
            raise CtlError(f"usage: warrenctl {cmd} {usage}")
        return rest

    if cmd in LISTS:
        path, default_cols = LISTS[cmd]
        if cmd in VHOST_SCOPED and cmd not in FILTERED_BY_VHOST:
            path = f"{path}/{q(vhost)}"
        rows = client.call("GET", path)
        if cmd in FILTERED_BY_VHOST and not args.all_vhosts:
            rows = [r for r in rows if r.get("vhost") == vhost]
        print_rows(rows, rest or default_cols, args.formatter)
        for reason in sorted({r["reason"] for r in rows if r.get("state") == "down"
                              and r.get("reason")}):
            print(f"Warning: {reason}: message counts unknown", file=sys.stderr)
    elif cmd in SIMPLE:
        SIMPLE[cmd](client, args, need)
    elif cmd == "status":
        print_status(client.call("GET", "/api/overview"), client.call("GET", "/api/nodes"),
                     args.formatter)
    else:
        raise CtlError(f"unknown command '{cmd}'; commands: "
                       + ", ".join(sorted(list(LISTS) + list(SIMPLE) + ["status"])))


Need = Any


def add_vhost(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "<vhost> [--owner <node>] [--replicas <copies>] [--shards <n>] "
                         "[--default-queue-type classic|quorum]")
    print(f"Adding vhost \"{name}\" ...")
    if a.owner or a.replicas or a.shards:
        placement: dict[str, Any] = {}
        if a.owner:
            placement["owner"] = a.owner
        if a.replicas:
            placement["replicas"] = a.replicas
        if a.shards:
            placement["shards"] = a.shards
        c.call("PUT", f"/api/cluster/vhosts/{q(name)}", placement)
    if a.default_queue_type or not (a.owner or a.replicas or a.shards):
        body = {"default_queue_type": a.default_queue_type} if a.default_queue_type else {}
        c.call("PUT", f"/api/vhosts/{q(name)}", body)


def set_vhost_shards(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, count, *_ = need(2, "<vhost> <shards>")
    try:
        shards = int(count)
    except ValueError:
        raise CtlError(f"shards must be a whole number, not {count!r}") from None
    print(f"Setting vhost \"{name}\" to {shards} shards ...")
    c.call("PUT", f"/api/cluster/vhosts/{q(name)}", {"shards": shards})


def move_vhost(c: Client, a: argparse.Namespace, need: Need) -> None:
    """The move runs on the node; meanwhile this prints its progress (bytes copied, the
    target's lag, the time left at the recent rate) and ends with how it ended."""
    name, node, *_ = need(2, "<vhost> <node> [--shard <k>] [--timeout <seconds to get in "
                             "sync>]")
    sync_timeout = min(a.timeout, MOVE_SYNC_TIMEOUT) if a.timeout else MOVE_SYNC_TIMEOUT
    what = f"vhost \"{name}\"" + (f" shard {a.shard}" if a.shard else "")
    print(f"Moving {what} to node \"{node}\" with its messages ...", flush=True)
    body: dict[str, Any] = {"node": node, "timeout": sync_timeout}
    if a.shard:
        body["shard"] = a.shard
    try:
        done = _follow(c.stream("POST", f"/api/cluster/vhosts/{q(name)}/move", body,
                                timeout=LINE_TIMEOUT))
    except CtlError as e:
        raise CtlError(f"move of {what} to {node} stopped: {e}") from None
    print(_moved(done))


def rebalance(c: Client, a: argparse.Namespace, need: Need) -> None:
    """Spread the shard owners of a vhost (or of every sharded vhost: --all, or no vhost)
    over the running nodes, one live move at a time, each with its progress."""
    names = a.args
    body = {"timeout": min(a.timeout, MOVE_SYNC_TIMEOUT) if a.timeout else MOVE_SYNC_TIMEOUT}
    if names and not a.all:
        print(f"Rebalancing the shards of vhost \"{names[0]}\" ...", flush=True)
        path = f"/api/cluster/vhosts/{q(names[0])}/rebalance"
    else:
        print("Rebalancing the shards of every sharded vhost ...", flush=True)
        path = "/api/cluster/rebalance"
    done = _follow(c.stream("POST", path, body, timeout=LINE_TIMEOUT))
    moves = done.get("moves") or []
    if a.formatter == "json":
        print(json.dumps(moves, indent=2))
    elif not moves:
        print("Nothing to move: the shard owners are spread already.")
    else:
        print(f"{len(moves)} shard{'s' if len(moves) != 1 else ''} moved.")


def _follow(events: Iterator[dict]) -> dict:
    """Print a move's (or a rebalance's) events as they come; its result, or a CtlError."""
    for event in events:
        if "progress" in event:
            print(progress_line(event["progress"]), flush=True)
        elif "step" in event:
            st = event["step"]
            print(f"Moving vhost \"{st['vhost']}\" shard {st['shard']} from {st['from']} to "
                  f"{st['to']} ...", flush=True)
        elif "moved" in event:
            print(_moved(event["moved"]), flush=True)
        elif "error" in event:
            raise CtlError(str(event.get("reason")))
        elif "result" in event:
            return event["result"] or {}
    raise CtlError("the node ended the answer before saying how it ended")


def _moved(done: dict) -> str:
    copied = done.get("copied_bytes")
    return (f"Moved: owner {done['owner']}, epoch {done['epoch']}, publishers paused "
            f"{done['pause_ms']} ms"
            + (f", {size(copied)} copied in {done.get('sync_ms', 0) / 1000:.1f} s"
               if copied else ""))


def size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def progress_line(p: dict) -> str:
    """One line of a move's progress: what is copied, what the target lacks, time left."""
    target = p.get("target")
    if p.get("phase") == "drain":
        return f"  {target} in sync; publishers paused while it takes the last records"
    lag = p.get("lag")
    if not p.get("connected") or not isinstance(lag, dict):
        return f"  waiting for {target} to connect to the owner"
    parts = []
    if p.get("copied_bytes"):
        total = p.get("snapshot_bytes")
        parts.append(f"{size(p['copied_bytes'])}"
                     + (f" of about {size(total)}" if total else "") + " copied")
    parts.append(f"{lag.get('records')} records ({size(lag.get('bytes'))}) behind")
    eta = p.get("eta_s")
    parts.append(f"about {eta:.1f} s left" if isinstance(eta, (int, float))
                 else "time left unknown yet")
    rate = p.get("rate_bytes_s")
    if rate:
        parts.append(f"{size(rate)}/s")
    return f"  {target}: " + ", ".join(parts)


def verify_vhost(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "<vhost>")
    print(f"Comparing the copies of vhost \"{name}\" ...")
    # hashing every copy of a large vhost takes a while
    rec = c.call("POST", f"/api/cluster/vhosts/{q(name)}/verify", {}, timeout=600.0)
    if a.formatter == "json":
        print(json.dumps(rec, indent=2))
    else:
        print_rows(rec["copies"], ["node", "role", "epoch", "offset", "digest", "agree",
                                   "error"], "table")
    if not rec["agree"]:
        bad = [r["node"] for r in rec["copies"] if not r["agree"]]
        raise CtlError(f"the copies of vhost \"{name}\" disagree at offset {rec['offset']}: "
                       + ", ".join(bad))
    if a.formatter != "json":
        print(f"The {len(rec['copies'])} copies agree at offset {rec['offset']}.")


def vhost_status(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "<vhost>")
    rec = c.call("GET", f"/api/cluster/vhosts/{q(name)}")
    if a.formatter == "json":
        print(json.dumps(rec, indent=2))
        return
    print(f"Vhost \"{name}\": owner {rec.get('owner')}, epoch {rec.get('epoch')}, "
          f"replicas {fmt(rec.get('replicas') or [])}, in sync {fmt(rec.get('in_sync') or [])}")
    if rec.get("shards"):
        print_rows(rec["shards"], ["shard", "owner", "epoch", "replicas", "in_sync"], "table")


def cluster_status(c: Client, a: argparse.Namespace, need: Need) -> None:
    st = c.call("GET", "/api/cluster-status")
    if a.formatter == "json":
        print(json.dumps(st, indent=2))
        return
    print(f"Cluster status of node {st['node']}")
    print(f"Raft: leader {st['leader']}, term {st['term']}, commit index "
          f"{st['commit_index']}, applied {st['last_applied']}, quorum {st['has_quorum']}")
    for joining in st.get("joining") or []:
        print(f"Joining: {joining['raft']} ({joining['reason']})")
    diverged = (st.get("definitions") or {}).get("diverged")
    if diverged:
        print(f"Definitions DIVERGED from the Raft leader {diverged['leader']} "
              f"(check {diverged['mark']}): this node's view cannot be trusted")
    print()
    rows = [{"name": n["name"], "raft": n["raft"], "amqp": n["amqp"],
             "running": n["running"], "leader": n["leader"], "owns": n["owns"]}
            for n in st["nodes"]]
    print_rows(rows, ["name", "raft", "amqp", "running", "leader", "owns"], "table")
    print()
    print_rows([{"vhost": v, **d, "replicas": ",".join(d.get("replicas", [])),
                 "in_sync": ",".join(d.get("in_sync", []))} for v, d in st["vhosts"].items()],
               ["vhost", "owner", "epoch", "replicas", "in_sync", "available"], "table")


def join_cluster(c: Client, a: argparse.Namespace, need: Need) -> None:
    (raft, *_) = need(1, "<raft address of the new node, host:port>")
    outcome = c.call("POST", "/api/cluster/nodes", {"raft_address": raft}) or {}
    if outcome.get("state") == "joining":
        print(f"Adding {raft}: {outcome.get('reason')}; cluster_status lists it as joining "
              "until then. Start it with every member as --peers")
        return
    print(f"Added {raft} to the cluster: start it now with every member as --peers")


def forget_cluster_node(c: Client, a: argparse.Namespace, need: Need) -> None:
    (node, *_) = need(1, "<node name>")
    print(f"Removing node \"{node}\" from the cluster ...")
    c.call("DELETE", f"/api/cluster/nodes/{q(node)}")


def set_vhost_limits(c: Client, a: argparse.Namespace, need: Need) -> None:
    (raw, *_) = need(1, "[-p <vhost>] '{\"max-connections\": N, \"max-queues\": N}'")
    try:
        limits = json.loads(raw)
    except ValueError as e:
        raise CtlError(f"limits must be JSON: {e}") from None
    for key, value in limits.items():
        c.call("PUT", f"/api/vhost-limits/{q(a.vhost)}/{q(key)}", {"value": value})
    print(f"Applying limits {limits} to vhost \"{a.vhost}\" ...")


def set_vm_memory_high_watermark(c: Client, a: argparse.Namespace, need: Need) -> None:
    args = need(1, "<fraction> | absolute <bytes>")
    if args[0] == "absolute":
        need(2, "absolute <bytes>")
        c.call("PUT", "/api/resources/vm-memory-high-watermark", {"absolute": int(args[1])})
    else:
        c.call("PUT", "/api/resources/vm-memory-high-watermark", {"fraction": float(args[0])})
    print("Setting memory threshold ...")


def set_disk_free_limit(c: Client, a: argparse.Namespace, need: Need) -> None:
    (limit, *_) = need(1, "<bytes>")
    c.call("PUT", "/api/resources/disk-free-limit", {"bytes": int(limit)})
    print(f"Setting disk free limit to {limit} bytes ...")


def delete_vhost(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "<vhost>")
    c.call("DELETE", f"/api/vhosts/{q(name)}")
    print(f"Deleting vhost \"{name}\" ...")


def add_user(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, password, *_ = need(2, "<username> <password>")
    c.call("PUT", f"/api/users/{q(name)}", {"password": password, "tags": ""})
    print(f"Adding user \"{name}\" ...")


def delete_user(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "<username>")
    c.call("DELETE", f"/api/users/{q(name)}")
    print(f"Deleting user \"{name}\" ...")


def change_password(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, password, *_ = need(2, "<username> <new_password>")
    user = c.call("GET", f"/api/users/{q(name)}")
    c.call("PUT", f"/api/users/{q(name)}", {"password": password,
                                            "tags": user.get("tags", [])})
    print(f"Changing password for user \"{name}\" ...")


def set_user_tags(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, *tags = need(1, "<username> <tag> ...")
    c.call("PUT", f"/api/users/{q(name)}", {"tags": tags})
    print(f"Setting tags for user \"{name}\" to [{', '.join(tags)}] ...")


def set_permissions(c: Client, a: argparse.Namespace, need: Need) -> None:
    user, conf, write, read, *_ = need(4, "[-p <vhost>] <user> <conf> <write> <read>")
    c.call("PUT", f"/api/permissions/{q(a.vhost)}/{q(user)}",
           {"configure": conf, "write": write, "read": read})
    print(f"Setting permissions for user \"{user}\" in vhost \"{a.vhost}\" ...")


def clear_permissions(c: Client, a: argparse.Namespace, need: Need) -> None:
    (user, *_) = need(1, "[-p <vhost>] <user>")
    c.call("DELETE", f"/api/permissions/{q(a.vhost)}/{q(user)}")
    print(f"Clearing permissions for user \"{user}\" in vhost \"{a.vhost}\" ...")


def close_connection(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, *reason = need(1, "<connection name> [<explanation>]")
    headers = {"X-Reason": " ".join(reason)} if reason else None
    c.call("DELETE", f"/api/connections/{q(name)}", headers=headers)
    print(f"Closing connection {name}, reason: {' '.join(reason) or 'none'}...")


def purge_queue(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "[-p <vhost>] <queue>")
    c.call("DELETE", f"/api/queues/{q(a.vhost)}/{q(name)}/contents")
    print(f"Purging queue '{name}' in vhost '{a.vhost}' ...")


def delete_queue(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "[-p <vhost>] <queue> [--if-empty] [--if-unused]")
    conditions = [f"{flag}=true" for flag, on in (("if-empty", a.if_empty),
                                                  ("if-unused", a.if_unused)) if on]
    query = "?" + "&".join(conditions) if conditions else ""
    c.call("DELETE", f"/api/queues/{q(a.vhost)}/{q(name)}{query}")
    print(f"Deleting queue '{name}' on vhost '{a.vhost}' ...")


def set_policy(c: Client, a: argparse.Namespace, need: Need) -> None:
    name, pattern, definition, *_ = need(
        3, "[-p <vhost>] [--priority <n>] [--apply-to <kind>] <name> <pattern> <definition>")
    c.call("PUT", f"/api/policies/{q(a.vhost)}/{q(name)}",
           {"pattern": pattern, "definition": parse_definition(definition),
            "priority": a.priority, "apply-to": a.apply_to})
    print(f"Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with "
          f"priority \"{a.priority}\" for vhost \"{a.vhost}\" ...")


def clear_policy(c: Client, a: argparse.Namespace, need: Need) -> None:
    (name, *_) = need(1, "[-p <vhost>] <name>")
    c.call("DELETE", f"/api/policies/{q(a.vhost)}/{q(name)}")
    print(f"Clearing policy \"{name}\" on vhost \"{a.vhost}\" ...")


def export_definitions(c: Client, a: argparse.Namespace, need: Need) -> None:
    (path, *_) = need(1, "<file> (- for standard output)")
    doc = c.call("GET", "/api/definitions")
    text = json.dumps(doc, indent=2)
    if path == "-":
        print(text)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"Exported definitions for the cluster to \"{path}\"", file=sys.stderr)


def import_definitions(c: Client, a: argparse.Namespace, need: Need) -> None:
    (path, *_) = need(1, "<file> (- for standard input)")
    c.call("POST", "/api/definitions", read_file(path))
    print(f"Imported definitions from \"{path}\"", file=sys.stderr)


SIMPLE = {f.__name__: f for f in (
    add_vhost, delete_vhost, add_user, delete_user, change_password, set_user_tags,
    set_permissions, clear_permissions, close_connection, purge_queue, delete_queue,
    set_policy, clear_policy, export_definitions, import_definitions, move_vhost,
    verify_vhost, vhost_status, cluster_status, join_cluster, forget_cluster_node, set_vhost_limits,
    rebalance,
    set_vm_memory_high_watermark, set_disk_free_limit, set_vhost_shards)}
SIMPLE["set_vhost_owner"] = move_vhost  # the name of earlier releases


# every command, one line each, for --help (a test checks none is missing)
HELP = {
    "status": "this node's uptime, memory, disk, Raft state, totals and rates",
    "cluster_status": "nodes (running, leader, vhosts owned) and each vhost's placement",
    "join_cluster": "add a node's Raft address to the cluster (then start that node)",
    "forget_cluster_node": "remove a node from the cluster",
    "add_vhost": "create a vhost (--owner NODE: where; --shards N: over N owners)",
    "set_vhost_shards": "grow a live vhost to N shards, owners spread over the nodes",
    "delete_vhost": "delete a vhost and everything in it",
    "set_vhost_owner": "the older name of move_vhost",
    "move_vhost": "move a vhost (--shard K: one shard) with its messages to a node",
    "rebalance": "spread a vhost's shard owners over the nodes (--all: every vhost)",
    "vhost_status": "a vhost's owner, epoch, replicas and in-sync replicas",
    "verify_vhost": "compare the copies of a vhost: each one's digest at one offset",
    "set_vhost_limits": "set max-connections / max-queues of a vhost (-p)",
    "add_user": "create a user",
    "delete_user": "delete a user",
    "change_password": "set a user's password",
    "set_user_tags": "set a user's tags (administrator, monitoring, management, ...)",
    "set_permissions": "set a user's configure/write/read patterns on a vhost (-p)",
    "clear_permissions": "remove a user's permissions on a vhost (-p)",
    "set_policy": "set a policy on a vhost (-p, --priority, --apply-to)",
    "clear_policy": "remove a policy from a vhost (-p)",
    "purge_queue": "remove a queue's ready messages (-p)",
    "delete_queue": "delete a queue (-p, --if-empty, --if-unused)",
    "close_connection": "close a client connection by name, with an optional reason",
    "export_definitions": "write the definitions as JSON to a file (- for stdout)",
    "import_definitions": "load definitions from a JSON file (- for stdin)",
    "set_vm_memory_high_watermark": "memory alarm threshold: a fraction, or absolute BYTES",
    "set_disk_free_limit": "disk alarm threshold in bytes",
    **{cmd: f"list {cmd[5:]}; columns may follow (default: {' '.join(cols[:2])}"
            f"{' ...' if len(cols) > 2 else ''})" for cmd, (_path, cols) in LISTS.items()},
}


def _commands_epilog() -> str:
    width = max(len(c) for c in HELP)
    return "commands:\n" + "\n".join(f"  {c.ljust(width)}  {HELP[c]}" for c in sorted(HELP))


def _quiet_broken_pipe() -> None:
    """`warrenctl list_queues | head`: the reader left; end without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail too
    except OSError:
        pass
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("Error: interrupted (what the node was doing goes on there)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug here: still one line, never a traceback
        print(f"Error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(70)


def _main(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(prog="warrenctl", description="Administer a WarrenMQ node "
                                "through its management HTTP API (rabbitmqctl's commands).",
                                epilog=_commands_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", "-n", default=os.environ.get("WARREN_HTTP_URL", DEFAULT_URL),
                   help="management API URL of any node (env WARREN_HTTP_URL)")
    # inside a node's container WARREN_DEFAULT_USER/_PASS are the administrator's
    env = os.environ
    p.add_argument("--username", "-u",
                   default=env.get("WARREN_CTL_USER", env.get("WARREN_DEFAULT_USER", "guest")),
                   help="env WARREN_CTL_USER, else WARREN_DEFAULT_USER, else guest")
    p.add_argument("--password",
                   default=env.get("WARREN_CTL_PASSWORD", env.get("WARREN_DEFAULT_PASS", "guest")),
                   help="env WARREN_CTL_PASSWORD, else WARREN_DEFAULT_PASS, else guest")
    p.add_argument("--vhost", "-p", default="/")
    p.add_argument("--formatter", "-f", choices=["table", "json"], default="table")
    p.add_argument("--all-vhosts", action="store_true",
                   help="list_permissions: of every vhost")
    p.add_argument("--priority", type=int, default=0, help="set_policy: priority")
    p.add_argument("--apply-to", default="all", help="set_policy: queues, exchanges or all")
    p.add_argument("--if-empty", action="store_true", help="delete_queue: only if empty")
    p.add_argument("--if-unused", action="store_true", help="delete_queue: only if unused")
    p.add_argument("--owner", default=None, help="add_vhost: the node that runs it")
    p.add_argument("--default-queue-type", default=None,
                   help="add_vhost: the type of queues declared without x-queue-type "
                        "(classic or quorum)")
    p.add_argument("--replicas", type=int, default=None,
                   help="add_vhost: copies of its messages, the owner's included")
    p.add_argument("--shards", type=int, default=None,
                   help="add_vhost: shards to split it into, each with an owner of its own")
    p.add_argument("--all", action="store_true", help="rebalance: every sharded vhost")
    p.add_argument("--shard", type=int, default=0,
                   help="move_vhost: which shard of a sharded vhost (default 0)")
    p.add_argument("--timeout", type=float,
                   default=float(env.get("WARREN_CTL_TIMEOUT", DEFAULT_TIMEOUT)),
                   help="seconds to wait for the node's answer (move_vhost: for the target "
                        f"to get in sync, at most {MOVE_SYNC_TIMEOUT:g}); env WARREN_CTL_TIMEOUT")
    p.add_argument("command", help="one of the commands below")
    p.add_argument("args", nargs="*", help="the command's arguments")
    args = p.parse_intermixed_args(argv)
    try:
        run(args, Client(args.node, args.username, args.password, args.timeout))
    except CtlError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
