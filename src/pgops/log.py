"""One line per event on stderr, as logfmt (key=value) or JSON. Configured by the CLI, never at import."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import sys
from typing import Any, TextIO

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\S+)')


def _fields(message: str) -> tuple[str, dict[str, str]]:
    """Messages are written as 'event=... key=value ...'; split them so JSON output stays structured."""
    found = dict(_KV.findall(message))
    rest = _KV.sub("", message).strip()
    clean = {k: v[1:-1] if len(v) > 1 and v[0] in "\"'" and v[-1] == v[0] else v for k, v in found.items()}
    return rest, clean


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        msg = record.getMessage()
        if "event=" not in msg:
            msg = "msg=" + json.dumps(msg, ensure_ascii=False)
        line = f"ts={ts.replace('+00:00', 'Z')} level={record.levelname.lower()} {msg}"
        if record.exc_info:
            line += " traceback=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        rest, fields = _fields(record.getMessage())
        out: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname.lower()}
        out.update(fields)
        if rest:
            out["msg"] = rest
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines on a stream that may also hold one status line (the CLI's progress meter on a terminal).

    The status line is redrawn in place with a carriage return and has no newline of its own; a log line
    (or the end of the meter) first ends it, so a record never runs on into the meter's last text.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.status_open = False

    def _locked(self) -> contextlib.AbstractContextManager[object]:
        return self.lock if self.lock is not None else contextlib.nullcontext()

    def status(self, text: str) -> None:
        with self._locked():
            self.stream.write(f"\r{text}\x1b[K")  # \x1b[K: clear what a longer earlier text left
            self.stream.flush()
            self.status_open = True

    def end_status(self) -> None:
        with self._locked():
            if self.status_open:
                self.stream.write("\n")
                self.stream.flush()
                self.status_open = False

    def emit(self, record: logging.LogRecord) -> None:
        self.end_status()  # the handler's lock is re-entrant: handle() already holds it
        super().emit(record)


def _line_handler() -> LineHandler | None:
    return next((h for h in logging.getLogger("pgops").handlers if isinstance(h, LineHandler)), None)


def status(text: str) -> None:
    """Draw the status line (a progress meter on a terminal) on the log stream, in place."""
    handler = _line_handler()
    if handler is None:
        configure()
        handler = _line_handler()
    assert handler is not None
    handler.status(text)


def end_status() -> None:
    """End the status line with a newline, if one is drawn; the next output starts on a line of its own."""
    handler = _line_handler()
    if handler is not None:
        handler.end_status()


def configure(fmt: str = "logfmt", level: str = "info") -> None:
    end_status()
    root = logging.getLogger("pgops")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def q(value: object) -> str:
    """Quote a value for a logfmt field when it needs it."""
    text = str(value)
    if text and re.fullmatch(r"[\w.:/@+%-]+", text):
        return text
    return json.dumps(text, ensure_ascii=False)


def shorten(text: str, limit: int = 160) -> str:
    """One line, at most `limit` characters: for third-party error text inside our messages."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
