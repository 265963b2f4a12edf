#!/usr/bin/env python3
"""Keeps docs/ true to the code: every log event the code emits is in docs/logs.md, every
metric family and result label in docs/metrics.md, every decision code in
docs/decision-codes.md. `check.py ROOT` prints what is missing and exits 1 (a unit test).
"""
import pathlib
import re
import sys


def sources(root, folders):
    for folder in folders:
        for p in sorted((root / folder).rglob("*")):
            if p.suffix in (".cpp", ".hpp"):
                yield p, p.read_text(encoding="utf-8")


def main(argv):
    root = pathlib.Path(argv[1] if len(argv) > 1 else ".").resolve()
    docs = root / "docs"
    missing = []

    events = set()
    for p, text in sources(root, ["common", "policy", "storage", "daemon"]):
        # LogLine(LEVEL, "event", ...) and LogLine line(LEVEL, "event"), the level possibly
        # an expression; and the decision lines, log_decision("event", ...).
        for m in re.finditer(r'LogLine\s*(?:\w+\s*)?\(([^;]{0,200}?)"(\w+)"', text):
            events.add(m.group(2))
        for m in re.finditer(r'log_decision\("(\w+)"', text):
            events.add(m.group(1))
    def require(names, doc, what):
        text = (docs / doc).read_text(encoding="utf-8")
        for name in sorted(set(names)):
            if f"| `{name}` |" not in text:
                missing.append(f"docs/{doc}: {what} {name}")

    def read(path):
        return (root / path).read_text(encoding="utf-8")

    require(events, "logs.md", "event")
    require(re.findall(r'family\("(\w+)"', read("daemon/stats.cpp")), "metrics.md", "family")
    require(re.findall(r'\{"(\w+)", "', read("daemon/metrics.hpp")), "metrics.md", "result")
    require(re.findall(r'\{Code::(\w+),', read("policy/codes.hpp")), "decision-codes.md", "code")

    for m in missing:
        print("missing from " + m)
    if len(events) < 20:
        print("found too few log events: the patterns no longer match the code")
        return 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
