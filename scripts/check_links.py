#!/usr/bin/env python3
"""Checks the relative links of the README and the docs book: every linked file exists, and
every `#anchor` names a heading of its file (as GitHub and mdBook make anchors). Web links are
not fetched. Exits 1, naming each broken link, if any is.

    python3 scripts/check_links.py README.md docs/src
"""
import os
import re
import sys

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.*)$")


def anchor(title):
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).strip().replace(" ", "-")


def anchors(path):
    found, fenced = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else HEADING.match(line.rstrip("\n"))
        if m:
            found.add(anchor(m.group(1)))
    return found


def markdown_files(args):
    for arg in args:
        if os.path.isdir(arg):
            for root, _, names in os.walk(arg):
                yield from (os.path.join(root, n) for n in sorted(names) if n.endswith(".md"))
        else:
            yield arg


def main():
    broken = []
    checked = 0
    for md in markdown_files(sys.argv[1:]):
        fenced = False
        for n, line in enumerate(open(md, encoding="utf-8"), 1):
            if line.startswith("```"):
                fenced = not fenced
            if fenced:
                continue
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, frag = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
                checked += 1
                if not os.path.exists(dest):
                    broken.append(f"{md}:{n}: {target}: no file {dest}")
                elif frag and dest.endswith(".md") and frag not in anchors(dest):
                    broken.append(f"{md}:{n}: {target}: no heading #{frag} in {dest}")
    for b in broken:
        print(b)
    print(f"{checked} links checked, {len(broken)} broken")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
