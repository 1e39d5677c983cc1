"""`warren healthcheck`: ask the node running with these settings (the same WARREN_*
variables and flags as `warren`) whether it is ready to serve clients.  Exit 0 if so,
1 if not, with one line saying why.  The container's HEALTHCHECK runs it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from node.config import SettingsError, load_settings
from node.health import read_token

CHECKS = ("ready-to-serve-clients", "virtual-hosts", "alarms")
WILDCARDS = ("", "0.0.0.0", "::")


def main(argv: list[str]) -> int:
    check = "ready-to-serve-clients"
    if argv and argv[0] in CHECKS:
        check, argv = argv[0], argv[1:]
    elif argv and argv[0] in ("-h", "--help"):
        print(f"usage: warren healthcheck [{'|'.join(CHECKS)}] [warren's flags]")
        return 0
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"warren healthcheck: {exc}", file=sys.stderr)
        return 64
    host = "127.0.0.1" if settings.http_host in WILDCARDS else settings.http_host
    url = f"http://{host}:{settings.http_port}/api/health/checks/{check}"
    try:
        token = read_token(settings.data_dir)
    except OSError as exc:
        print(f"unhealthy: no health token in {settings.data_dir} ({exc.strerror}): "
              "the node has not started serving yet")
        return 1
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        print(f"unhealthy: {body.get('reason') or f'HTTP {exc.code}'}")
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot reach {url}: {getattr(exc, 'reason', exc)}")
        return 1
    print(f"{check}: {body.get('status', 'ok')}")
    return 0
