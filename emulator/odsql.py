"""A small ODSQL subset (where, select, group_by, order_by) evaluated with pyarrow."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class OdsqlError(ValueError):
    """A query the emulator cannot parse or evaluate (the portals answer 400)."""


AGGREGATES = frozenset({"count", "sum", "avg", "min", "max"})
FUNCTIONS = AGGREGATES | {"year"}

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<date>date\s*(?P<dq>['"])(?P<dval>.*?)(?P=dq))
    |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    |(?P<op>>=|<=|!=|<>|=|>|<)
    |(?P<punct>[(),*])
    |(?P<ident>`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass(frozen=True)
class Lit:
    """A literal: kind is num, str or date."""

    kind: str
    value: str


@dataclass(frozen=True)
class Ref:
    """A field reference, optionally wrapped in a function (year or an aggregate)."""

    name: str
    func: str | None = None

    @property
    def text(self) -> str:
        """Canonical expression text, used as default output name."""
        return f"{self.func}({self.name})" if self.func else self.name

    @property
    def is_agg(self) -> bool:
        """True for aggregate functions."""
        return self.func in AGGREGATES


@dataclass(frozen=True)
class Cmp:
    """`ref op literal`."""

    op: str
    ref: Ref
    lit: Lit


@dataclass(frozen=True)
class BoolOp:
    """AND / OR of several conditions."""

    op: str
    items: tuple[object, ...]


@dataclass(frozen=True)
class Not:
    """Negated condition."""

    item: object


@dataclass(frozen=True)
class IsNull:
    """`ref IS [NOT] NULL`."""

    ref: Ref
    negate: bool


@dataclass(frozen=True)
class In:
    """`ref [NOT] IN (lit, ...)`."""

    ref: Ref
    values: tuple[Lit, ...]
    negate: bool


@dataclass(frozen=True)
class Item:
    """A select / group_by / order_by item."""

    ref: Ref
    alias: str
    descending: bool = False


def tokenize(text: str) -> list[tuple[str, str]]:
    """Split an expression into (type, value) tokens."""
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise OdsqlError(f"Syntax error near: {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup if m.lastgroup != "dq" else "date"
        if m.group("date") is not None:
            out.append(("date", m.group("dval")))
        elif kind == "str":
            raw = m.group("str")
            out.append(("str", re.sub(r"\\(.)", r"\1", raw[1:-1])))
        elif kind == "ident":
            out.append(("ident", m.group("ident").strip("`")))
        elif kind is not None:
            out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise OdsqlError("Unexpected end of expression")
        self.pos += 1
        return tok

    def keyword(self, *words: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "ident" and tok[1].lower() in words:
            self.pos += 1
            return True
        return False

    def expect(self, value: str) -> None:
        tok = self.next()
        if tok[1] != value:
            raise OdsqlError(f"Expected {value!r}, found {tok[1]!r}")

    def done(self) -> None:
        if self.peek() is not None:
            raise OdsqlError(f"Unexpected token {self.tokens[self.pos][1]!r}")

    def ref(self) -> Ref:
        tok = self.next()
        if tok == ("punct", "*"):
            return Ref("*")
        if tok[0] != "ident":
            raise OdsqlError(f"Expected a field name, found {tok[1]!r}")
        nxt = self.peek()
        if nxt == ("punct", "("):
            func = tok[1].lower()
            if func not in FUNCTIONS:
                raise OdsqlError(f"Unknown function {tok[1]}")
            self.next()
            inner = self.next()
            if inner[0] != "ident" and inner != ("punct", "*"):
                raise OdsqlError("Expected a field name in function call")
            self.expect(")")
            return Ref(inner[1].strip("`"), func)
        return Ref(tok[1])

    def literal(self) -> Lit:
        tok = self.next()
        if tok[0] in ("num", "str", "date"):
            return Lit(tok[0], tok[1])
        raise OdsqlError(f"Expected a literal, found {tok[1]!r}")

    def condition(self) -> object:
        items = [self.conjunction()]
        while self.keyword("or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def conjunction(self) -> object:
        items = [self.negation()]
        while self.keyword("and"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def negation(self) -> object:
        if self.keyword("not"):
            return Not(self.negation())
        if self.peek() == ("punct", "("):
            self.next()
            inner = self.condition()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> object:
        first = self.peek()
        if first is not None and first[0] in ("num", "str", "date"):
            lit = self.literal()
            op = self.next()
            if op[0] != "op":
                raise OdsqlError("Expected a comparison operator")
            flipped = {">": "<", "<": ">", ">=": "<=", "<=": ">="}.get(op[1], op[1])
            return Cmp(flipped, self.ref(), lit)
        ref = self.ref()
        if self.keyword("is"):
            negate = self.keyword("not")
            if not self.keyword("null"):
                raise OdsqlError("Expected NULL")
            return IsNull(ref, negate)
        negate = self.keyword("not")
        if self.keyword("in"):
            self.expect("(")
            values = [self.literal()]
            while self.peek() == ("punct", ","):
                self.next()
                values.append(self.literal())
            self.expect(")")
            return In(ref, tuple(values), negate)
        op = self.next()
        if op[0] != "op":
            raise OdsqlError(f"Expected a comparison operator, found {op[1]!r}")
        return Cmp(op[1], ref, self.literal())

    def items(self, order: bool = False) -> list[Item]:
        out = []
        while True:
            ref = self.ref()
            alias = ref.text
            desc = False
            if self.keyword("as"):
                tok = self.next()
                alias = tok[1]
            if order:
                if self.keyword("desc"):
                    desc = True
                else:
                    self.keyword("asc")
            out.append(Item(ref, alias, desc))
            if self.peek() is None:
                return out
            self.expect(",")


def parse_where(text: str) -> object:
    """Parse a `where` clause."""
    parser = _Parser(text)
    node = parser.condition()
    parser.done()
    return node


def parse_items(text: str, order: bool = False) -> list[Item]:
    """Parse a select / group_by (or order_by with `order=True`) list."""
    parser = _Parser(text)
    return parser.items(order=order)


def where_fields(node: object) -> set[str]:
    """Field names a condition refers to."""
    if isinstance(node, Cmp | IsNull | In):
        return {node.ref.name}
    if isinstance(node, BoolOp):
        return set().union(*(where_fields(i) for i in node.items))
    if isinstance(node, Not):
        return where_fields(node.item)
    return set()


Resolver = Callable[[str], tuple[pa.Array, str]]
_OPS = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<>": pc.not_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
    "<": pc.less,
    "<=": pc.less_equal,
}


def evaluate(node: object, resolve: Resolver, tz: str) -> np.ndarray:
    """Boolean numpy mask of a parsed condition."""
    if isinstance(node, BoolOp):
        masks = [evaluate(i, resolve, tz) for i in node.items]
        combine = np.logical_and if node.op == "and" else np.logical_or
        out = masks[0]
        for m in masks[1:]:
            out = combine(out, m)
        return out
    if isinstance(node, Not):
        return ~evaluate(node.item, resolve, tz)
    if isinstance(node, IsNull):
        values, kind = ref_values(node.ref, resolve, tz)
        mask = _np(pc.is_null(values))
        return ~mask if node.negate else mask
    if isinstance(node, In):
        values, kind = ref_values(node.ref, resolve, tz)
        mask = np.zeros(len(values), dtype=bool)
        for lit in node.values:
            mask |= compare(values, kind, "=", lit, tz)
        return ~mask if node.negate else mask
    if isinstance(node, Cmp):
        values, kind = ref_values(node.ref, resolve, tz)
        return compare(values, kind, node.op, node.lit, tz)
    raise OdsqlError("Unsupported condition")


def _np(values: pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def ref_values(ref: Ref, resolve: Resolver, tz: str) -> tuple[pa.Array, str]:
    """Values of a (possibly year()-wrapped) field reference."""
    if ref.is_agg:
        raise OdsqlError(f"Aggregate {ref.text} not allowed here")
    values, kind = resolve(ref.name)
    if ref.func == "year":
        return year_values(values, tz), "int"
    return values, kind


def year_values(values: pa.Array, tz: str) -> pa.Array:
    """Calendar year of date/datetime values (datetimes in `tz`); ints pass through."""
    typ = values.type
    if pa.types.is_timestamp(typ):
        return pc.year(pc.cast(values, pa.timestamp("s", tz=tz)))
    if pa.types.is_date(typ):
        return pc.year(values)
    if pa.types.is_integer(typ):
        return values
    if pa.types.is_string(typ):
        head = pc.utf8_slice_codeunits(values, 0, 4)
        ok = pc.match_substring_regex(head, r"^\d{4}$")
        return pc.cast(pc.if_else(ok, head, pa.scalar(None, pa.string())), pa.int64())
    raise OdsqlError("year() needs a date field")


def parse_instant(text: str, tz: str) -> datetime:
    """An instant from an ISO date/datetime literal (partial allowed), local to `tz`."""
    try:
        stamp = pd.Timestamp(text.replace("/", "-"))
    except (ValueError, TypeError) as exc:
        raise OdsqlError(f"Invalid date: {text!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(tz)
    return stamp.tz_convert("UTC").to_pydatetime()


def parse_day(text: str) -> date:
    """A calendar day from a literal like 2023, 2023-05 or 2023-05-17."""
    parts = re.split(r"[-/]", text.strip()[:10])
    try:
        numbers = [int(p) for p in parts] + [1, 1]
        return date(numbers[0], numbers[1], numbers[2])
    except (ValueError, IndexError) as exc:
        raise OdsqlError(f"Invalid date: {text!r}") from exc


def _year_of(lit: Lit) -> int:
    try:
        return int(lit.value.strip()[:4]) if lit.kind != "num" else int(float(lit.value))
    except ValueError as exc:
        raise OdsqlError(f"Invalid year: {lit.value!r}") from exc


def _number(lit: Lit) -> float | int:
    try:
        num = float(lit.value)
    except ValueError as exc:
        raise OdsqlError(f"Invalid number: {lit.value!r}") from exc
    return int(num) if num.is_integer() else num


def compare(values: pa.Array, kind: str, op: str, lit: Lit, tz: str) -> np.ndarray:
    """Mask of `values op literal`, with the literal converted to the field's type."""
    if op not in _OPS:
        raise OdsqlError(f"Unknown operator {op}")
    typ = values.type
    scalar: object
    if pa.types.is_timestamp(typ):
        if lit.kind == "num":
            values, scalar = year_values(values, tz), _year_of(lit)
        else:
            scalar = pa.scalar(parse_instant(lit.value, tz), typ)
    elif pa.types.is_date(typ):
        if lit.kind == "num":
            values, scalar = pc.year(values), _year_of(lit)
        else:
            scalar = pa.scalar(parse_day(lit.value), typ)
    elif pa.types.is_integer(typ) and kind == "year":
        scalar = _year_of(lit)
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
        scalar = _number(lit)
    else:
        scalar = lit.value
    result = _OPS[op](values, scalar)
    return _np(pc.fill_null(result, False))


def refine_mask(values: pa.Array, kind: str, value: str, tz: str) -> np.ndarray:
    """`refine=field:value`: year/month/day prefix for dates, equality otherwise."""
    typ = values.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or kind == "year":
        parts = [p for p in re.split(r"[-/]", value.strip()) if p]
        if not parts or not all(p.isdigit() for p in parts):
            raise OdsqlError(f"Invalid date refine: {value!r}")
        if kind == "year" and pa.types.is_integer(typ):
            return _np(pc.fill_null(pc.equal(values, int(parts[0])), False))
        local = pc.cast(values, pa.timestamp("s", tz=tz)) if pa.types.is_timestamp(typ) else values
        mask = np.ones(len(values), dtype=bool)
        for func, part in zip((pc.year, pc.month, pc.day), parts, strict=False):
            mask &= _np(pc.fill_null(pc.equal(func(local), int(part)), False))
        return mask
    return compare(values, kind, "=", Lit("str", value), tz)
