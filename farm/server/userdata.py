"""What the web UI keeps on the server: its settings and the user's files (saved
workflows, templates, user.css), in ComfyUI's layout so a user folder can move between
ComfyUI and the farm: <user_dir>/default/comfy.settings.json and <user_dir>/default/<path>.

Single-user (ComfyUI without --multi-user): every request is the user "default". Paths
may not leave that user's folder (absolute paths, "..", symlinks pointing out)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from farm.errors import FarmError
from farm.server.routes.files import Escapes, inside

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"


class UserDataError(FarmError):
    """A request for a user file that cannot be served as asked."""


class UserPathRefused(UserDataError):
    """The path is empty or leaves the user's folder."""


class UserFileMissing(UserDataError):
    pass


class UserFileExists(UserDataError):
    """overwrite=false and the target is there already."""


class NotADirectory(UserDataError):
    pass


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative to the folder listed (or to the user's folder for a write), "/"-separated
    size: int
    modified: int  # ms since the epoch, as ComfyUI sends it
    created: int

    @classmethod
    def of(cls, file: Path, relative_to: Path) -> "FileInfo":
        stat = file.stat()
        return cls(file.relative_to(relative_to).as_posix(), stat.st_size, int(stat.st_mtime * 1000),
                   int(stat.st_ctime * 1000))

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "modified": self.modified, "created": self.created}


@dataclass(frozen=True)
class Entry:
    """One row of the v2 listing: a file or a folder below the user's root."""

    name: str
    path: str
    type: Literal["file", "directory"]
    size: int | None = None
    modified: float | None = None  # seconds since the epoch (v2 sends st_mtime as is)

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "path": self.path, "type": self.type}
        if self.type == "file":
            out |= {"size": self.size, "modified": self.modified}
        return out


@dataclass
class UserData:
    root: Path  # the folder that holds one folder per user
    user: str = DEFAULT_USER
    _settings_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def home(self) -> Path:
        return Path(self.root) / self.user

    def exists(self) -> bool:
        return self.home.is_dir()

    def resolve(self, relative: str) -> Path:
        if not relative or not relative.strip("/"):
            raise UserPathRefused("no file named: give a path inside the user folder, e.g. workflows/a.json")
        try:
            return inside(self.home, relative)
        except Escapes:
            raise UserPathRefused(f"{relative!r} is outside the user folder; give a relative path without '..'") \
                from None

    # -- files -------------------------------------------------------------------------------

    def list_files(self, directory: str, recurse: bool) -> tuple[Path, list[Path]]:
        """(the folder, its files: every level below it with recurse) for GET /userdata."""
        folder = self.resolve(directory)
        if not folder.is_dir():
            raise UserFileMissing(f"the user folder has no directory {directory!r}")
        found = folder.rglob("*") if recurse else folder.glob("*")
        return folder, sorted(p for p in found if p.is_file())

    def list_entries(self, directory: str = "") -> list[Entry]:
        """Folders first, then files, each group by name; every level below `directory`."""
        base = self.home.resolve() if self.exists() else self.home
        folder = self.resolve(directory) if directory else base
        if not folder.exists():
            if folder == base:
                return []  # a user who never saved anything
            raise UserFileMissing(f"the user folder has no directory {directory!r}")
        if not folder.is_dir():
            raise NotADirectory(f"{directory!r} is a file, not a directory")
        entries: list[Entry] = []
        for dirpath, dirs, files in os.walk(folder):
            here = Path(dirpath)
            entries += [Entry(d, (here / d).relative_to(base).as_posix(), "directory") for d in dirs]
            for name in files:
                stat = (here / name).stat()
                entries.append(Entry(name, (here / name).relative_to(base).as_posix(), "file",
                                     stat.st_size, stat.st_mtime))
        entries.sort(key=lambda e: (e.type != "directory", e.name.lower()))
        return entries

    def read_path(self, relative: str) -> Path:
        path = self.resolve(relative)
        if not path.is_file():
            raise UserFileMissing(f"the user folder has no file {relative!r}")
        return path

    def write(self, relative: str, data: bytes, overwrite: bool = True) -> Path:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path = self.resolve(relative)
        if path.is_dir():
            raise UserPathRefused(f"{relative!r} is a directory")
        if not overwrite and path.exists():
            raise UserFileExists(f"{relative!r} exists; send overwrite=true to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def delete(self, relative: str) -> None:
        self.read_path(relative).unlink()

    def move(self, source: str, dest: str, overwrite: bool = True) -> Path:
        src = self.read_path(source)
        target = self.resolve(dest)
        if not overwrite and target.exists():
            raise UserFileExists(f"{dest!r} exists; send overwrite=true to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, target)
        return target

    def info(self, path: Path) -> FileInfo:
        return FileInfo.of(path, self.home.resolve())

    def relative(self, path: Path) -> str:
        return path.relative_to(self.home.resolve()).as_posix()

    # -- settings ----------------------------------------------------------------------------

    def settings(self) -> dict:
        path = self.home / SETTINGS_FILE
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserDataError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(loaded, dict):
            raise UserDataError(f"{path} must hold a JSON object, not {type(loaded).__name__}; fix or delete it")
        return loaded

    def update_settings(self, changes: dict) -> dict:
        """Merge `changes` into the saved settings (read-modify-write under a lock, so two
        tabs saving at once do not drop each other's keys)."""
        with self._settings_lock:
            merged = {**self.settings(), **changes}
            self.write(SETTINGS_FILE, json.dumps(merged, indent=4).encode())
            return merged
