#!/usr/bin/env python3
"""Replaces (or appends) the section NAME of a Markdown document, the text
between <!-- NAME:begin --> and <!-- NAME:end -->, with the contents of
SECTION_FILE. Used by the benchmark scripts' --write-doc.

  write-doc-section.py DOC SECTION_FILE NAME
"""
import os
import sys
import tempfile

doc, section_file, name = sys.argv[1:4]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
body = open(section_file).read().rstrip("\n")
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
block = f"{begin}\n{body}\n{end}"
if begin in text and end in text and text.index(begin) < text.index(end):
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(doc)))
with os.fdopen(fd, "w") as f:
    f.write(text)
os.chmod(tmp, 0o644)
os.replace(tmp, doc)
