"""Package source and package installs, the same way for PGDG in production and the lab's repository.

The source is a setting: ``pgdg`` (PostgreSQL's own repository, key from the
distro's postgresql-common), ``distro`` (the OS's own packages) or ``custom``
(a URL, suite and signing key: a mirror, or the lab's repository).
"""

from __future__ import annotations

import shlex

from ..engine import TaskError, TaskRun
from ..files import resolve
from ..settings import PackageSettings

SOURCES_FILE = "/etc/apt/sources.list.d/kbpg.list"
KEYRING_DIR = "/etc/apt/keyrings"
PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"
PGDG_URL = "https://apt.postgresql.org/pub/repos/apt"
APT_GET = "apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"


def _custom_key(run: TaskRun, packages: PackageSettings) -> tuple[bytes, str]:
    path = resolve(run.ctx.workdir, packages.key_file)
    try:
        key = open(path, "rb").read()
    except OSError as exc:
        raise TaskError(f"packages.key_file: cannot read {path}: {exc.strerror}") from None
    armored = key.lstrip().startswith(b"-----BEGIN PGP")
    return key, f"{KEYRING_DIR}/kbpg.{'asc' if armored else 'gpg'}"


def ensure_source(run: TaskRun) -> bool:
    """Configure the package source on this task's host; returns True if anything changed (and apt was updated)."""
    packages = run.settings.packages
    connection = run.connection()
    changed = False
    if packages.source == "distro":
        removed = run.run(f"if [ -e {SOURCES_FILE} ]; then rm -f {SOURCES_FILE}; echo removed; fi").stdout.strip()
        changed = removed == "removed"
    else:
        if packages.source == "pgdg":
            # PGDG's signing key ships in the distro's postgresql-common: no key download from the network.
            present = run.run(f"test -f {PGDG_KEY} && echo yes || true").stdout.strip() == "yes"
            if not present:
                run.run(f"{APT_GET} update && {APT_GET} install --no-install-recommends postgresql-common ca-certificates",
                        what="installing postgresql-common (PGDG's key)")
                changed = True
            codename = run.run(". /etc/os-release; echo $VERSION_CODENAME").stdout.strip()
            line = f"deb [signed-by={PGDG_KEY}] {PGDG_URL} {codename}-pgdg main\n"
        else:
            key, key_path = _custom_key(run, packages)
            changed |= connection.upload(key_path, key, mode=0o644)
            line = f"deb [signed-by={key_path}] {packages.url} {packages.suite} {' '.join(packages.components)}\n"
        changed |= connection.upload(SOURCES_FILE, "# written by kbpg\n" + line, mode=0o644)
    if changed:
        run.run(f"{APT_GET} update", what="apt-get update")
    return changed


def installed_versions(run: TaskRun, names: list[str]) -> dict[str, str]:
    """Installed version of each package ('' when not installed)."""
    script = " ".join(shlex.quote(n) for n in names)
    result = run.run(
        f"for p in {script}; do v=$(dpkg-query -W -f='${{Status}} ${{Version}}' \"$p\" 2>/dev/null); "
        "case \"$v\" in 'install ok installed '*) echo \"$p ${v##* }\";; *) echo \"$p -\";; esac; done"
    )
    versions = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        versions[name] = "" if version == "-" else version
    return versions


def ensure_installed(run: TaskRun, names: list[str]) -> list[str]:
    """Install whatever of ``names`` is missing; returns what was installed."""
    missing = [name for name, version in installed_versions(run, names).items() if not version]
    if not missing:
        return []
    quoted = " ".join(shlex.quote(n) for n in missing)
    candidates = run.run(f"apt-cache policy {quoted} | awk '/^[^ ]/{{p=$1}} /Candidate:/{{print p, $2}}'").stdout
    without = [line.split(":")[0] for line in candidates.splitlines() if line.endswith("(none)")]
    listed = {line.split(":")[0] for line in candidates.splitlines() if line.strip()}
    # A package the lists do not know at all prints nothing: stale lists too, or a re-run would fail forever.
    unknown = [name for name in missing if name not in listed]
    if without or unknown:
        run.run(f"{APT_GET} update", what="apt-get update")
    run.run(f"{APT_GET} install --no-install-recommends {quoted}", what=f"installing {', '.join(missing)}",
            timeout=max(run.settings.ssh.command_timeout, 600))
    return missing
