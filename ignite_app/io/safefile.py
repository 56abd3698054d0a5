"""Bounded reads of files the user (or someone else's run directory) hands us. Imports no torch.

A FIFO, a device or a directory where a file is expected is refused by its type before it is opened
(opening a FIFO waits for a writer; ``/dev/zero`` never ends), and a file is read only up to a bound.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ignite_app.errors import UserError

SHORT_TEXT = 60  # characters of a value quoted in an error message


def short(value: object, limit: int = SHORT_TEXT) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never formats a huge value in full."""
    import reprlib

    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"  # repr of a huge int is slow, and refused past 4300 digits
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxdict, brief.maxlist, brief.maxtuple, brief.maxset = 2, 4, 4, 4, 4
    brief.maxstring = brief.maxother = limit
    text = brief.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file (symbolic links followed); ``what`` names it in the error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {short(str(path))} does not exist; check the path") from None
    except OSError as exc:
        raise UserError(f"{what} {short(str(path))} cannot be read ({exc.strerror}); check the path") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {short(str(path))} is {file_kind(mode)}, not a regular file; pass a file")


def read_bounded(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is one :class:`UserError`."""
    require_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no wait even if it became a FIFO meanwhile
    except OSError as exc:
        raise UserError(f"{what} {short(str(path))} cannot be read ({exc.strerror}); check the path") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{what} {short(str(path))} is {file_kind(info.st_mode)}, not a regular file; pass a file")
        if info.st_size > max_bytes:
            raise UserError(f"{what} {short(str(path))} is {info.st_size} bytes, more than the {max_bytes} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UserError(f"{what} {short(str(path))} is more than the {max_bytes} bytes allowed")
    return data


def decode_text(data: bytes, path: Path, what: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or one error naming the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {short(str(path))} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


MAX_YAML_BYTES = 1 << 20  # a config of ignite-app is a few hundred bytes
MAX_YAML_DEPTH = 20


def parse_yaml(text: str) -> object:
    """``yaml.safe_load`` without anchors or aliases (a "billion laughs" file) and with a nesting limit."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: object, index: object) -> object:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise yaml.YAMLError(f"anchors and aliases (&{short(event.anchor, 20)[1:-1]}) are not allowed")
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def require_regular_entries(folder: Path, marker: str, what: str) -> None:
    """Refuse a folder in which a file whose name holds ``marker`` is a FIFO, a device, a directory, ...

    Readers such as TensorBoard's open every such file; a FIFO there would make them wait forever.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # the reader reports a missing or unreadable folder itself
    for entry in entries:
        if marker in entry.name:
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                continue  # a dangling link: the reader skips it
            if not stat.S_ISREG(mode):
                raise UserError(f"{what} {short(entry.path, 200)} is {file_kind(mode)}, not a regular file; remove it")


def require_utf8(path: Path, what: str) -> None:
    """Refuse a text file that is not UTF-8, naming the first bad byte (read in 1 MiB blocks, never all at once)."""
    import codecs

    require_regular(path, what)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise UserError(f"{what} {short(str(path))} is not UTF-8 text (byte {offset + exc.start}); "
                                "save it as UTF-8") from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(f"{what} {short(str(path))} is not UTF-8 text (it ends inside a character); save it as UTF-8") from None
