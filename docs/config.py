#!/usr/bin/env python3
"""Writes docs/config.md from `sluiced --schema`, the one declaration of every config key
(common/config.cpp). `config.py SLUICED > docs/config.md` regenerates it;
`config.py --check SLUICED docs/config.md` (a unit test) fails when the two differ.
"""
import re
import subprocess
import sys

HEAD = """# Configuration keys

Generated from `sluiced --schema` by `docs/config.py`; do not edit by hand. After a change
to the schema (`common/config.cpp`), run `python3 docs/config.py build/daemon/sluiced >
docs/config.md`; the unit test `docs_config` fails while this file and the schema differ.

The file is TOML (`--config FILE`, default `/etc/sluice/sluice.toml`). Every duration and
size takes a unit (`"5m"`, `"25MiB"`); unknown keys are errors; relative paths are relative
to the config file; `sluiced --config FILE --check` reports every problem as
`FILE:LINE:COL: message`. `[[listener]]` is an array of tables (one per listener);
`[routes]` maps a recipient domain (or `"*"`) to a transport.
"""

LINE = re.compile(r"^(\S+)\s+(.*?)  default=(.*?)  (.*)$")


def render(schema: str) -> str:
    out = [HEAD.rstrip("\n")]
    section = None
    for raw in schema.splitlines():
        if not raw.strip():
            continue
        m = LINE.match(raw)
        if m:
            key, kind, default, doc = m.groups()
        else:
            key, rest = raw.split(None, 1)
            kind, default, doc = rest.strip(), "", ""
        sec = key.split(".", 1)[0]
        if sec != section:
            section = sec
            title = "[[listener]]" if sec == "listener" else f"[{sec}]"
            out.append(f"\n## `{title}`\n\n| key | type | default | meaning |\n|---|---|---|---|")
        default = "" if default in ("", "(none)") else f"`{default}`"
        kind = kind.replace("|", "\\|")
        out.append(f"| `{key}` | {kind} | {default} | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def main(argv):
    check = argv[1:2] == ["--check"]
    args = argv[2:] if check else argv[1:]
    if len(args) != (2 if check else 1):
        sys.stderr.write(__doc__)
        return 2
    schema = subprocess.run([args[0], "--schema"], check=True, capture_output=True,
                            text=True).stdout
    text = render(schema)
    if not check:
        sys.stdout.write(text)
        return 0
    with open(args[1], encoding="utf-8") as f:
        current = f.read()
    if current != text:
        sys.stderr.write(f"{args[1]} differs from `sluiced --schema`; regenerate it with\n"
                         f"  python3 docs/config.py {args[0]} > {args[1]}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
