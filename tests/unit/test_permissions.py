"""Permission traps of the non-root images (uid 10001): a key file, task file or data folder this
process may not use is refused with who this process is, who owns the file, and the fix.

The refusals are real: as root the test takes uid 10001 (the images' user) for its effective
ids, around the call only; as anyone else, files and folders are made unusable by their mode.
"""

import contextlib
import os
import shutil
import stat
import tempfile

import pytest
from click.testing import CliRunner

from procfleet.master.journal import Journal
from procfleet.master.results import ResultWriter
from procfleet.master.taskfile import open_source
from procfleet.shared.cli import main
from procfleet.shared.errors import ConfigError
from procfleet.shared.settings import load_authkey

IMAGE_UID = 10001
KEY = "0123456789abcdef0123"


class Place:
    """A folder this test owns, with `key` (unreadable to `user`) and `data/` (unwritable to
    `user`); `user()` runs a block as the user those are closed to."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pfperm-")
        os.chmod(self.root, 0o755)              # uid 10001 may look inside, nothing more
        self.key = os.path.join(self.root, "key")
        with open(self.key, "w") as fh:
            fh.write(KEY)
        self.data = os.path.join(self.root, "data")
        os.mkdir(self.data)
        self.existing = os.path.join(self.data, "existing")
        open(self.existing, "w").close()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chmod(self.key, 0o600)
            os.chmod(self.data, 0o755)
            os.chmod(self.existing, 0o644)
        else:
            os.chmod(self.key, 0)
            os.chmod(self.existing, 0o444)
            os.chmod(self.data, 0o555)
        self.uid = IMAGE_UID if self.as_root else os.geteuid()

    @contextlib.contextmanager
    def user(self):
        if not self.as_root:
            yield
            return
        os.setegid(IMAGE_UID)
        os.seteuid(IMAGE_UID)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    def close(self) -> None:
        os.chmod(self.data, 0o755)
        shutil.rmtree(self.root)


@pytest.fixture
def place():
    p = Place()
    yield p
    p.close()


def refusal(place: Place, call) -> str:
    with place.user(), pytest.raises(ConfigError) as raised:
        call()
    return str(raised.value)


def test_unreadable_key_file_names_the_uid_the_owner_and_the_fix(place):
    message = refusal(place, lambda: load_authkey({"PROCFLEET_AUTHKEY_FILE": place.key}))
    assert f"cannot read PROCFLEET_AUTHKEY_FILE={place.key!r}: Permission denied" in message
    assert f"this process runs as uid {place.uid} and {place.key} belongs to uid " in message
    assert f"make it readable by uid {place.uid} (`chmod a+r` or `chown {place.uid}`" in message


def test_missing_key_file_has_no_permission_hint(place):
    missing = os.path.join(place.root, "none")
    message = refusal(place, lambda: load_authkey({"PROCFLEET_AUTHKEY_FILE": missing}))
    assert "No such file" in message and "runs as uid" not in message


def test_worker_with_unreadable_key_file_is_exit_2_with_the_fix(place):
    with place.user():
        result = CliRunner().invoke(main, ["worker"], env={
            "PROCFLEET_AUTHKEY": "", "PROCFLEET_AUTHKEY_FILE": place.key})
    assert result.exit_code == 2
    assert f"runs as uid {place.uid}" in result.output and "Traceback" not in result.output


def test_results_in_unwritable_folder_names_the_uid_and_the_folder(place):
    path = os.path.join(place.data, "results.jsonl")
    message = refusal(place, lambda: ResultWriter(path))
    assert f"--results {path}: cannot write it: Permission denied" in message
    assert f"this process runs as uid {place.uid} and {place.data} belongs to uid" in message
    assert f"`chown {place.uid}` the folder" in message and "bind mount" in message


def test_unwritable_results_file_names_the_file(place):
    message = refusal(place, lambda: ResultWriter(place.existing))
    assert f"and {place.existing} belongs to uid" in message
    assert f"`chown {place.uid}` the file" in message


def test_journal_in_unwritable_folder_names_the_uid_and_the_folder(place):
    path = os.path.join(place.data, "journal.db")
    message = refusal(place, lambda: Journal(path))
    assert f"--journal {path}: cannot open it for writing: Permission denied" in message
    assert f"runs as uid {place.uid} and {place.data} belongs to" in message


def test_writable_journal_in_unwritable_folder_names_the_folder(place):
    # SQLite's write-ahead log goes beside the journal: a writable file is not enough
    path = os.path.join(place.data, "journal.db")
    os.chmod(place.data, 0o755)
    open(path, "w").close()
    os.chmod(path, 0o666)
    os.chmod(place.data, 0o755 if place.as_root else 0o555)
    message = refusal(place, lambda: Journal(path))
    assert "cannot use it as an SQLite journal" in message
    assert f"runs as uid {place.uid} and {place.data} belongs to" in message
    assert f"`chown {place.uid}` the folder" in message


def test_unreadable_task_file_names_the_uid(place):
    message = refusal(place, lambda: open_source(place.key))
    assert f"cannot read tasks file {place.key!r}: Permission denied" in message
    assert f"make it readable by uid {place.uid}" in message


def test_mode_is_shown_as_ls_does(place):
    message = refusal(place, lambda: load_authkey({"PROCFLEET_AUTHKEY_FILE": place.key}))
    assert f"mode {stat.filemode(os.stat(place.key).st_mode)}" in message
