"""`warrenctl`: administer a WarrenMQ node through its management HTTP API, with
rabbitmqctl's command names (add_vhost, set_permissions, list_queues name messages …)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

DEFAULT_URL = "http://127.0.0.1:15672"

# list command -> (API path, default columns)
LISTS: dict[str, tuple[str, list[str]]] = {
    "list_vhosts": ("/api/vhosts", ["name"]),
    "list_users": ("/api/users", ["name", "tags"]),
    "list_permissions": ("/api/permissions", ["user", "vhost", "configure", "write", "read"]),
    "list_queues": ("/api/queues", ["name", "messages"]),
    "list_exchanges": ("/api/exchanges", ["name", "type"]),
    "list_bindings": ("/api/bindings", ["source", "destination", "destination_type",
                                         "routing_key"]),
    "list_connections": ("/api/connections", ["name", "user", "vhost", "channels"]),
}
VHOST_SCOPED = {"list_queues", "list_exchanges", "list_bindings", "list_permissions"}


class CtlError(Exception):
    pass


class Client:
    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.auth = f"Basic {token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("reason", e.reason)
            except ValueError:
                reason = e.reason
            raise CtlError(f"{method} {path}: HTTP {e.code}: {reason}") from None
        except urllib.error.URLError as e:
            raise CtlError(f"cannot reach {self.url}: {e.reason}") from None
        return json.loads(raw) if raw else None


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


def print_rows(rows: list[dict], columns: list[str], formatter: str) -> None:
    if formatter == "json":
        print(json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2))
        return
    table = [columns] + [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())


def run(args: argparse.Namespace, client: Client) -> None:
    cmd, rest = args.command, args.args
    vhost = args.vhost

    def need(n: int, usage: str) -> list[str]:
        if len(rest) < n:
            raise CtlError(f"usage: warrenctl {cmd} {usage}")
        return rest

    if cmd in LISTS:
        path, default_cols = LISTS[cmd]
        if cmd in VHOST_SCOPED and cmd != "list_permissions":
            path = f"{path}/{q(vhost)}"
        rows = client.call("GET", path)
        if cmd == "list_permissions":
            rows = [r for r in rows if r.get("vhost") == vhost]
        print_rows(rows, rest or default_cols, args.formatter)
    elif cmd == "add_vhost":
        (name, *_) = need(1, "<vhost>")
        client.call("PUT", f"/api/vhosts/{q(name)}", {})
        print(f"Adding vhost \"{name}\" ...")
    elif cmd == "delete_vhost":
        (name, *_) = need(1, "<vhost>")
        client.call("DELETE", f"/api/vhosts/{q(name)}")
        print(f"Deleting vhost \"{name}\" ...")
    elif cmd == "add_user":
        name, password, *_ = need(2, "<username> <password>")
        client.call("PUT", f"/api/users/{q(name)}", {"password": password, "tags": ""})
        print(f"Adding user \"{name}\" ...")
    elif cmd == "delete_user":
        (name, *_) = need(1, "<username>")
        client.call("DELETE", f"/api/users/{q(name)}")
        print(f"Deleting user \"{name}\" ...")
    elif cmd == "change_password":
        name, password, *_ = need(2, "<username> <new_password>")
        user = client.call("GET", f"/api/users/{q(name)}")
        client.call("PUT", f"/api/users/{q(name)}", {"password": password,
                                                      "tags": user.get("tags", [])})
        print(f"Changing password for user \"{name}\" ...")
    elif cmd == "set_user_tags":
        name, *tags = need(1, "<username> <tag> ...")
        client.call("PUT", f"/api/users/{q(name)}", {"tags": tags})
        print(f"Setting tags for user \"{name}\" to {tags} ...")
    elif cmd == "set_permissions":
        user, conf, write, read, *_ = need(4, "[-p <vhost>] <user> <conf> <write> <read>")
        client.call("PUT", f"/api/permissions/{q(vhost)}/{q(user)}",
                    {"configure": conf, "write": write, "read": read})
        print(f"Setting permissions for user \"{user}\" in vhost \"{vhost}\" ...")
    elif cmd == "clear_permissions":
        (user, *_) = need(1, "[-p <vhost>] <user>")
        client.call("DELETE", f"/api/permissions/{q(vhost)}/{q(user)}")
        print(f"Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ...")
    elif cmd == "status":
        print(json.dumps(client.call("GET", "/api/overview"), indent=2))
    else:
        raise CtlError(f"unknown command '{cmd}'; commands: "
                       + ", ".join(sorted(list(LISTS) + COMMANDS)))


COMMANDS = ["add_vhost", "delete_vhost", "add_user", "delete_user", "change_password",
            "set_user_tags", "set_permissions", "clear_permissions", "status"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="warrenctl", description="Administer a WarrenMQ node.")
    p.add_argument("--node", "-n", default=os.environ.get("WARREN_HTTP_URL", DEFAULT_URL),
                   help="management API URL of any node (env WARREN_HTTP_URL)")
    p.add_argument("--username", "-u", default=os.environ.get("WARREN_CTL_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("WARREN_CTL_PASSWORD", "guest"))
    p.add_argument("--vhost", "-p", default="/")
    p.add_argument("--formatter", "-f", choices=["table", "json"], default="table")
    p.add_argument("command")
    p.add_argument("args", nargs="*")
    args = p.parse_intermixed_args(argv)
    try:
        run(args, Client(args.node, args.username, args.password))
    except CtlError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
