#!/usr/bin/python3
"""Make pyproject.toml readable by a setuptools older than 77 (Debian 12 has 66).

pyproject.toml states the license the PEP 639 way: `license = "Apache-2.0"` (an SPDX
expression) and `license-files`. setuptools learned both in 77 and rejects them
before; it knows `license = { text = "..." }`, and picks LICENSE up by itself. With
a setuptools that knows PEP 639, the file is left as it is. Edits the file in place:
debian/rules runs it on a copy of the source (debian/.pysrc), never on the checkout.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import setuptools


def convert(text: str) -> str:
    text, n = re.subn(r'(?m)^license = "([^"]+)"$', r'license = { text = "\1" }', text)
    if n != 1:
        sys.exit('pep639_compat: no `license = "..."` line in [project]')
    return re.sub(r"(?m)^license-files = \[[^\]]*\]\n", "", text)


def main(path: str) -> None:
    major = int(setuptools.__version__.split(".")[0])
    if major >= 77:
        return
    file = Path(path)
    file.write_text(convert(file.read_text()))


if __name__ == "__main__":
    main(sys.argv[1])
