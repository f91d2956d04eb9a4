"""The project's two entry points, for a fresh clone with nothing but Python 3.11+.

    python3 dev.py bench   # run the benchmarks: ratios against the stdlib floor and the peers
    python3 dev.py test    # run ruff, mypy --strict and the whole test suite

Each makes (or reuses) a virtual environment in .venv-<python version>, installs the package with
what that command needs, and runs it. Extra arguments go to the underlying tool (pytest, or the
benchmark runner). ``--python PATH`` picks another interpreter, e.g. to run the suite on 3.13.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def venv_for(python: str) -> Path:
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    venv = ROOT / f".venv-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip(venv, "install", "-q", "--upgrade", "pip")
    return venv


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], check=True)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        sys.exit(code)


def ensure_redis_server() -> None:
    """The Celery tests and the Celery benchmark family start a real ``redis-server`` of their own.
    If none is installed and Debian's apt is at hand (as root, or through a sudo that asks no
    password), install it; otherwise say so: those tests and that family then skip, naming why
    (under CI=true the tests fail instead)."""
    if shutil.which("redis-server"):
        return
    as_root: list[str] | None = None
    if shutil.which("apt-get"):
        if os.geteuid() == 0:
            as_root = []
        elif shutil.which("sudo"):
            no_password = subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
            as_root = ["sudo", "-n"] if no_password else None
    if as_root is None:
        print("redis-server is not installed and cannot be installed here (no apt, or no root): the Redis")
        print("tests and the Celery benchmarks will skip. Debian: apt-get install redis-server", flush=True)
        return
    apt = [*as_root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    run([*apt, "update", "-qq"])
    run([*apt, "install", "-y", "-qq", "--no-install-recommends", "redis-server"])
    # Debian starts a system redis on 6379; the tests and benchmarks use their own, on free ports.
    subprocess.run([*as_root, "service", "redis-server", "stop"], capture_output=True)


def main(argv: list[str]) -> None:
    python = sys.executable
    if "--python" in argv:
        i = argv.index("--python")
        python = argv[i + 1]
        del argv[i : i + 2]
    if not argv or argv[0] not in ("test", "bench"):
        sys.exit(__doc__)
    what, rest = argv[0], argv[1:]
    ensure_redis_server()
    venv = venv_for(python)
    bin_ = venv / "bin"
    extra = "test" if what == "test" else "bench"
    # A real (non-editable) install: the tests import what a user would install, py.typed included.
    pip(venv, "install", "-q", "--disable-pip-version-check", f"{ROOT}[{extra}]")
    pip(venv, "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps", str(ROOT))
    if what == "bench":
        run([str(bin_ / "python"), "-m", "benchmarks", *rest])
        return
    if not rest:  # the full check; with arguments, just the tests asked for
        run([str(bin_ / "ruff"), "check", "."])
        run([str(bin_ / "ruff"), "format", "--check", "."])
        run([str(bin_ / "mypy")])
    env_note = os.environ.get("ASYNCBRIDGE_SOAK")
    if env_note:
        print(f"ASYNCBRIDGE_SOAK={env_note}: stress counts multiplied", flush=True)
    run([str(bin_ / "pytest"), *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
