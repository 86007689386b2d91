"""One line per event on stderr, as logfmt (key=value) or JSON. Configured by the CLI, never at import."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

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


def configure(fmt: str = "logfmt", level: str = "info") -> None:
    root = logging.getLogger("pgops")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
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
