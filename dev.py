"""The project's two entry points, for a fresh clone with nothing but Python 3.11+.

    python3 dev.py bench   # run the benchmarks: ratios against the stdlib floor and the peers
    python3 dev.py test    # run ruff, mypy --strict and the whole test suite

Each makes (or reuses) a virtual environment in .venv-<python version>, installs the package with
what that command needs, and runs it. Extra arguments go to the underlying tool (pytest, or the
benchmark runner). ``--python PATH`` picks another interpreter, e.g. to run the suite on 3.13.

``bench`` alone is the default run, about 3 minutes on 2 cores: every family and its headline
groups, with fewer rounds and smaller blocks. ``bench --full`` runs every group with the most
rounds (about 10 minutes), ``bench --quick`` is a smoke run (about a minute), and ``bench --only
FAMILY ...`` picks families; ``bench --help`` lists the runner's options.

``--python 3.14`` (a bare version) takes ``python3.14`` from PATH if one runs, else pyenv's 3.14;
failing both, Debian's build of that version from the unstable suite, fetched once into
~/.cache/asyncbridge/python3.14 (17 MB of packages, 52 MB unpacked, about 15 s): apt-get, with a
sources list, package lists and state of its own there (the machine's apt configuration is not
touched, and no root is needed), downloads python3.14-minimal, libpython3.14-stdlib, the shared
libraries they need (a newer glibc among them), Debian's pip wheel and patchelf; dpkg-deb unpacks
them there, and patchelf points the interpreter at the unpacked loader and libraries, so that it,
its venv and its child processes run as any python does. The venv gets its pip from that wheel
(Debian's ensurepip would take the machine's own, older one). This needs apt-get, apt-cache,
dpkg-deb and Debian's archive keyring: Debian, or a derivative with debian-archive-keyring.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asyncbridge"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def venv_for(python: str, pip_wheel: Path | None = None) -> Path:
    """The venv of ``python`` (made if missing or broken). With ``pip_wheel``, pip comes from that
    wheel rather than from the interpreter's ensurepip."""
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    venv = ROOT / f".venv-{version}"
    vpython = venv / "bin" / "python"
    # A venv whose base interpreter is gone (a deleted cache) has a dangling bin/python: make it anew.
    if not (vpython.exists() and subprocess.run([vpython, "-c", ""]).returncode == 0):
        if pip_wheel is None:
            subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        else:
            subprocess.run([python, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
            # A wheel is a zip that Python can run from: pip installs itself out of its own wheel.
            quiet = ["-q", "--disable-pip-version-check", "--no-index"]
            subprocess.run([vpython, f"{pip_wheel}/pip", "install", *quiet, str(pip_wheel)], check=True)
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


def find_python(version: str) -> tuple[str, Path | None]:
    """An interpreter for a bare ``version`` such as "3.14": ``python3.14`` from PATH if it runs, else
    pyenv's, else Debian's, fetched into the cache; with the pip wheel its venv must use (Debian's)."""
    found = shutil.which(f"python{version}")
    # pyenv puts a shim on PATH for every version it knows, and the shim fails unless that version is
    # selected: only an interpreter that runs counts.
    if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
        return found, None
    if shutil.which("pyenv"):
        prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True)
        candidate = Path(prefix.stdout.strip()) / "bin" / f"python{version}"
        if prefix.returncode == 0 and candidate.exists():
            return str(candidate), None
    return debian_python(version)


def debian_python(version: str) -> tuple[str, Path]:
    """Debian's build of ``python<version>`` unpacked under CACHE (the module docstring says how),
    fetched on first use; the interpreter and Debian's pip wheel."""
    home = CACHE / f"python{version}"
    tree = home / "root"
    python = tree / "usr" / "bin" / f"python{version}"
    usable = python.exists() and subprocess.run([python, "-c", "import ssl"]).returncode == 0
    if not usable:
        fetch_debian_python(version, home)
    return str(python), max((tree / "usr" / "share" / "python-wheels").glob("pip-*.whl"))


def fetch_debian_python(version: str, home: Path) -> None:
    missing = [t for t in ("apt-get", "apt-cache", "dpkg-deb") if not shutil.which(t)]
    if not DEBIAN_KEYRING.exists():
        missing.append(f"{DEBIAN_KEYRING} (package debian-archive-keyring)")
    if missing:
        sys.exit(
            f"python{version} is not on PATH, and fetching Debian's build needs Debian's apt tools and "
            f"archive keyring; missing here: {', '.join(missing)}. Or pass --python PATH"
        )
    print(f"python{version} is neither on PATH nor in pyenv: fetching Debian's into {home}", flush=True)
    shutil.rmtree(home, ignore_errors=True)  # a partial earlier attempt
    state = home / "apt"
    for folder in ("lists/partial", "cache", "sources.list.d", "preferences.d"):
        (state / folder).mkdir(parents=True)
    # An empty status file: apt resolves against nothing installed here, and installs nothing.
    (state / "status").touch()
    sources = state / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {debian_mirror()} unstable main\n")
    apt_options = [
        f"-oDir::Etc::sourcelist={sources}",
        f"-oDir::Etc::sourceparts={state / 'sources.list.d'}",  # empty: none of the machine's
        f"-oDir::Etc::preferences={state / 'preferences'}",  # the machine's pins are for its suite
        f"-oDir::Etc::preferencesparts={state / 'preferences.d'}",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::State::status={state / 'status'}",
        f"-oDir::Cache={state / 'cache'}",
        # apt as root hands downloads to its '_apt' user, who may not write into this folder
        f"-oAPT::Sandbox::User={getpass.getuser()}",
    ]
    run(["apt-get", *apt_options, "-qq", "update"])
    wanted = [f"python{version}-minimal", f"libpython{version}-stdlib", "python3-pip-whl", "patchelf"]
    names = debian_libraries(apt_options, wanted)
    debs = home / "debs"
    debs.mkdir()
    print(f"+ apt-get download {' '.join(names)}", flush=True)
    subprocess.run(["apt-get", *apt_options, "-qq", "download", *names], cwd=debs, check=True)
    partial = home / "root.partial"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
    loader = next(partial.glob("usr/lib/*/ld-linux*.so.*"))
    tree = home / "root"
    final_loader = tree / loader.relative_to(partial)
    # patchelf (unpacked with the rest, so the machine needs none) runs on the new libc, by its loader.
    patchelf = [str(loader), "--library-path", str(loader.parent), str(partial / "usr" / "bin" / "patchelf")]
    binary = str(partial / "usr" / "bin" / f"python{version}")
    # DT_RPATH, not DT_RUNPATH: only RPATH also serves the extension modules the interpreter loads
    # later (_ssl needs the new libssl, which the machine's older one lacks). Two calls, the rpath
    # first: patchelf 0.18 given both at once, or the interpreter first, writes a binary that crashes.
    run([*patchelf, "--force-rpath", "--set-rpath", str(final_loader.parent), binary])
    run([*patchelf, "--set-interpreter", str(final_loader), binary])
    partial.rename(tree)
    shutil.rmtree(debs)
    shutil.rmtree(state)  # the package lists (23 MB) served this fetch only
    python = tree / "usr" / "bin" / f"python{version}"
    run([str(python), "-c", "import sys, ssl, sqlite3, ctypes, lzma, bz2, zlib, decimal; print(sys.version)"])


def debian_libraries(apt_options: list[str], wanted: list[str]) -> list[str]:
    """``wanted`` and the library packages they need, through Depends and Pre-Depends (the first of
    each set of alternatives). Only libraries are followed (Debian names them lib*, and zlib1g): the
    data and configuration packages also named (tzdata, netbase, media-types, debconf) are not needed
    to run the interpreter, and nothing here is installed."""
    names: set[str] = set()
    todo = list(wanted)
    while todo:
        names.update(todo)
        out = subprocess.run(
            ["apt-cache", *apt_options, "depends", *todo], check=True, capture_output=True, text=True
        ).stdout
        todo = []
        after_or = False  # the line after a "|" line is a later alternative of the same dependency
        for line in out.splitlines():
            m = re.match(r" ([ |])(?:Pre)?Depends: (\S+)$", line)
            if m is None:
                continue
            first, after_or = not after_or, m[1] == "|"
            name = m[2]
            if first and name.startswith(("lib", "zlib")) and name not in names and name not in todo:
                todo.append(name)
    return sorted(names)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (it may reach no other), else the default."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for m in re.finditer(r"^(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(\S+)", text, re.MULTILINE):
            uri = m[1].rstrip("/")
            if uri.endswith("/debian"):  # not debian-security, nor another vendor's
                return uri
    return "http://deb.debian.org/debian"


def main(argv: list[str]) -> None:
    python = sys.executable
    pip_wheel = None
    if "--python" in argv:
        i = argv.index("--python")
        python = argv[i + 1]
        del argv[i : i + 2]
    if not argv or argv[0] not in ("test", "bench"):
        sys.exit(__doc__)
    what, rest = argv[0], argv[1:]
    if re.fullmatch(r"\d+\.\d+", python):
        python, pip_wheel = find_python(python)
    ensure_redis_server()
    venv = venv_for(python, pip_wheel)
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
