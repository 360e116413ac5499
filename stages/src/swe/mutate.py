# Procedural bug injection (SWE-smith style) for the `synthesize` stage.
#
#   python3 mutate.py list DIR...      one JSON object per line: a candidate edit
#   python3 mutate.py apply JSON       applies one candidate to the file it names
#
# A candidate is a single-token edit inside a function body, located by byte offsets taken
# from the AST (so the diff touches one line and keeps the file's formatting):
#   flip_comparison     == <-> !=, < -> >=, is -> is not, in -> not in, ...
#   boundary_comparison < -> <=, > -> >=, <= -> <, >= -> >
#   swap_arithmetic     + <-> -, * -> //
#   swap_boolean        and <-> or
#   drop_not            `not x` -> `x`
#   shift_constant      small integer literal n -> n + 1
#   flip_bool_return    return True <-> return False
# Test files (test_*.py, *_test.py, conftest.py, anything under a tests/ or test/ directory)
# are never edited. Output order is deterministic (files sorted, then by offset).
import ast
import json
import os
import re
import sys

FLIP = {ast.Eq: "!=", ast.NotEq: "==", ast.Lt: ">=", ast.LtE: ">", ast.Gt: "<=", ast.GtE: "<",
        ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
BOUNDARY = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">"}
TOKEN = {ast.Eq: r"==", ast.NotEq: r"!=", ast.Lt: r"<(?!=)", ast.LtE: r"<=", ast.Gt: r">(?!=)",
         ast.GtE: r">=", ast.Is: r"\bis\b(?!\s+not\b)", ast.IsNot: r"\bis\s+not\b",
         ast.In: r"(?<!not )\bin\b", ast.NotIn: r"\bnot\s+in\b"}
ARITH = {ast.Add: (r"\+", "-"), ast.Sub: (r"-", "+"), ast.Mult: (r"\*(?!\*)", "//")}


def is_test(rel):
    parts = rel.split(os.sep)
    name = parts[-1]
    return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
            or any(p in ("tests", "test", "testing") for p in parts[:-1]))


class Sites:
    def __init__(self, rel, text):
        self.rel = rel
        self.data = text.encode()
        self.starts = [0]
        for line in text.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line.encode()))
        self.out = []
        self.seen = set()

    def off(self, lineno, col):
        return self.starts[lineno - 1] + col

    def add(self, start, end, new, kind, node, func):
        if (start, end) in self.seen or start >= end:
            return
        old = self.data[start:end].decode()
        if old == new or "\n" in old:
            return
        self.seen.add((start, end))
        self.out.append({"file": self.rel, "start": start, "end": end, "old": old, "new": new,
                         "kind": kind, "line": node.lineno, "function": func})

    def token_between(self, a, b, pattern):
        """Offsets of the first match of `pattern` between the end of node a and the start of b."""
        lo = self.off(a.end_lineno, a.end_col_offset)
        hi = self.off(b.lineno, b.col_offset)
        gap = self.data[lo:hi].decode()
        m = re.search(pattern, gap)
        if not m:
            return None
        return lo + len(gap[:m.start()].encode()), lo + len(gap[:m.end()].encode())

    def visit_function(self, func, name):
        for node in ast.walk(func):
            if isinstance(node, ast.Compare) and len(node.ops) == 1:
                op = type(node.ops[0])
                span = self.token_between(node.left, node.comparators[0], TOKEN[op])
                if span:
                    self.add(*span, FLIP[op], "flip_comparison", node, name)
                    if op in BOUNDARY:
                        self.add(*span, BOUNDARY[op], "boundary_comparison", node, name)
            elif isinstance(node, ast.BinOp) and type(node.op) in ARITH:
                pattern, new = ARITH[type(node.op)]
                span = self.token_between(node.left, node.right, pattern)
                if span:
                    self.add(*span, new, "swap_arithmetic", node, name)
            elif isinstance(node, ast.BoolOp) and len(node.values) >= 2:
                word, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
                span = self.token_between(node.values[0], node.values[1], r"\b%s\b" % word)
                if span:
                    self.add(*span, new, "swap_boolean", node, name)
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                start = self.off(node.lineno, node.col_offset)
                end = self.off(node.operand.lineno, node.operand.col_offset)
                if self.data[start:start + 3] == b"not":
                    self.add(start, end, "", "drop_not", node, name)
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, bool):
                v = node.value
                self.add(self.off(v.lineno, v.col_offset), self.off(v.end_lineno, v.end_col_offset),
                         str(not v.value), "flip_bool_return", node, name)
            elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 9:
                start = self.off(node.lineno, node.col_offset)
                end = self.off(node.end_lineno, node.end_col_offset)
                if self.data[start:end].decode() == str(node.value):
                    self.add(start, end, str(node.value + 1), "shift_constant", node, name)


def functions(tree):
    """(qualified name, node) of every function, outermost first."""
    stack = [("", tree)]
    while stack:
        prefix, node = stack.pop(0)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                stack.append((prefix + child.name + ".", child))
            elif isinstance(child, ast.ClassDef):
                stack.append((prefix + child.name + ".", child))


def list_sites(dirs):
    files = []
    for d in dirs:
        if os.path.isfile(d):
            files.append(d)
            continue
        for root, subdirs, names in os.walk(d):
            subdirs.sort()
            files.extend(os.path.join(root, n) for n in names if n.endswith(".py"))
    for path in sorted(set(os.path.normpath(f) for f in files)):
        if is_test(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        sites = Sites(path, text)
        for name, func in functions(tree):
            sites.visit_function(func, name)
        for s in sorted(sites.out, key=lambda s: (s["start"], s["kind"])):
            print(json.dumps(s, sort_keys=True))


def apply(site):
    with open(site["file"], "rb") as f:
        data = f.read()
    old = data[site["start"]:site["end"]].decode()
    if old != site["old"]:
        sys.exit("%s:%d: expected %r at bytes %d..%d, found %r"
                 % (site["file"], site["line"], site["old"], site["start"], site["end"], old))
    with open(site["file"], "wb") as f:
        f.write(data[:site["start"]] + site["new"].encode() + data[site["end"]:])


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "list":
        list_sites(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "apply":
        apply(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: mutate.py list DIR... | mutate.py apply JSON")
