"""Run client libraries' own broker test suites against a broker, to compare RabbitMQ and
WarrenMQ side by side.  Not collected by pytest.

    python3 tests/clients/run_suites.py --port 5673 --label rabbitmq pika py-amqp kombu
    python3 tests/clients/run_suites.py --port 5672 --label warren   pika py-amqp kombu
    python3 tests/clients/run_suites.py --compare out/rabbitmq out/warren

Each suite's source is taken at the installed library's version into a scratch directory,
never into this repository: the release tag from a local git mirror (--mirror-root) when it
has the tag, else the release's source distribution from PyPI when that ships the tests,
else a clone of the tag from GitHub.  Suites hard-code localhost:5672 in places; those are rewritten to the
broker under test.  Each run writes a JUnit XML file per suite; --compare lists, per
suite, the pass/fail counts of both runs and every test whose outcome differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

# name: (GitHub repository, installed distribution, tag format, test paths, rewrites)
# rewrites are (file, old text, new text); {port} and {host} are filled in.  appends are
# (file, name, text): the text is added to the file when the name is not in it.
AIORMQ_BROKER_FIXTURES = '''

@pytest.fixture(scope="session")
def rabbitmq_container():
    from tests.docker_client import ContainerInfo
    url = URL(os.environ["AMQP_URL"])
    return ContainerInfo(id="broker", host=url.host,
                         ports={"5672/tcp": url.port, "5671/tcp": 5671})


@pytest.fixture(scope="session")
def amqp_direct_url(rabbitmq_container):
    return URL.build(scheme="amqp", user="guest", password="guest", path="//",
                     host=rabbitmq_container.host,
                     port=rabbitmq_container.ports["5672/tcp"])
'''

SUITES: dict[str, dict] = {
    "pika": {
        "repo": "pika/pika", "dist": "pika", "tag": "{v}",
        "paths": ["tests/acceptance/blocking_adapter_test.py",
                  "tests/acceptance/async_adapter_tests.py",
                  "tests/acceptance/enforce_one_basicget_test.py"],
        "rewrite": [("tests/acceptance/blocking_adapter_test.py",
                     "'port': 5672", "'port': {port}"),
                    ("tests/base/async_test_base.py",
                     "host='localhost', port=5672", "host='{host}', port={port}")],
    },
    "py-amqp": {
        "repo": "celery/py-amqp", "dist": "amqp", "tag": "v{v}",
        "paths": ["t/integration/test_rmq.py"],
        "args": ["-E", "rabbitmq"],
        "rewrite": [],
        # the source distribution leaves out the root conftest.py that defines -E
        "scaffold": ["conftest.py"],
    },
    "kombu": {
        "repo": "celery/kombu", "dist": "kombu", "tag": "v{v}",
        "paths": ["t/integration/test_py_amqp.py"],
        "args": ["-E", "py-amqp"],
        "rewrite": [],
        "scaffold": ["conftest.py"],
    },
    # aiormq and aio-pika need aiomisc-pytest (--python: a venv that has it); their
    # amqps cases need a TLS listener on 5671 and fail on a broker without one
    "aiormq": {
        "repo": "mosquito/aiormq", "dist": "aiormq", "tag": "{v}",
        "paths": ["tests"],
        "rewrite": [],
        # 7.x's source distribution ships tests/conftest.py without its Docker fixtures
        # (the repository's conftest has them): the broker under test stands in
        "append": [("tests/conftest.py", "def rabbitmq_container", AIORMQ_BROKER_FIXTURES)],
    },
    "aio-pika": {
        "repo": "mosquito/aio-pika", "dist": "aio-pika", "tag": "{v}",
        "paths": ["tests"],
        "args": ["--ignore=tests/test_memory_leak.py"],
        "rewrite": [
            # no Docker here: the broker under test stands in for the container
            ("tests/conftest.py",
             "    try:\n        _docker_host_info = check_docker_available()",
             "    return\n    try:\n        _docker_host_info = check_docker_available()"),
            ("tests/conftest.py",
             'info = docker("mosquito/aiormq-rabbitmq", ["5672/tcp", "5671/tcp"])',
             'info = ContainerInfo(id="broker", host="{host}", '
             'ports={{"5672/tcp": {port}, "5671/tcp": 5671}})'),
        ],
    },
    # Celery's integration suite with the AMQP broker and the rpc:// result backend (no
    # Redis here); needs celery, pytest-rerunfailures and pytest-subtests (--python)
    "celery": {
        "repo": "celery/celery", "dist": "celery", "tag": "v{v}",
        "paths": ["t/integration"],
        # Azure and SQL result backends are not installed here
        "args": ["--ignore=t/integration/test_backend.py",
                 "--ignore=t/integration/test_database_backend.py",
                 "--continue-on-collection-errors", "-p", "celery.contrib.pytest"],
        "env": {"TEST_BROKER": "pyamqp://guest:guest@{host}:{port}//",
                "TEST_BACKEND": "rpc://"},
        "rewrite": [],
    },
    # Debian's golang-github-rabbitmq-amqp091-go-dev: `go test -tags integration` in GOPATH
    # mode, its test dependencies (goleak, testify) from the same Debian archive
    "amqp091-go": {
        "go": "/usr/share/gocode/src/github.com/rabbitmq/amqp091-go",
    },
}


def run_go_suite(name: str, host: str, port: int, out: Path, timeout: int) -> dict:
    """amqp091-go's integration tests, results converted to JUnit XML like the others."""
    pkg = SUITES[name]["go"]
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
               AMQP_URL=f"amqp://guest:guest@{host}:{port}/")
    proc = subprocess.run(["go", "test", "-tags", "integration", "-count=1", "-json",
                           f"-timeout={timeout * 20}s", "."], cwd=pkg, env=env,
                          capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    suite = ET.Element("testsuite", name=name)
    for line in proc.stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("Test") and ev.get("Action") in ("pass", "fail", "skip"):
            case = ET.SubElement(suite, "testcase", classname=name, name=ev["Test"])
            if ev["Action"] == "fail":
                ET.SubElement(case, "failure")
            elif ev["Action"] == "skip":
                ET.SubElement(case, "skipped")
    junit = out / f"{name}.xml"
    ET.ElementTree(suite).write(junit)
    return outcomes(junit)


def installed_version(python: str, dist: str) -> str:
    """The library's version as the interpreter that runs its suite sees it."""
    return subprocess.run([python, "-c", "import importlib.metadata as m, sys; "
                           "print(m.version(sys.argv[1]))", dist],
                          check=True, capture_output=True, text=True).stdout.strip()


def source_tree(name: str, mirror_root: Path | None, work: Path, python: str) -> Path:
    spec = SUITES[name]
    version = installed_version(python, spec["dist"])
    tag = spec["tag"].format(v=version)
    dest = work / f"{name}-src"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    mirror = (mirror_root / spec["repo"].replace("/", "+") / "repo") if mirror_root else None
    has_tag = mirror is not None and mirror.exists() and subprocess.run(
        ["git", "-C", str(mirror), "rev-parse", "-q", "--verify", tag + "^{commit}"],
        capture_output=True).returncode == 0
    if has_tag:
        archive = subprocess.run(["git", "-C", str(mirror), "archive", tag],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    elif sdist_tree(spec, version, python, work, dest):
        print(f"{name}: tests from the {version} source distribution", file=sys.stderr)
        for rel in spec.get("scaffold", ()):
            # test scaffolding the source distribution leaves out, from the mirror's HEAD
            if not (dest / rel).exists() and mirror is not None and mirror.exists():
                (dest / rel).write_bytes(subprocess.run(
                    ["git", "-C", str(mirror), "show", f"HEAD:{rel}"],
                    check=True, capture_output=True).stdout)
    elif mirror is not None and mirror.exists():
        # another version's tests: say so, the comparison is then only roughly the release's
        print(f"{name}: tag {tag} not in the mirror and no tests in the source "
              "distribution, using the mirror's HEAD", file=sys.stderr)
        archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", tag,
                        f"https://github.com/{spec['repo']}", str(dest)], check=True)
    return dest


def sdist_tree(spec: dict, version: str, python: str, work: Path, dest: Path) -> bool:
    """Unpack the release's source distribution into dest when it ships the suite's test
    paths (most do; pika's does not)."""
    dl = work / "sdist"
    proc = subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps",
                           "--no-binary", spec["dist"], "-d", str(dl),
                           f"{spec['dist']}=={version}"], capture_output=True, text=True)
    archives = sorted(dl.glob("*.tar.gz")) if proc.returncode == 0 else []
    if not archives:
        return False
    unpacked = work / "sdist-x"
    subprocess.run(["tar", "-xzf", str(archives[0]), "-C", str(work), "--one-top-level="
                    + unpacked.name, "--strip-components=1"], check=True)
    if not all((unpacked / p).exists() for p in spec["paths"]):
        shutil.rmtree(unpacked)
        return False
    shutil.rmtree(dest)
    unpacked.rename(dest)
    return True


def run_suite(name: str, host: str, port: int, out: Path, mirror_root: Path | None,
              timeout: int, python: str, paths: list[str] | None = None) -> dict:
    spec = SUITES[name]
    if "go" in spec:
        return run_go_suite(name, host, port, out, timeout)
    with tempfile.TemporaryDirectory(prefix=f"suite-{name}-") as tmp:
        src = source_tree(name, mirror_root, Path(tmp), python)
        for rel, old, new in spec["rewrite"]:
            f = src / rel
            text = f.read_text()
            if old not in text:
                raise SystemExit(f"{name}: '{old}' not found in {rel}; update the rewrite")
            f.write_text(text.replace(old, new.format(host=host, port=port)))
        for rel, marker, extra in spec.get("append", ()):
            f = src / rel
            if marker not in f.read_text():
                f.write_text(f.read_text() + extra)
        env = dict(os.environ, RABBITMQ_HOST=host, RABBITMQ_5672_TCP=str(port),
                   AMQP_URL=f"amqp://guest:guest@{host}:{port}/")
        env.update({k: v.format(host=host, port=port) for k, v in spec.get("env", {}).items()})
        env.pop("PYTHONPATH", None)  # the suite imports the installed library, not ours
        junit = out / f"{name}.xml"
        cmd = [python, "-m", "pytest", *(paths or spec["paths"]), *spec.get("args", ()),
               "-p", "no:cacheprovider",
               "-q", f"--timeout={timeout}", f"--junitxml={junit}", "-o",
               "addopts=", "-W", "ignore::DeprecationWarning"]
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return outcomes(junit)


def outcomes(junit: Path) -> dict:
    """{test id: passed|failed|error|skipped} from a JUnit XML file."""
    result: dict[str, str] = {}
    if not junit.exists():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = {"failure": "failed"}.get(child.tag, child.tag)
        result[tid] = state
    return result


def counts(res: dict) -> dict:
    c = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for s in res.values():
        c[s] += 1
    return c


def compare(a_dir: Path, b_dir: Path) -> int:
    a_label, b_label = a_dir.name, b_dir.name
    for junit in sorted(a_dir.glob("*.xml")):
        a = outcomes(junit)
        b = outcomes(b_dir / junit.name)
        ca, cb = counts(a), counts(b)
        print(f"{junit.stem}: {a_label} {ca['passed']} passed / {ca['failed'] + ca['error']} "
              f"failed / {ca['skipped']} skipped; {b_label} {cb['passed']} passed / "
              f"{cb['failed'] + cb['error']} failed / {cb['skipped']} skipped")
        for tid in sorted(set(a) | set(b)):
            if a.get(tid) != b.get(tid):
                print(f"  {tid}: {a_label} {a.get(tid)}, {b_label} {b.get(tid)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suites", nargs="*", default=list(SUITES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5672)
    p.add_argument("--label", default="broker", help="results go to OUT/LABEL")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "client-suites"))
    p.add_argument("--mirror-root", default=os.environ.get("MIRROR_ROOT", ""))
    p.add_argument("--timeout", type=int, default=60, help="per test, seconds")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs the suites (with their test dependencies)")
    p.add_argument("--paths", nargs="+", help="only these test paths of the suite")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    a = p.parse_args()
    if a.compare:
        return compare(Path(a.compare[0]), Path(a.compare[1]))
    out = Path(a.out) / a.label
    out.mkdir(parents=True, exist_ok=True)
    mirror_root = Path(a.mirror_root) if a.mirror_root else None
    summary = {}
    for name in a.suites:
        res = run_suite(name, a.host, a.port, out, mirror_root, a.timeout, a.python,
                        a.paths)
        summary[name] = counts(res)
        print(name, json.dumps(summary[name]), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
