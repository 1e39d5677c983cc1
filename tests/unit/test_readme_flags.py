"""The README's table names every setting `warren` takes (flag and variable)."""

from __future__ import annotations

import re
from dataclasses import fields

from node.config import Settings
from tests.nodeproc import REPO


def test_every_setting_is_in_the_readme():
    text = (REPO / "README.md").read_text()
    table = text.split("## Running a node", 1)[1].split("\n## ", 1)[0]
    flags = set(re.findall(r"`(--[a-z0-9-]+)`", table))
    missing = [f"--{f.name.replace('_', '-')}" for f in fields(Settings)
               if f"--{f.name.replace('_', '-')}" not in flags]
    assert not missing, f"README's settings table lacks {missing}"
