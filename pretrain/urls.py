"""Where pretraining data lives: a local path or an fsspec URL (s3://, gs://, memory://, file://, ...).

Sources (`pretrain.data`) and token shards (`pretrain.shards`) name their files as strings and go through
these functions. A plain path, or a file:// URL (stripped to its path), takes the local branch: the pathlib
code from before URLs, so a local listing, its item strings and the atomic replace are unchanged. Any other
URL goes through fsspec: the URL's file system is found by its protocol (s3:// needs s3fs installed, gs://
gcsfs), credentials come from the environment as each package reads them. Below a URL, paths are joined with
"/" and the strings handed back (a listing's files) keep the URL's own prefix, chained URLs included.

What is atomic where (`write_text`): locally a file is written beside its target and renamed over it. On an
object store (S3, GCS, Azure) a whole object is replaced by one PUT, which readers see entirely or not at all;
the in-memory file system replaces a dict entry. File systems that write in place (ftp, sftp, a mounted
share through fsspec) give no such guarantee.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from toto_robot.atomic import atomic_write_text

PathLike = str | os.PathLike


def url_to_fs(url: PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path on it) of a local path or an fsspec URL. An unknown protocol, or one whose package is
    not installed, is a ValueError naming the URL (one line: the commands print it as bad input)."""
    text = os.fspath(url)
    for part in text.split("::"):  # a chained URL, simplecache::s3://...: every link must be known
        protocol = fsspec.core.split_protocol(part)[0]
        if protocol is not None and protocol not in fsspec.available_protocols():
            raise ValueError(f"{text}: unknown file system protocol {protocol!r}; expected a local path or a URL "
                             "whose protocol fsspec knows (file://, memory://, s3://, gs://, ...)")
    try:
        return fsspec.core.url_to_fs(text)
    except ImportError as err:  # fsspec knows the protocol, its package is missing ("Install s3fs to access S3")
        raise ValueError(f"{text}: {err}") from None


def local_path(url: PathLike) -> Path | None:
    """`url` as a local Path (a plain path as given, a file:// URL stripped), or None on any other file system."""
    text = os.fspath(url)
    if fsspec.core.split_protocol(text)[0] is None and "::" not in text:
        return Path(text)
    fs, path = url_to_fs(text)
    return Path(path) if isinstance(fs, LocalFileSystem) else None


def location(url: PathLike) -> str:
    """The string a source or a store keeps for `url`: a local path (file:// stripped), or the URL without a
    trailing slash. Checks the protocol, so a bad URL fails where it is configured."""
    local = local_path(url)
    return str(local) if local is not None else os.fspath(url).rstrip("/")


def resolved(url: PathLike) -> str:
    """For messages: a local path made absolute, a URL as it is."""
    local = local_path(url)
    return str(local.resolve()) if local is not None else os.fspath(url)


def join(base: PathLike, *parts: str) -> str:
    """`base` / parts: pathlib's join locally; below a URL, "/" (a part that is itself a URL replaces `base`)."""
    local = local_path(base)
    if local is not None:
        return str(local.joinpath(*parts))
    out = os.fspath(base).rstrip("/")
    for part in parts:
        out = part if "://" in part else f"{out}/{part.lstrip('/')}"
    return out


def parent(url: PathLike) -> str:
    local = local_path(url)
    return str(local.parent) if local is not None else os.fspath(url).rstrip("/").rsplit("/", 1)[0]


def suffix(url: PathLike) -> str:
    """The file extension, lower case: ".mp4"."""
    return PurePosixPath(os.fspath(url)).suffix.lower()


def exists(url: PathLike) -> bool:
    local = local_path(url)
    if local is not None:
        return local.exists()
    fs, path = url_to_fs(url)
    return fs.exists(path)


def is_file(url: PathLike) -> bool:
    local = local_path(url)
    if local is not None:
        return local.is_file()
    fs, path = url_to_fs(url)
    return fs.isfile(path)


def is_dir(url: PathLike) -> bool:
    """A directory; on an object store, a prefix that some object lies under."""
    local = local_path(url)
    if local is not None:
        return local.is_dir()
    fs, path = url_to_fs(url)
    return fs.isdir(path)


def _below(url: PathLike, fs: fsspec.AbstractFileSystem, path: str, found: list[str]) -> list[str]:
    """fsspec paths found under `path` -> strings that start with `url` as the caller wrote it."""
    root, prefix = os.fspath(url).rstrip("/"), path.rstrip("/")
    return [root + p[len(prefix):] if p.startswith(prefix) else fs.unstrip_protocol(p) for p in found]


def find(root: PathLike) -> list[str]:
    """Every file under `root`, recursively (locally `rglob`, not following links to directories)."""
    local = local_path(root)
    if local is not None:
        return [str(p) for p in local.rglob("*") if p.is_file()]
    fs, path = url_to_fs(root)
    return _below(root, fs, path, fs.find(path))


def listdir(url: PathLike) -> list[str]:
    """The entries (files and directories) directly in `url`."""
    local = local_path(url)
    if local is not None:
        return [str(p) for p in local.iterdir()]
    fs, path = url_to_fs(url)
    return _below(url, fs, path, fs.ls(path, detail=False))


def relative(url: PathLike, root: PathLike) -> str | None:
    """`url` below `root` as a posix path ("a/b.mp4"), or None when it is not below it."""
    local, local_root = local_path(url), local_path(root)
    if local is not None and local_root is not None:
        return local.relative_to(local_root).as_posix() if local.is_relative_to(local_root) else None
    if local is not None or local_root is not None:
        return None
    (fs, path), (root_fs, root_path) = url_to_fs(url), url_to_fs(root)
    prefix = root_path.rstrip("/") + "/"
    return path[len(prefix):] if type(fs) is type(root_fs) and path.startswith(prefix) else None


@contextmanager
def open_file(url: PathLike, mode: str = "rb") -> Iterator[IO]:
    """A file object for reading (or writing, where the file system writes in place)."""
    local = local_path(url)
    if local is not None:
        with open(local, mode) as f:
            yield f
        return
    fs, path = url_to_fs(url)
    with fs.open(path, mode) as f:
        yield f


def read_text(url: PathLike) -> str:
    local = local_path(url)
    if local is not None:
        return local.read_text()
    fs, path = url_to_fs(url)
    return fs.cat_file(path).decode()


def read_text_if_any(url: PathLike) -> str | None:
    """The file's text, or None when there is no file. Remotely a plain read, not a listing: a listing that
    fsspec cached earlier (s3fs does) would hide a file another process wrote since, which a poll waits for."""
    local = local_path(url)
    if local is not None:
        return local.read_text() if local.is_file() else None
    fs, path = url_to_fs(url)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def write_text(url: PathLike, text: str) -> None:
    """Replace the file at `url` with `text` (UTF-8): atomic locally and on object stores (module docstring)."""
    local = local_path(url)
    if local is not None:
        atomic_write_text(local, text)
        return
    fs, path = url_to_fs(url)
    fs.pipe_file(path, text.encode("utf-8"))  # one PUT of the whole object


def makedirs(url: PathLike) -> None:
    """Create a directory and its parents (object stores have prefixes, not directories: nothing to create
    below an existing bucket)."""
    local = local_path(url)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        return
    fs, path = url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
