"""The lab's signed apt repository: index the .deb files and sign the Release.

The layout is a plain "dists + pool" repository that apt reads with a
``signed-by`` source line, exactly like PGDG in production:

    pool/main/<file>.deb
    dists/<suite>/main/binary-amd64/Packages(.gz)
    dists/<suite>/Release, InRelease (clear-signed), Release.gpg
    lab-repo.asc (the public key)

The index is written here in Python from ``dpkg-deb --field`` output, so the
machine needs no apt-utils/dpkg-dev; signing uses gpg with a throw-away home.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .topology import REPO_COMPONENT, REPO_SUITE
from .util import LabError, run

ARCH = "amd64"
PUBLIC_KEY_NAME = "lab-repo.asc"


def _file_hashes(path: Path) -> tuple[int, str, str]:
    md5 = hashlib.md5()
    sha256 = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            size += len(block)
            md5.update(block)
            sha256.update(block)
    return size, md5.hexdigest(), sha256.hexdigest()


def _stanza(repo_dir: Path, deb: Path) -> str:
    control = run(["dpkg-deb", "--field", deb], what=f"dpkg-deb --field {deb.name}").stdout.rstrip("\n")
    size, md5, sha256 = _file_hashes(deb)
    relative = deb.relative_to(repo_dir).as_posix()
    return f"{control}\nFilename: {relative}\nSize: {size}\nMD5sum: {md5}\nSHA256: {sha256}\n"


def index_repository(repo_dir: Path) -> int:
    """Write the Packages indexes and the unsigned Release for every .deb under pool/; return the count."""
    debs = sorted((repo_dir / "pool").rglob("*.deb"))
    if not debs:
        raise LabError(f"no .deb files under {repo_dir / 'pool'}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        stanzas = list(pool.map(lambda deb: _stanza(repo_dir, deb), debs))
    packages = "\n".join(stanzas).encode("utf-8")

    dist = repo_dir / "dists" / REPO_SUITE
    binary_dir = dist / REPO_COMPONENT / f"binary-{ARCH}"
    binary_dir.mkdir(parents=True, exist_ok=True)
    (binary_dir / "Packages").write_bytes(packages)
    # mtime=0: the same packages give the same bytes, whenever they are indexed.
    (binary_dir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))

    lines = [
        "Origin: kbpg-lab",
        "Label: kbpg-lab",
        f"Suite: {REPO_SUITE}",
        f"Codename: {REPO_SUITE}",
        # apt wants RFC 2822 in UTC; strftime's names are the C locale's here.
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        f"Architectures: {ARCH}",
        f"Components: {REPO_COMPONENT}",
        "Description: kbpg local lab repository (the cluster's packages, offline)",
    ]
    md5_lines, sha256_lines = [], []
    for index in ("Packages", "Packages.gz"):
        path = binary_dir / index
        size, md5, sha256 = _file_hashes(path)
        relative = path.relative_to(dist).as_posix()
        md5_lines.append(f" {md5} {size:>10} {relative}")
        sha256_lines.append(f" {sha256} {size:>10} {relative}")
    lines += ["MD5Sum:", *md5_lines, "SHA256:", *sha256_lines]
    (dist / "Release").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(debs)


def sign_repository(repo_dir: Path) -> Path:
    """Make a fresh lab signing key, sign dists/<suite>/Release (InRelease + Release.gpg), export the public key.

    The private key lives only in a temporary GnuPG home and is destroyed here:
    a rebuilt repository gets a new key, and nothing secret stays on disk.
    """
    dist = repo_dir / "dists" / REPO_SUITE
    # A short home path: gpg-agent's socket path must fit in sun_path.
    home = Path(tempfile.mkdtemp(prefix="kbpglab-gpg-", dir="/tmp"))
    env = dict(os.environ, GNUPGHOME=str(home), LC_ALL="C")
    gpg = ["gpg", "--batch", "--no-tty", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        run(
            [*gpg, "--quick-generate-key", "kbpg lab repository <lab@kbpg.test>", "ed25519", "sign", "never"],
            env=env,
            what="gpg key generation",
        )
        run([*gpg, "--yes", "--clearsign", "--digest-algo", "SHA512", "-o", dist / "InRelease", dist / "Release"], env=env, what="gpg clearsign")
        run([*gpg, "--yes", "--detach-sign", "--armor", "--digest-algo", "SHA512", "-o", dist / "Release.gpg", dist / "Release"],
            env=env, what="gpg sign")
        public = run([*gpg, "--armor", "--export"], env=env, what="gpg export").stdout
        if "BEGIN PGP PUBLIC KEY BLOCK" not in public:
            raise LabError("gpg exported no public key for the lab repository")
        key_path = repo_dir / PUBLIC_KEY_NAME
        key_path.write_text(public, encoding="utf-8")
        return key_path
    finally:
        run(["gpgconf", "--homedir", home, "--kill", "all"], check=False, env=env)
        shutil.rmtree(home, ignore_errors=True)
