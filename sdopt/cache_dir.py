"""Where sdopt keeps what it measured or built between processes (int8 programs, tuning results), and
what makes loading from there safe: folders only this user can write, and files signed with this user's
secret (docs/security.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def cache_root(kind: str) -> Path:
    """``$SDOPT_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/sdopt/<kind>``, else ``~/.cache/sdopt/<kind>``.

    Examples:
        >>> import os
        >>> from sdopt.cache_dir import cache_root
        >>> os.environ["SDOPT_CACHE_DIR"] = "/tmp/sdopt-example"
        >>> str(cache_root("tune"))
        '/tmp/sdopt-example/tune'
        >>> del os.environ["SDOPT_CACHE_DIR"]
    """
    if os.environ.get("SDOPT_CACHE_DIR"):
        return Path(os.environ["SDOPT_CACHE_DIR"]) / kind
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdopt" / kind


class UntrustedCacheError(PermissionError):
    """A cache folder others can write to: what sdopt would load from it could be theirs."""


def check_trusted(path: Path) -> None:
    """Raise `UntrustedCacheError` unless ``path`` and every existing folder above it belong to this user or
    to root, and none of them can be written by others (a sticky folder such as /tmp excepted above the
    cache itself). Compiled programs and kernels are loaded from caches: a folder another user can write
    to is a way to run their code in this process.

    Examples:
        >>> import tempfile, pathlib
        >>> from sdopt.cache_dir import check_trusted
        >>> check_trusted(pathlib.Path(tempfile.mkdtemp()))  # a fresh temp folder is this user's, mode 700
    """
    import stat

    uid = os.getuid() if hasattr(os, "getuid") else None
    path = Path(path).expanduser().absolute()
    for index, folder in enumerate([path, *path.parents]):
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue  # made later, by this user, with this process's umask
        if uid is None:  # no POSIX owners (Windows): nothing to check this way
            return
        others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = info.st_mode & stat.S_ISVTX and index > 0  # /tmp above the cache: others cannot replace ours
        if info.st_uid not in (uid, 0) or (others_write and not sticky):
            raise UntrustedCacheError(
                f"{folder} can be written by other users (owner uid {info.st_uid}, mode "
                f"{stat.filemode(info.st_mode)}), so sdopt will not load compiled code from {path}; use a folder "
                "only you can write (chmod go-w, or set SDOPT_CACHE_DIR)"
            )


def mac_key() -> bytes:
    """This user's secret for signing what sdopt caches (created on first use, mode 0600)."""
    path = cache_root("secret")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(os.urandom(32))
    check_trusted(path.parent)
    info = path.stat()
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        raise UntrustedCacheError(f"{path} must be this user's and mode 0600 (chmod 600 {path})")
    return path.read_bytes()


def sign(*files: Path) -> str:
    """The keyed MAC of ``files``' contents, in order (see `mac_key`)."""
    return _mac((Path(file).name, _blocks(file)) for file in files)


def _blocks(file: Path) -> Iterator[bytes]:
    with open(file, "rb") as handle:
        yield from iter(lambda: handle.read(1 << 20), b"")


def _mac(named: Iterable[tuple[str, Iterable[bytes | memoryview]]]) -> str:
    """The keyed MAC of named contents, each given as its pieces: the one layout `sign` (files read in
    blocks) and `sign_data` (bytes in memory or mapped) share, so each checks what the other signed."""
    import hashlib
    import hmac

    digest = hmac.new(mac_key(), digestmod=hashlib.sha256)
    for name, pieces in named:
        for piece in pieces:
            digest.update(piece)
        digest.update(b"\0" + name.encode() + b"\0")
    return digest.hexdigest()


def signed(mac: str, *files: Path) -> bool:
    """Whether ``mac`` is `sign` of ``files``: made by this user's sdopt, unchanged since."""
    import hmac

    return hmac.compare_digest(mac, sign(*files))


def sign_data(*named: tuple[str, bytes | memoryview]) -> str:
    """`sign` of files with these names and contents, given as data in memory or mapped: what is signed or
    checked is then exactly what is written or used, with no second read of the file.

    Examples:
        >>> import pathlib, tempfile
        >>> from sdopt.cache_dir import sign, sign_data
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "blob"
        >>> _ = path.write_bytes(b"compiled")
        >>> sign_data(("blob", b"compiled")) == sign(path), sign_data(("blob", b"planted")) == sign(path)
        (True, False)
    """
    return _mac((name, (data,)) for name, data in named)


def signed_data(mac: str, *named: tuple[str, bytes | memoryview]) -> bool:
    """Whether ``mac`` is `sign_data` of ``named``: made by this user's sdopt, unchanged since."""
    import hmac

    return hmac.compare_digest(mac, sign_data(*named))


def sign_text(text: str) -> str:
    """The keyed MAC of ``text`` (a small note kept beside a cache entry; see `mac_key`)."""
    import hashlib
    import hmac

    return hmac.new(mac_key(), text.encode("utf-8"), digestmod=hashlib.sha256).hexdigest()


def signed_text(mac: str, text: str) -> bool:
    """Whether ``mac`` is `sign_text` of ``text``.

    Examples:
        >>> from sdopt.cache_dir import sign_text, signed_text
        >>> signed_text(sign_text("accepted at 31.5 dB"), "accepted at 31.5 dB")
        True
        >>> signed_text(sign_text("accepted at 31.5 dB"), "accepted at 91.5 dB")
        False
    """
    import hmac

    return hmac.compare_digest(mac, sign_text(text))
