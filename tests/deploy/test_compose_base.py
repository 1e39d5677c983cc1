"""Where the compose test's base image comes from on a machine with a container engine but
no image registry: the Debian base made from Debian's packages (as .ci/run makes it), or
a skip that says why, never an error.  The engine and mmdebstrap here are stand-ins that
answer as podman and mmdebstrap do without a registry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.deploy.test_compose import DEFAULT_BASE, LOCAL_BASE, Engine, choose_base

NO_REGISTRY = ("Error: initializing source docker://python:3.11-slim: pinging container "
               "registry registry-1.docker.io: dial tcp: lookup registry-1.docker.io: no "
               "such host")


def script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a podman that has no images and reaches no registry; its
    `import` keeps what it is given (and its name) in imported.txt."""
    d = tmp_path / "bin"
    d.mkdir()
    script(d / "podman", f"""log={tmp_path}/calls.txt
echo "$*" >> "$log"
case "$1" in
  info) exit 0 ;;
  image) exit 1 ;;
  pull) echo "{NO_REGISTRY}" >&2; exit 125 ;;
  import) /bin/cat > {tmp_path}/imported.txt; echo "$3" >> {tmp_path}/imported.txt; exit 0 ;;
esac
exit 2
""")
    monkeypatch.setenv("PATH", str(d))
    monkeypatch.delenv("WARREN_BASE_IMAGE", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return d


def test_without_registry_or_mmdebstrap_the_test_skips_saying_why(bin_dir):
    with pytest.raises(pytest.skip.Exception) as e:
        choose_base(Engine())
    assert str(e.value) == (
        f"no base image for deploy/Dockerfile: {LOCAL_BASE} cannot be built (mmdebstrap is "
        f"not installed) and {DEFAULT_BASE} cannot be pulled ({NO_REGISTRY})")


def test_without_registry_the_debian_base_is_built(bin_dir, tmp_path):
    script(bin_dir / "mmdebstrap", 'echo "bookworm tarball for $*"\n')
    assert choose_base(Engine()) == LOCAL_BASE
    tarball, name = (tmp_path / "imported.txt").read_text().splitlines()
    assert (tarball.split(" --")[0], name) == ("bookworm tarball for", LOCAL_BASE)
    assert "--include=python3,python3-venv,ca-certificates" in tarball
    assert "pull" not in (tmp_path / "calls.txt").read_text()


def test_failing_mmdebstrap_is_reported(bin_dir):
    script(bin_dir / "mmdebstrap", 'echo "E: cannot reach deb.debian.org" >&2; exit 1\n')
    with pytest.raises(pytest.skip.Exception) as e:
        choose_base(Engine())
    assert "mmdebstrap failed: E: cannot reach deb.debian.org" in str(e.value)


def test_a_base_given_by_the_environment_is_used(bin_dir, monkeypatch):
    monkeypatch.setenv("WARREN_BASE_IMAGE", "localhost/some-base:1")
    assert choose_base(Engine()) == "localhost/some-base:1"
    assert os.environ["PATH"] == str(bin_dir)
