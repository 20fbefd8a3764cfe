"""moto is the demo's extra: without it the demo says how to get it in one line, and every
other module of the package imports and runs without it."""

from __future__ import annotations

import subprocess
import sys

# `sys.modules["moto"] = None` makes any `import moto` fail as if it were not installed.
HIDE_MOTO = "import sys; sys.modules['moto'] = None; "


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_MOTO + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_the_demo_without_moto_says_how_to_install_it() -> None:
    done = python("import supervisor.demo")

    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "needs moto" in done.stderr
    assert "ec2-run-supervisor[demo]" in done.stderr


def test_nothing_outside_the_demo_needs_moto() -> None:
    # iter_modules, not walk_packages: that one would import supervisor.demo to look inside.
    done = python(
        "import importlib, pkgutil, supervisor\n"
        "def walk(path, prefix):\n"
        "    for found in pkgutil.iter_modules(path, prefix):\n"
        "        if found.name == 'supervisor.demo':\n"
        "            continue\n"
        "        module = importlib.import_module(found.name)\n"
        "        if found.ispkg:\n"
        "            walk(module.__path__, found.name + '.')\n"
        "walk(supervisor.__path__, 'supervisor.')\n"
        "print('imported')"
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
