"""What to say when a file is refused for its permissions: who this process is, who owns the file
or folder, and the fix. The images run as uid 10001, so a key file or a bind-mounted folder that
belongs to someone else is a trap that a bare "Permission denied" leaves unexplained."""

import errno
import os
import stat


def is_permission_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)


def _describe(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} cannot be examined either"
    return f"{path} belongs to uid {st.st_uid} (gid {st.st_gid}), mode {stat.filemode(st.st_mode)}"


def read_hint(path: str) -> str:
    """Why a file cannot be read by this process, and how to let it (for an EACCES/EPERM)."""
    uid = os.geteuid()
    return (f"this process runs as uid {uid} and {_describe(path)}: make it readable by uid "
            f"{uid} (`chmod a+r` or `chown {uid}` the file; a file mounted into a container, "
            "compose secrets included, keeps its owner and mode from the host)")


def write_hint(path: str) -> str:
    """Why a file cannot be created or written by this process, and how to let it: the file
    when it exists, else the folder it would be created in."""
    uid = os.geteuid()
    target = path if os.path.lexists(path) else (os.path.dirname(path) or ".")
    kind = "folder" if os.path.isdir(target) else "file"
    return (f"this process runs as uid {uid} and {_describe(target)}: make it writable by "
            f"uid {uid} (`chown {uid}` the {kind}; a bind mount keeps the host's owner, a named "
            "Docker volume starts owned by the image's user), or give another path")


def writable(path: str) -> bool:
    """Whether this process may write `path`, judged by its effective ids (as the kernel does)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)
