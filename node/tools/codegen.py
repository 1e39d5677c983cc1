"""Generate `node/amqp/spec.py` from RabbitMQ's extended AMQP 0-9-1 spec XML.

    python -m node.tools.codegen            # rewrite node/amqp/spec.py
    python -m node.tools.codegen --check    # exit 1 if spec.py is out of date
    python -m node.tools.codegen --spec PATH --output PATH

The spec path defaults to the copy vendored in `node/amqp/spec_xml/` (license notice
beside it) and can be overridden by `--spec` or the WARREN_AMQP_SPEC environment variable.

Why generate: sixty-odd method classes with argument layouts, ids and bit packing are
exactly the kind of table that drifts when typed by hand.  The generated code is
straight-line (one precompiled struct per run of fixed-width arguments, helpers from
`fields.py` for strings and tables) because method decoding sits on the hot path.

The output depends only on the XML's content, never on its path, so `--check` is
stable across checkouts.
"""

from __future__ import annotations

import argparse
import keyword
import os
import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO_ROOT / "node/amqp/spec_xml/amqp0-9-1.extended.xml"
DEFAULT_OUTPUT = REPO_ROOT / "node/amqp/spec.py"
SPEC_ENV = "WARREN_AMQP_SPEC"

PRIMITIVES = (
    "bit",
    "octet",
    "short",
    "long",
    "longlong",
    "shortstr",
    "longstr",
    "table",
    "timestamp",
)
FIXED_FORMATS = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q"}
DEFAULTS = {
    "bit": "False",
    "octet": "0",
    "short": "0",
    "long": "0",
    "longlong": "0",
    "timestamp": "0",
    "shortstr": '""',
    "longstr": 'b""',
    "table": "None",
}
ANNOTATIONS = {
    "bit": "bool",
    "octet": "int",
    "short": "int",
    "long": "int",
    "longlong": "int",
    "timestamp": "int",
    "shortstr": "str",
    "longstr": "bytes | str",
    "table": "dict[str, Any] | None",
}

# Constants RabbitMQ uses that its published XML lacks: (name, value, class).
EXTRA_CONSTANTS = [("no-route", 312, "soft-error")]

# Methods RabbitMQ implements that its published XML lacks (rabbit_framing_amqp_0_9_1):
# connection.blocked/unblocked (connection.blocked capability) and connection.update-secret.
# (class, method name, index, synchronous, [(field, primitive type)], responses)
EXTRA_METHODS = [
    ("connection", "blocked", 60, False, [("reason", "shortstr")], []),
    ("connection", "unblocked", 61, False, [], []),
    ("connection", "update-secret", 70, True, [("new-secret", "longstr"),
                                               ("reason", "shortstr")], ["update-secret-ok"]),
    ("connection", "update-secret-ok", 71, True, [], []),
]

# Method arguments renamed from the XML.  The XML spells the flag "no-wait" in every
# method but confirm.select ("nowait"); RabbitMQ's JSON spec, pika and pamqp call it
# nowait everywhere, and one name lets channel code treat all methods alike.
FIELD_RENAMES = {"no-wait": "nowait"}

# Content properties renamed from the XML.  The 0-9-1 XML calls basic's 14th
# property "reserved"; every client library and RabbitMQ itself call it cluster-id.
PROPERTY_RENAMES = {("basic", "reserved"): "cluster-id"}


# ------------------------------------------------------------------- spec model


class SpecError(ValueError):
    """The XML describes something the generated code could not represent."""


@dataclass
class Field:
    name: str  # as in the XML, e.g. "routing-key"
    type: str  # resolved primitive type

    @property
    def py(self) -> str:
        """Python identifier: '-' becomes '_', keywords get a trailing '_' (global_)."""
        ident = self.name.replace("-", "_")
        return ident + "_" if keyword.iskeyword(ident) else ident


@dataclass
class Method:
    class_name: str
    class_id: int
    name: str
    index: int
    synchronous: bool
    content: bool
    responses: list[str]
    fields: list[Field]

    @property
    def py(self) -> str:
        return camel(self.class_name) + camel(self.name)

    @property
    def full_name(self) -> str:
        return f"{self.class_name}.{self.name}"


@dataclass
class AmqpClass:
    name: str
    index: int
    methods: list[Method] = field(default_factory=list)
    properties: list[Field] = field(default_factory=list)


@dataclass
class Constant:
    name: str
    value: int
    kind: str  # "", "soft-error" or "hard-error"


@dataclass
class Spec:
    major: int
    minor: int
    revision: int
    port: int
    constants: list[Constant]
    classes: list[AmqpClass]


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def upper(name: str) -> str:
    return name.replace("-", "_").upper()


def load_spec(path: Path) -> Spec:
    """Parse the XML into a Spec, resolving every field's domain to a primitive type."""
    root = ET.parse(path).getroot()
    domains = {d.get("name"): d.get("type") for d in root.findall("domain")}
    for name, kind in domains.items():
        if kind not in PRIMITIVES:
            raise SpecError(f"domain {name!r} has non-primitive type {kind!r}")

    def resolve(elem: ET.Element, where: str) -> Field:
        name = elem.get("name") or ""
        # Most fields name a domain; reserved fields and confirm.select's nowait
        # name a primitive type directly.
        kind = elem.get("type") or domains.get(elem.get("domain") or "")
        if kind not in PRIMITIVES:
            raise SpecError(f"{where}.{name}: cannot resolve type (domain={elem.get('domain')!r})")
        return Field(name, kind)

    constants = [
        Constant(c.get("name") or "", int(c.get("value") or 0), c.get("class") or "")
        for c in root.findall("constant")
    ]
    known = {c.name for c in constants}
    for name, value, kind in EXTRA_CONSTANTS:
        if name not in known:
            # Slot it in among the reply codes so the generated list reads in order.
            at = next((i for i, c in enumerate(constants) if c.kind and c.value > value), None)
            constants.insert(len(constants) if at is None else at, Constant(name, value, kind))

    classes = []
    for c in root.findall("class"):
        cname = c.get("name") or ""
        cls = AmqpClass(cname, int(c.get("index") or 0))
        for p in c.findall("field"):
            prop = resolve(p, cname)
            prop.name = PROPERTY_RENAMES.get((cname, prop.name), prop.name)
            cls.properties.append(prop)
        for m in c.findall("method"):
            mname = m.get("name") or ""
            cls.methods.append(
                Method(
                    class_name=cname,
                    class_id=cls.index,
                    name=mname,
                    index=int(m.get("index") or 0),
                    synchronous=m.get("synchronous") == "1",
                    content=m.get("content") == "1",
                    responses=[r.get("name") or "" for r in m.findall("response")],
                    fields=[
                        Field(FIELD_RENAMES.get(f.name, f.name), f.type)
                        for f in (resolve(x, f"{cname}.{mname}") for x in m.findall("field"))
                    ],
                )
            )
        have = {m.name for m in cls.methods}
        for xcls, mname, index, sync, fields, responses in EXTRA_METHODS:
            if xcls == cname and mname not in have:
                cls.methods.append(Method(cname, cls.index, mname, index, sync, False,
                                          responses, [Field(f, t) for f, t in fields]))
        classes.append(cls)

    spec = Spec(
        major=int(root.get("major") or 0),
        minor=int(root.get("minor") or 0),
        revision=int(root.get("revision") or 0),
        port=int(root.get("port") or 0),
        constants=constants,
        classes=classes,
    )
    _validate(spec)
    return spec


def _validate(spec: Spec) -> None:
    """Refuse XML the generated code could not represent, rather than emit bad code."""
    indexes: set[int] = set()
    reserved_locals = {"cls", "buf", "offset", "self", "flags"}
    for cls in spec.classes:
        for m in cls.methods:
            index = (m.class_id << 16) | m.index
            if index in indexes:
                raise SpecError(f"duplicate method index {m.class_id}.{m.index} ({m.full_name})")
            indexes.add(index)
            names = [f.py for f in m.fields]
            if len(set(names)) != len(names):
                raise SpecError(f"{m.full_name}: duplicate argument names {names}")
            clash = reserved_locals.intersection(names)
            if clash:
                raise SpecError(
                    f"{m.full_name}: argument names {clash} clash with generated locals"
                )
            for response in m.responses:
                if response not in {x.name for x in cls.methods}:
                    raise SpecError(f"{m.full_name}: response {response!r} is not a method")
        if len(cls.properties) > 15:
            raise SpecError(f"class {cls.name}: more than 15 properties needs flag continuation")
        for prop in cls.properties:
            if prop.type == "bit":
                raise SpecError(f"class {cls.name}: bit properties are not supported")


# ------------------------------------------------------------------ layout


@dataclass
class Run:
    """A stretch of arguments encoded back to back: one struct, or one variable field."""

    kind: str  # "struct", "shortstr", "longstr" or "table"
    fmt: str = ""  # struct format without the '>' (a bit group is one 'B')
    items: list[list[Field]] = field(default_factory=list)  # per struct slot; >1 = bits
    var: Field | None = None


def layout(fields: Sequence[Field]) -> list[Run]:
    """Group arguments into struct runs and variable-width fields.

    Consecutive bits share an octet, first bit in the least significant position; any
    other field ends the bit group (spec section 4.2.5.2).
    """
    runs: list[Run] = []
    for f in fields:
        if f.type in ("shortstr", "longstr", "table"):
            runs.append(Run(f.type, var=f))
            continue
        if not runs or runs[-1].kind != "struct":
            runs.append(Run("struct"))
        run = runs[-1]
        if f.type == "bit":
            if run.fmt.endswith("B") and run.items[-1][0].type == "bit" and len(run.items[-1]) < 8:
                run.items[-1].append(f)
            else:
                run.fmt += "B"
                run.items.append([f])
        else:
            run.fmt += FIXED_FORMATS[f.type]
            run.items.append([f])
    return runs


def bytes_literal(data: bytes) -> str:
    """A bytes literal in uniform hex escapes: b"\\x00\\x3c" rather than b'\\x00<'."""
    return 'b"' + "".join(f"\\x{byte:02x}" for byte in data) + '"'


def struct_name(fmt: str) -> str:
    return f"_S_{fmt}"


def bits_var(n: int) -> str:
    return f"_bits{n}"


# ------------------------------------------------------------------ emitter


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "", indent: int = 0) -> None:
        self.lines.append(("    " * indent + text) if text else "")

    def block(self, lines: Iterable[str], indent: int = 0) -> None:
        for line in lines:
            self(line, indent)

    def wrapped(self, opener: str, items: Sequence[str], closer: str, indent: int = 0) -> None:
        """`opener item, item closer` on one line if it fits in 100 columns, else one
        item per line with trailing commas (the layout ruff format would pick)."""
        tuple_comma = "," if len(items) == 1 and opener.endswith("= (") else ""
        line = "    " * indent + opener + ", ".join(items) + tuple_comma + closer
        if len(line) <= 100:
            self.lines.append(line)
            return
        self(opener, indent)
        for item in items:
            if len("    " * (indent + 1) + item) > 99 and " | " in item:
                # A long bit-packing expression: one operand per line.
                first, *rest = item.split(" | ")
                self(first, indent + 1)
                for operand in rest[:-1]:
                    self("| " + operand, indent + 1)
                self("| " + rest[-1] + ",", indent + 1)
            else:
                self(item + ",", indent + 1)
        self(closer, indent)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def generate(spec_path: Path) -> str:
    """Return the source text of spec.py for the XML at `spec_path`."""
    spec = load_spec(spec_path)
    structs: set[str] = {"H", "I", "HH"}
    methods = [m for c in spec.classes for m in c.methods]
    for m in methods:
        for run in layout(m.fields):
            if run.kind == "struct":
                structs.add(run.fmt)
        first = layout(m.fields)[:1]
        if first and first[0].kind == "struct":
            structs.add("HH" + first[0].fmt)
    for c in spec.classes:
        for p in c.properties:
            if p.type in FIXED_FORMATS:
                structs.add(FIXED_FORMATS[p.type])

    w = Writer()
    _emit_header(w, spec_path.name)
    _emit_constants(w, spec)
    w()
    w("# Precompiled big-endian layouts, named by their struct format.")
    for fmt in sorted(structs, key=lambda s: (len(s), s)):
        w(f'{struct_name(fmt)} = struct.Struct(">{fmt}")')
    w()
    w()
    _emit_base(w)
    for m in methods:
        w()
        w()
        _emit_method(w, m)
    w()
    w()
    _emit_dispatch(w, methods)
    for c in spec.classes:
        if c.properties:
            w()
            w()
            _emit_properties(w, c)
            if any(p.name == "delivery-mode" for p in c.properties):
                w()
                w()
                _emit_delivery_mode_of(w, c)
    return w.text()


def _emit_header(w: Writer, spec_name: str) -> None:
    w(f"# Generated by node/tools/codegen.py from {spec_name}; do not edit.")
    w("# Regenerate with `python -m node.tools.codegen`; a unit test checks it is current.")
    w('"""AMQP 0-9-1 constants, method classes and content properties (generated).')
    w()
    w("Each method class decodes its arguments with `decode(buf, offset)` (offset just past")
    w("the 4-byte class/method id) and encodes the whole method payload with `encode()`.")
    w("`decode_method(payload)` dispatches on the id.  Malformed input raises `AMQPSyntaxError`,")
    w("an unknown id raises `UnknownMethod`; both are ValueErrors from `fields.py`.")
    w('"""')
    w()
    w("from __future__ import annotations")
    w()
    w("import struct")
    w("from typing import Any, ClassVar")
    w()
    w("from node.amqp.fields import (")
    w("    AMQPSyntaxError,")
    w("    Buffer,")
    w("    UnknownMethod,")
    w("    decode_longstr,")
    w("    decode_shortstr,")
    w("    decode_table,")
    w("    encode_longstr,")
    w("    encode_shortstr,")
    w("    encode_table,")
    w(")")
    w()
    w("_TRUNCATED = (struct.error, IndexError)")


def _emit_constants(w: Writer, spec: Spec) -> None:
    w()
    w(f"VERSION_MAJOR = {spec.major}")
    w(f"VERSION_MINOR = {spec.minor}")
    w(f"VERSION_REVISION = {spec.revision}")
    w(f"PORT = {spec.port}")
    w()
    for c in spec.constants:
        comment = f"  # {c.kind}" if c.kind else ""
        w(f"{upper(c.name)} = {c.value}{comment}")
    w()
    replies = sorted(
        (c for c in spec.constants if c.kind or c.name == "reply-success"), key=lambda c: c.value
    )
    w("# Reply code -> the name RabbitMQ puts at the start of its reply text.")
    w("REPLY_TEXTS: dict[int, str] = {")
    for c in replies:
        w(f'    {upper(c.name)}: "{upper(c.name)}",')
    w("}")
    for kind in ("hard-error", "soft-error"):
        w(f"{upper(kind)}S: frozenset[int] = frozenset(")
        w("{", 1)
        for c in replies:
            if c.kind == kind:
                w(f"{upper(c.name)},", 2)
        w("}", 1)
        w(")")
    w()
    for amqp_class in spec.classes:
        w(f"CLASS_{upper(amqp_class.name)} = {amqp_class.index}")
    w("CLASS_NAMES: dict[int, str] = {")
    for amqp_class in spec.classes:
        w(f'    CLASS_{upper(amqp_class.name)}: "{amqp_class.name}",')
    w("}")


def _emit_base(w: Writer) -> None:
    w.block(
        [
            "class Method:",
            '    """Base of all method classes: equality and repr over `__slots__`."""',
            "",
            "    __slots__: tuple[str, ...] = ()",
            "    CLASS_ID: ClassVar[int]",
            "    METHOD_ID: ClassVar[int]",
            "    INDEX: ClassVar[int]",
            "    NAME: ClassVar[str]",
            "    SYNCHRONOUS: ClassVar[bool]",
            "    HAS_CONTENT: ClassVar[bool]",
            "    RESPONSES: ClassVar[tuple[str, ...]]",
            "",
            "    @classmethod",
            "    def decode(cls, buf: Buffer, offset: int) -> Method:",
            "        raise NotImplementedError",
            "",
            "    def encode(self) -> bytes:",
            "        raise NotImplementedError",
            "",
            "    def __eq__(self, other: object) -> bool:",
            "        if other.__class__ is not self.__class__:",
            "            return NotImplemented",
            "        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)",
            "",
            "    __hash__ = None  # type: ignore[assignment]  # mutable",
            "",
            "    def __repr__(self) -> str:",
            '        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)',
            '        return f"{self.__class__.__name__}({args})"',
        ]
    )


def _emit_method(w: Writer, m: Method) -> None:
    runs = layout(m.fields)
    w(f"class {m.py}(Method):")
    flags = [s for s, on in (("synchronous", m.synchronous), ("carries content", m.content)) if on]
    doc = f"{m.full_name} ({m.class_id}, {m.index})"
    w(f'    """{doc}{": " + ", ".join(flags) if flags else ""}."""', 0)
    w()
    w.wrapped("__slots__ = (", [f'"{f.py}"' for f in m.fields], ")", 1)
    w(f"    CLASS_ID = {m.class_id}")
    w(f"    METHOD_ID = {m.index}")
    w("    INDEX = (CLASS_ID << 16) | METHOD_ID")
    w(f'    NAME = "{m.full_name}"')
    w(f"    SYNCHRONOUS = {m.synchronous}")
    w(f"    HAS_CONTENT = {m.content}")
    responses = ", ".join(f'"{camel(m.class_name)}{camel(r)}"' for r in m.responses)
    w(f"    RESPONSES = ({responses}{',' if len(m.responses) == 1 else ''})")

    # __init__
    if m.fields:
        w()
        params = [f"{f.py}: {ANNOTATIONS[f.type]} = {DEFAULTS[f.type]}" for f in m.fields]
        w.wrapped("def __init__(", ["self", *params], ") -> None:", 1)
        for f in m.fields:
            if f.type == "table":
                w(f"        self.{f.py} = {{}} if {f.py} is None else {f.py}")
            else:
                w(f"        self.{f.py} = {f.py}")

    # decode
    w()
    w("    @classmethod")
    w(f"    def decode(cls, buf: Buffer, offset: int) -> {m.py}:")
    if not m.fields:
        w("        return cls()")
    else:
        w("        try:")
        nbits = 0
        bit_exprs: dict[str, str] = {}
        for i, run in enumerate(runs):
            last = i == len(runs) - 1
            if run.kind == "struct":
                targets, nbits = struct_targets(run, nbits, bit_exprs)
                lhs = ", ".join(targets) if len(targets) > 1 else f"({targets[0]},)"
                w(f"            {lhs} = {struct_name(run.fmt)}.unpack_from(buf, offset)")
                if not last:
                    w(f"            offset += {struct.calcsize('>' + run.fmt)}")
            else:
                assert run.var is not None
                target = run.var.py + ", " + ("_" if last else "offset")
                w(f"            {target} = decode_{run.kind}(buf, offset)")
        w("        except _TRUNCATED:")
        w(f'            raise AMQPSyntaxError("{m.full_name}: arguments truncated") from None')
        w("        except AMQPSyntaxError as exc:")
        w(f'            raise AMQPSyntaxError(f"{m.full_name}: {{exc}}") from None')
        w.wrapped("return cls(", [bit_exprs.get(f.py, f.py) for f in m.fields], ")", 2)

    if m.content and m.fields:
        _emit_unpack(w, m, runs)

    # encode
    w()
    w("    def encode(self) -> bytes:")
    header = struct.pack(">HH", m.class_id, m.index)
    # Each piece is a literal/call expression, or (struct name, argument expressions).
    pieces: list[str | tuple[str, list[str]]] = []
    for i, run in enumerate(runs):
        if run.kind == "struct":
            values = []
            for slot in run.items:
                if slot[0].type == "bit":
                    values.append(
                        " | ".join(
                            f"({1 << bit} if self.{f.py} else 0)" for bit, f in enumerate(slot)
                        )
                        if len(slot) > 1
                        else f"1 if self.{slot[0].py} else 0"
                    )
                else:
                    values.append(f"self.{slot[0].py}")
            if i == 0:
                # Fold the class/method id into the first struct run.
                pieces.append(
                    (struct_name("HH" + run.fmt), [str(m.class_id), str(m.index), *values])
                )
            else:
                pieces.append((struct_name(run.fmt), values))
        else:
            assert run.var is not None
            if i == 0:
                pieces.append(bytes_literal(header))
            pieces.append(f"encode_{run.kind}(self.{run.var.py})")
    if not pieces:
        w(f"        return {bytes_literal(header)}")
    elif len(pieces) == 1:
        # Only an all-fixed-width method has a single piece: the folded struct.
        assert isinstance(pieces[0], tuple)
        name, values = pieces[0]
        w.wrapped(f"return {name}.pack(", values, ")", 2)
    else:
        w('        return b"".join(')
        w("            (")
        for p in pieces:
            if isinstance(p, tuple):
                w.wrapped(f"{p[0]}.pack(", p[1], "),", 4)
            else:
                w(f"{p},", 4)
        w("            )")
        w("        )")


def struct_targets(run: Run, nbits: int, bit_exprs: dict[str, str]) -> tuple[list[str], int]:
    """The names a struct run unpacks into: a field's own name, or a `_bitsN` variable for
    a bit group, whose fields' expressions go into `bit_exprs`.  Returns them and the
    next bit group's number."""
    targets = []
    for slot in run.items:
        if slot[0].type == "bit":
            var = bits_var(nbits)
            nbits += 1
            targets.append(var)
            for bit, f in enumerate(slot):
                bit_exprs[f.py] = f"({var} & {1 << bit}) != 0"
        else:
            targets.append(slot[0].py)
    return targets, nbits


def _emit_unpack(w: Writer, m: Method, runs: Sequence[Run]) -> None:
    """`unpack`: the arguments as a plain tuple, short strings decoded inline (from bytes, not
    any buffer: `.decode()` is twice as fast as `str(..., "utf-8")`).  Methods that
    carry content are the per-message ones (basic.publish above all): the protocol core
    reads their arguments with this, without building a method object or calling a helper
    per field, and still refuses bytes that `decode` refuses, with the same errors."""
    names = [f.py for f in m.fields]
    w()
    w("    @staticmethod")
    w(f"    def unpack(buf: bytes, offset: int) -> tuple[{', '.join(ANNOTATIONS[f.type] for f in m.fields)}]:")
    w(f'        """{m.full_name}\'s arguments ({", ".join(names)}), as `decode` reads them."""')
    w("        try:")
    if any(r.kind == "shortstr" for r in runs):
        w("            _size = len(buf)")
    nbits = 0
    bit_exprs: dict[str, str] = {}
    for run in runs:
        if run.kind == "struct" and all(slot[0].py.startswith("reserved") for slot in run.items):
            # reserved (always 0, never read): skipped; a short frame still fails below
            size = struct.calcsize('>' + run.fmt)
            for slot in run.items:
                bit_exprs[slot[0].py] = "0"
            w(f"            offset += {size}")
            continue
        if run.kind == "struct":
            targets, nbits = struct_targets(run, nbits, bit_exprs)
            if run.fmt == "B":  # one octet (a bit group): indexing beats a struct call
                w(f"            {targets[0]} = buf[offset]")
                w("            offset += 1")
                continue
            lhs = ", ".join(targets) if len(targets) > 1 else f"({targets[0]},)"
            w(f"            {lhs} = {struct_name(run.fmt)}.unpack_from(buf, offset)")
            w(f"            offset += {struct.calcsize('>' + run.fmt)}")
        elif run.kind == "shortstr":
            assert run.var is not None
            w("            _end = offset + 1 + buf[offset]")
            w("            if _end > _size:")
            w("                raise IndexError")
            w(f"            {run.var.py} = buf[offset + 1:_end].decode()")
            w("            offset = _end")
        else:
            assert run.var is not None
            w(f"            {run.var.py}, offset = decode_{run.kind}(buf, offset)")
    w("        except _TRUNCATED:")
    w(f'            raise AMQPSyntaxError("{m.full_name}: arguments truncated") from None')
    w("        except UnicodeDecodeError as exc:")
    w(f'            raise AMQPSyntaxError(f"{m.full_name}: short string is not valid UTF-8 '
      '({exc.reason})") from None')
    w("        except AMQPSyntaxError as exc:")
    w(f'            raise AMQPSyntaxError(f"{m.full_name}: {{exc}}") from None')
    w.wrapped("return (", [bit_exprs.get(f.py, f.py) for f in m.fields], ")", 2)


def _emit_dispatch(w: Writer, methods: Sequence[Method]) -> None:
    w("METHODS: dict[int, type[Method]] = {")
    for m in methods:
        w(f"    {m.py}.INDEX: {m.py},")
    w("}")
    w()
    w()
    w.block(
        [
            "def decode_method(payload: Buffer) -> Method:",
            '    """Decode a method frame payload (class id, method id, arguments)."""',
            "    try:",
            "        (index,) = _S_I.unpack_from(payload, 0)",
            "    except struct.error:",
            "        raise AMQPSyntaxError(",
            '            f"method frame payload is {len(payload)} bytes; class and method id need 4"',
            "        ) from None",
            "    cls = METHODS.get(index)",
            "    if cls is None:",
            "        class_id, method_id = index >> 16, index & 0xFFFF",
            "        if class_id in CLASS_NAMES:",
            '            text = f"unknown method {class_id}.{method_id} in class {CLASS_NAMES[class_id]}"',
            "        else:",
            '            text = f"unknown class {class_id} (method {class_id}.{method_id})"',
            "        raise UnknownMethod(class_id, method_id, text)",
            "    return cls.decode(payload, 4)",
        ]
    )


def _emit_properties(w: Writer, c: AmqpClass) -> None:
    name = f"{camel(c.name)}Properties"
    props = c.properties
    flag = {p.py: 1 << (15 - i) for i, p in enumerate(props)}
    w(f"class {name}:")
    w(f'    """Content properties of class {c.name}, in spec order; None means absent.')
    w()
    w("    The property block is a 16-bit flag word (bit 15 = first property; bit 0 says")
    w('    another flag word follows) and then each present property in order."""')
    w()
    w("    __slots__ = (")
    for p in props:
        w(f'        "{p.py}",')
    w("    )")
    w(f"    CLASS_ID = {c.index}")
    for p in props:
        w(f"    FLAG_{p.py.upper().rstrip('_')} = 0x{flag[p.py]:04X}")
    w()
    w("    def __init__(")
    w("        self,")
    for p in props:
        w(f"        {p.py}: {ANNOTATIONS[p.type].replace(' | None', '')} | None = None,")
    w("    ) -> None:")
    for p in props:
        w(f"        self.{p.py} = {p.py}")

    w()
    w("    @classmethod")
    w(f"    def decode(cls, buf: Buffer, offset: int = 0) -> {name}:")
    w("        try:")
    w("            (flags,) = _S_H.unpack_from(buf, offset)")
    w("            offset += 2")
    w("            more = flags")
    w("            while more & 1:  # continuation: flag words for properties we lack")
    w("                (more,) = _S_H.unpack_from(buf, offset)")
    w("                offset += 2")
    for p in props:
        w(f"            if flags & 0x{flag[p.py]:04X}:")
        if p.type in ("shortstr", "longstr", "table"):
            w(f"                {p.py}, offset = decode_{p.type}(buf, offset)")
        else:
            fmt = FIXED_FORMATS[p.type]
            w(f"                ({p.py},) = {struct_name(fmt)}.unpack_from(buf, offset)")
            w(f"                offset += {struct.calcsize('>' + fmt)}")
        w("            else:")
        w(f"                {p.py} = None")
    w("        except _TRUNCATED:")
    w(f'            raise AMQPSyntaxError("{c.name} properties truncated") from None')
    w("        except AMQPSyntaxError as exc:")
    w(f'            raise AMQPSyntaxError(f"{c.name} properties: {{exc}}") from None')
    w.wrapped("return cls(", [p.py for p in props], ")", 2)

    w()
    w("    def encode(self) -> bytes:")
    w("        flags = 0")
    w('        pieces = [b""]  # becomes the flag word')
    for p in props:
        w(f"        if self.{p.py} is not None:")
        w(f"            flags |= 0x{flag[p.py]:04X}")
        if p.type in ("shortstr", "longstr", "table"):
            w(f"            pieces.append(encode_{p.type}(self.{p.py}))")
        else:
            w(f"            pieces.append({struct_name(FIXED_FORMATS[p.type])}.pack(self.{p.py}))")
    w("        pieces[0] = _S_H.pack(flags)")
    w('        return b"".join(pieces)')

    w()
    w("    def __eq__(self, other: object) -> bool:")
    w("        if other.__class__ is not self.__class__:")
    w("            return NotImplemented")
    w("        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)")
    w()
    w("    __hash__ = None  # type: ignore[assignment]  # mutable")
    w()
    w("    def __repr__(self) -> str:")
    w(
        '        args = (f"{n}={getattr(self, n)!r}" for n in self.__slots__ if getattr(self, n) is not None)'
    )
    w(f"        return f\"{name}({{', '.join(args)}})\"")


def _emit_delivery_mode_of(w: Writer, c: AmqpClass) -> None:
    props = c.properties
    target = next(i for i, p in enumerate(props) if p.name == "delivery-mode")
    flag = {p.py: 1 << (15 - i) for i, p in enumerate(props)}
    w("def delivery_mode_of(buf: Buffer, offset: int = 0) -> int:")
    w(f'    """The delivery-mode of a {c.name} property block at `offset`, 0 if absent.')
    w()
    w("    Skips the properties before it by their lengths instead of decoding them, so the")
    w('    publish path can learn persistence without building a properties object."""')
    w("    try:")
    w("        (flags,) = _S_H.unpack_from(buf, offset)")
    w(f"        if not flags & 0x{flag[props[target].py]:04X}:")
    w("            return 0")
    w("        offset += 2")
    w("        more = flags")
    w("        while more & 1:")
    w("            (more,) = _S_H.unpack_from(buf, offset)")
    w("            offset += 2")
    for p in props[:target]:
        w(f"        if flags & 0x{flag[p.py]:04X}:")
        if p.type == "shortstr":
            w("            offset += 1 + buf[offset]")
        elif p.type in ("longstr", "table"):
            w("            offset += 4 + _S_I.unpack_from(buf, offset)[0]")
        else:
            w(f"            offset += {struct.calcsize('>' + FIXED_FORMATS[p.type])}")
    w("        return buf[offset]")
    w("    except _TRUNCATED:")
    w(f'        raise AMQPSyntaxError("{c.name} properties truncated") from None')


# ---------------------------------------------------------------------- CLI


def default_spec_path() -> Path:
    env = os.environ.get(SPEC_ENV)
    return Path(env) if env else DEFAULT_SPEC


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node.tools.codegen",
        description="Generate node/amqp/spec.py from the AMQP 0-9-1 spec XML.",
    )
    parser.add_argument(
        "--spec", type=Path, default=None, help=f"spec XML (default: ${SPEC_ENV} or {DEFAULT_SPEC})"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="where to write spec.py"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the output file is out of date"
    )
    args = parser.parse_args(argv)

    spec_path: Path = args.spec or default_spec_path()
    if not spec_path.is_file():
        print(
            f"codegen: spec XML not found at {spec_path} (set --spec or ${SPEC_ENV})",
            file=sys.stderr,
        )
        return 2
    try:
        source = generate(spec_path)
    except (SpecError, ET.ParseError) as exc:
        print(f"codegen: {spec_path}: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != source:
            print(
                f"codegen: {output} is out of date; run `python -m node.tools.codegen`",
                file=sys.stderr,
            )
            return 1
        return 0
    output.write_text(source, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
