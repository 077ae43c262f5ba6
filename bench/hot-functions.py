#!/usr/bin/env python3
"""Lists the functions of a binary that ran, from callgrind outputs.

Usage: hot-functions.py BINARY_NAME OUT1 [OUT2 ...]

Prints each function's linker symbol once, in the order of the outputs
given (the first output's functions first), for lld's
--symbol-ordering-file. Only functions of the object whose path ends in
BINARY_NAME are listed; callgrind must have run with --demangle=no so the
names are the symbols themselves. See bench/symbol-order.sh.
"""
import re
import sys

LINE = re.compile(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$")


def functions(path, binary):
    """The functions with a cost of their own in one callgrind output."""
    objects, names, current_object = {}, {}, None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if not m:
                continue
            kind, ident, name = m.groups()
            if kind in ("ob", "cob"):
                if name is not None:
                    objects[ident] = name
                if kind == "ob":
                    current_object = objects.get(ident)
            else:
                if name is not None:
                    names[ident] = name
                if kind == "fn" and current_object and current_object.endswith(binary):
                    yield names[ident]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, seen = sys.argv[1], set()
    for path in sys.argv[2:]:
        for name in functions(path, binary):
            # Callgrind's own names for code without a symbol.
            if name.startswith(("0x", "(")):
                continue
            if name not in seen:
                seen.add(name)
                print(name)


if __name__ == "__main__":
    main()
