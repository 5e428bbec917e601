#!/usr/bin/env python3
"""The values table of chart/README.md, generated from chart/values.yaml's `# --` comments.

A comment that starts with `# --` (continued by the `#` lines right below it) documents the key
that follows it, as helm-docs reads them. The table goes between the README's
`<!-- values-table:start -->` and `<!-- values-table:end -->` lines.

  hack/values-table.py          rewrite the table in chart/README.md
  hack/values-table.py --check  exit 1 when the table is stale (CI, via hack/lint.sh)

Needs PyYAML (hack/setup.sh puts it in .tools/venv with yamllint).
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VALUES = ROOT / "chart" / "values.yaml"
README = ROOT / "chart" / "README.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(?:\s+(.*))?$")
COMMENTED_KEY = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_]*): (\S.*)$")


def documented(text):
    """(dotted key, description, shown default or None) for every key with a `# --` comment."""
    rows, stack, pending = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            commented = COMMENTED_KEY.match(stripped)
            if pending is not None and commented:
                # A documented key left unset on purpose (`# activeDeadlineSeconds: 300`).
                indent = len(line) - len(line.lstrip())
                path = [k for i, k in stack if i < indent] + [commented.group(1)]
                rows.append((".".join(path), " ".join(p for p in pending if p), f"unset (e.g. {commented.group(2)})"))
                pending = None
            elif pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            if stripped:
                pending = None
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if pending is not None:
            rows.append((".".join(k for _, k in stack), " ".join(p for p in pending if p), None))
            pending = None
    return rows


def default_of(values, dotted):
    node = values
    for part in dotted.split("."):
        node = node[part]
    return json.dumps(node, separators=(", ", ": "))


def table():
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for dotted, description, shown in documented(text):
        default = (shown or default_of(values, dotted)).replace("|", "\\|")
        description = description.replace("|", "\\|")
        lines.append(f"| `{dotted}` | `{default}` | {description} |")
    return "\n".join(lines)


def main():
    readme = README.read_text()
    before, rest = readme.split(START + "\n", 1)
    _, after = rest.split(END, 1)
    wanted = f"{before}{START}\n{table()}\n{END}{after}"
    if "--check" in sys.argv[1:]:
        if wanted != readme:
            print("chart/README.md: the values table is stale; run hack/values-table.py", file=sys.stderr)
            return 1
        print("values table: up to date")
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
