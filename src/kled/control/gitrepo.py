"""The one door to git: shallow fetches into a local cache, and reading a commit's files.

GitOps (issue 18) runs the ``git`` binary rather than a library: it speaks every transport
(``file://``, ``git://``, ``ssh://``, ``https://``) the way users' own git does, and its
messages are the ones users know, so they go into a source's status as they are.

Each source has a bare repository of its own under the server's data dir; a fetch is
``git fetch --depth 1`` of the one ref into it, so a repository's history never comes
over the wire. Reading is bounded before any blob is read: at most ``max_files`` files
under the source's path and ``max_blob_bytes`` per YAML file, each refusal naming its
limit. Credentials reach git through its environment (never the command line, which
other users of the host can read): a token as an HTTP header, an SSH key as a file of
mode 0600 that lives only for the fetch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kled.errors import KledError

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILES = 10_000
MAX_BLOB_BYTES = 1024 * 1024
FETCH_TIMEOUT = 120.0


class GitError(KledError):
    """git failed or refused: ``message`` carries git's own words."""


@dataclass(frozen=True)
class Auth:
    """What a fetch authenticates with: a token (HTTP) or an SSH private key."""

    token: str | None = None
    ssh_key: str | None = None


@dataclass
class Tree:
    """The YAML files of one commit under a path: repository path → text."""

    commit: str
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    max_files: int = MAX_FILES
    max_blob_bytes: int = MAX_BLOB_BYTES


async def run_git(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> bytes:
    """Run ``git args`` and return its stdout; raise GitError with its stderr on failure."""
    full_env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "LC_ALL": "C",
        **(env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]} took longer than {timeout:.0f} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise GitError(_last_words(err) or f"git {args[0]} exited with {proc.returncode}")
    return out


def _last_words(stderr: bytes) -> str:
    """git's message, one line: its ``fatal:``/``error:`` lines, else the last line."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    told = [ln for ln in lines if ln.startswith(("fatal:", "error:", "ERROR:"))]
    return "; ".join(told or lines[-1:])[:500]


class GitCache:
    """Bare repositories, one per source, under ``root``."""

    def __init__(self, root: Path, limits: Limits | None = None) -> None:
        self.root = root
        self.limits = limits or Limits()

    def repo_of(self, team: str, name: str) -> Path:
        return self.root / team / name

    def forget(self, team: str, name: str) -> None:
        shutil.rmtree(self.repo_of(team, name), ignore_errors=True)

    async def fetch(self, team: str, name: str, url: str, ref: str, auth: Auth) -> str:
        """Fetch ``ref`` of ``url`` (depth 1) and return the commit it names."""
        repo = self.repo_of(team, name)
        if not (repo / "HEAD").exists():
            repo.mkdir(parents=True, exist_ok=True)
            await run_git("init", "--bare", "--quiet", str(repo))
        with _credentials(auth, repo) as env:
            await run_git(
                "fetch", "--depth", "1", "--no-tags", "--quiet", "--", url, ref,
                cwd=repo, env=env,
            )  # fmt: skip
        commit = (await run_git("rev-parse", "FETCH_HEAD^{commit}", cwd=repo)).decode().strip()
        # a ref of its own keeps the commit from git's garbage collection until the next
        await run_git("update-ref", "refs/kled/fetched", commit, cwd=repo)
        return commit

    async def read(self, team: str, name: str, commit: str, path: str) -> Tree:
        """The YAML/JSON files of ``commit`` under ``path``, within the limits."""
        repo = self.repo_of(team, name)
        spec: list[str] = []
        if path not in ("", "."):
            spec = ["--", path]
            try:
                kind = await run_git("cat-file", "-t", f"{commit}:{path}", cwd=repo)
            except GitError:
                kind = b"missing"
            if kind.strip() != b"tree":
                raise GitError(f"path {path!r} is not a folder in commit {commit[:12]}")
        listing = await run_git("ls-tree", "-r", "-l", "-z", commit, *spec, cwd=repo)
        entries = [e for e in listing.split(b"\0") if e]
        if len(entries) > self.limits.max_files:
            raise GitError(
                f"{len(entries)} files under {path!r}: over the limit of "
                f"{self.limits.max_files} files a source may hold"
            )
        wanted: list[tuple[str, str]] = []
        for entry in entries:
            head, _, file_path = entry.partition(b"\t")
            _mode, kind_word, sha, size = head.split()
            name_text = file_path.decode(errors="replace")
            if kind_word != b"blob" or not name_text.endswith(SUFFIXES):
                continue
            if int(size) > self.limits.max_blob_bytes:
                raise GitError(
                    f"{name_text} is {int(size)} bytes: over the limit of "
                    f"{self.limits.max_blob_bytes} bytes per document file"
                )
            wanted.append((name_text, sha.decode()))
        tree = Tree(commit)
        if not wanted:
            return tree
        batch = await run_git(
            "cat-file", "--batch", cwd=repo, stdin="".join(f"{s}\n" for _, s in wanted).encode()
        )
        offset = 0
        for file_name, _sha in wanted:
            header_end = batch.index(b"\n", offset)
            length = int(batch[offset:header_end].split()[2])
            body = batch[header_end + 1 : header_end + 1 + length]
            offset = header_end + 1 + length + 1
            tree.files[file_name] = body.decode("utf-8", errors="replace")
        return tree


@contextlib.contextmanager
def _credentials(auth: Auth, repo: Path) -> Iterator[dict[str, str]]:
    """git's environment for ``auth``: config from variables, a key file for the fetch."""
    env: dict[str, str] = {}
    config: list[tuple[str, str]] = []
    key_dir: str | None = None
    try:
        if auth.token:
            basic = base64.b64encode(f"x-access-token:{auth.token}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
        if auth.ssh_key:
            key_dir = tempfile.mkdtemp(prefix="kled-git-")
            key_file = Path(key_dir) / "key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(auth.ssh_key.rstrip("\n") + "\n")
            known = repo / "known_hosts"
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known}"
            )
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        yield env
    finally:
        if key_dir is not None:
            shutil.rmtree(key_dir, ignore_errors=True)
