#!/usr/bin/env python3
"""Builds man/wsamerge.1: the page swift-argument-parser's generate-manual plugin writes from the
command definitions, with the EXAMPLES and EXIT STATUS of man/sections.mdoc in place of the
plugin's generic exit status. Run through `make man`."""
import re, sys
generated, sections, out = sys.argv[1:4]
page = open(generated).read()
extra = open(sections).read()
page = re.sub(r'\.Sh "EXIT STATUS"\n\.Ex -std\n', lambda _: extra, page)
assert ".Sh EXAMPLES" in page, "generate-manual output changed: no EXIT STATUS section to replace"
open(out, "w").write(page)
