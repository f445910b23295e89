"""python/fastloop/_core.pyi against the built fastloop._core module.

These tests inspect the native module and its stub file; no event loop runs,
so they take no ``loop`` fixture (there is nothing to compare with asyncio).

They do what ``mypy.stubtest`` would, and what it cannot here: stubtest skips
private names the runtime has and the stub lacks, and it checks a signature
only through ``inspect.signature``, which pybind11 functions and our
METH_FASTCALL methods do not support. So the check is by hand:

- names: every name of the module and every name a class defines itself,
  private ones included, is in the stub, and the stub has nothing else;
- kinds: a ``def`` is callable at runtime, an attribute or ``@property`` is a
  data descriptor; a read-only runtime property is a ``@property`` in the stub;
- arity: where the runtime's docstring starts with a signature (pybind11's, or
  ours: "call_at(when, callback, *args, context=None): ..."), the stub has the
  same positional parameters (the same names where the runtime names them),
  the same required count, and *args/**kwargs/keyword-only ones alike.

When the bindings gain or lose a name, the failure lists exactly which names
to add to or remove from python/fastloop/_core.pyi.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastloop import _core

STUB = Path(__file__).resolve().parent.parent / "python" / "fastloop" / "_core.pyi"

# Names every class has without saying anything about our API: Python's and
# pybind11's bookkeeping (_pybind11_conduit_v1_ is pybind11's cross-module
# hook, present in some versions only), the repr every object has, and the
# offset a C type that supports vectorcall declares (__vectorcalloffset__).
# Constructors (__init__/__new__) are compared apart (see test_constructors).
CLASS_BOOKKEEPING = {
    "__doc__",
    "__module__",
    "__dict__",
    "__weakref__",
    "__repr__",
    "_pybind11_conduit_v1_",
    "__vectorcalloffset__",
}
CONSTRUCTORS = {"__init__", "__new__"}


@dataclass
class Params:
    """The parameters of a callable, without self."""

    positional: list[tuple[str, bool]] = field(default_factory=list)  # (name, has default)
    varargs: bool = False
    kwonly: list[tuple[str, bool]] = field(default_factory=list)  # (name, has default)
    varkw: bool = False

    def describe(self) -> str:
        parts = [f"{n}=..." if d else n for n, d in self.positional]
        if self.varargs:
            parts.append("*args")
        elif self.kwonly:
            parts.append("*")
        parts += [f"{n}=..." if d else n for n, d in self.kwonly]
        if self.varkw:
            parts.append("**kwargs")
        return f"({', '.join(parts)})"


@dataclass
class StubMember:
    kind: str  # "def", "property" or "attribute"
    params: Params | None = None


@dataclass
class StubClass:
    members: dict[str, StubMember]


def stub_params(fn: ast.FunctionDef, is_method: bool) -> Params:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if is_method and positional:
        positional = positional[1:]  # self
    n_defaults = len(a.defaults)
    first_default = len([*a.posonlyargs, *a.args]) - n_defaults
    offset = 1 if is_method and [*a.posonlyargs, *a.args] else 0
    params = Params()
    for i, arg in enumerate(positional):
        params.positional.append((arg.arg, i + offset >= first_default))
    params.varargs = a.vararg is not None
    params.kwonly = [
        (k.arg, d is not None) for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    params.varkw = a.kwarg is not None
    return params


def member_of(node: ast.stmt, is_method: bool) -> tuple[str, StubMember] | None:
    if isinstance(node, ast.FunctionDef):
        decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
        if "property" in decorators:
            return node.name, StubMember("property")
        return node.name, StubMember("def", stub_params(node, is_method))
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, StubMember("attribute")
    return None


def parse_stub() -> tuple[dict[str, StubMember], dict[str, StubClass]]:
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    functions: dict[str, StubMember] = {}
    classes: dict[str, StubClass] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = {}
            for sub in node.body:
                found = member_of(sub, is_method=True)
                if found:
                    members[found[0]] = found[1]
            classes[node.name] = StubClass(members)
        else:
            found = member_of(node, is_method=False)
            if found:
                functions[found[0]] = found[1]
    return functions, classes


STUB_FUNCTIONS, STUB_CLASSES = parse_stub()
RUNTIME_CLASSES = {n: o for n, o in vars(_core).items() if isinstance(o, type)}
RUNTIME_FUNCTIONS = {
    n: o
    for n, o in vars(_core).items()
    if not (n.startswith("__") and n.endswith("__")) and not isinstance(o, type)
}


def split_top_level(text: str) -> list[str]:
    """Split a parameter list on the commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def runtime_params(name: str, obj: object, is_method: bool) -> Params | None:
    """The parameters the runtime's docstring announces, or None if it does not."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    m = re.match(
        rf"^{re.escape(name)}\((.*?)\)(?:\s*->.*)?(?::.*)?$", doc.splitlines()[0] if doc else ""
    )
    if not m:
        return None
    params = Params()
    star = False
    for i, part in enumerate(split_top_level(m[1])):
        pname = part.split(":")[0].split("=")[0].strip()
        if is_method and i == 0 and pname == "self":
            continue
        if pname.startswith("**"):
            params.varkw = True
        elif pname.startswith("*"):
            params.varargs = pname != "*"
            star = True
        elif star:
            params.kwonly.append((pname, "=" in part))
        else:
            params.positional.append((pname, "=" in part))
    return params


def compare_params(where: str, stub: Params, runtime: Params) -> list[str]:
    problems = []
    same_shape = (
        len(stub.positional) == len(runtime.positional)
        and [d for _, d in stub.positional] == [d for _, d in runtime.positional]
        and stub.varargs == runtime.varargs
        and stub.varkw == runtime.varkw
        and stub.kwonly == runtime.kwonly
    )
    # pybind11 calls unnamed parameters arg0, arg1...: those names mean nothing.
    named = [
        (s, r)
        for (s, _), (r, _) in zip(stub.positional, runtime.positional, strict=False)
        if not re.fullmatch(r"arg\d+", r)
    ]
    if not same_shape or any(s != r for s, r in named):
        problems.append(
            f"{where}: the stub says {stub.describe()}, the runtime {runtime.describe()}"
        )
    return problems


def is_runtime_callable(obj: object) -> bool:
    return callable(obj) and not isinstance(obj, property)


def runtime_member_kind(obj: object) -> str:
    if isinstance(obj, property):
        return "property" if obj.fset is None else "attribute"
    if inspect.isgetsetdescriptor(obj) or inspect.ismemberdescriptor(obj):
        return "data"  # a C-level attribute: read-only or not cannot be told
    if is_runtime_callable(obj):
        return "def"
    return "attribute"


def report(problems: list[str]) -> None:
    if problems:
        pytest.fail(
            "\n".join(problems) + f"\n(python/fastloop/_core.pyi must match the bindings: {STUB})",
            pytrace=False,
        )


def name_diff(what: str, runtime: set[str], stub: set[str]) -> list[str]:
    out = []
    if missing := sorted(runtime - stub):
        out.append(f"{what}: missing from _core.pyi: {', '.join(missing)}")
    if extra := sorted(stub - runtime):
        out.append(f"{what}: in _core.pyi but not in _core: {', '.join(extra)}")
    return out


def test_module_names():
    """The module's own names: classes and functions, private ones included."""
    problems = name_diff("_core classes", set(RUNTIME_CLASSES), set(STUB_CLASSES))
    problems += name_diff("_core functions", set(RUNTIME_FUNCTIONS), set(STUB_FUNCTIONS))
    report(problems)


@pytest.mark.parametrize("cls_name", sorted(RUNTIME_CLASSES))
def test_class_names(cls_name):
    """Every name the class defines itself is in the stub's class, and no other."""
    stub = STUB_CLASSES.get(cls_name)
    assert stub is not None, f"_core.{cls_name} is missing from _core.pyi"
    runtime_names = set(vars(RUNTIME_CLASSES[cls_name])) - CLASS_BOOKKEEPING - CONSTRUCTORS
    stub_names = set(stub.members) - CONSTRUCTORS
    problems = name_diff(f"_core.{cls_name}", runtime_names, stub_names)
    report(problems)


def test_kinds_and_signatures():
    """Methods are methods, attributes attributes; arities agree where the runtime says."""
    problems = []
    for name, member in STUB_FUNCTIONS.items():
        obj = RUNTIME_FUNCTIONS.get(name)
        if obj is None:
            continue  # reported by test_module_names
        if member.kind != "def" or not callable(obj):
            problems.append(f"_core.{name}: the stub has a {member.kind}, the runtime {obj!r}")
            continue
        if (rt := runtime_params(name, obj, is_method=False)) is not None:
            problems += compare_params(f"_core.{name}", member.params, rt)
    for cls_name, stub in STUB_CLASSES.items():
        cls = RUNTIME_CLASSES.get(cls_name)
        if cls is None:
            continue
        for name, member in stub.members.items():
            where = f"_core.{cls_name}.{name}"
            if name not in vars(cls):
                if name in CONSTRUCTORS or hasattr(cls, name):
                    continue  # inherited, or a constructor: see test_constructors
                continue  # reported by test_class_names
            obj = vars(cls)[name]
            kind = runtime_member_kind(obj)
            if member.kind == "def":
                if kind != "def":
                    problems.append(f"{where}: a method in the stub, a {kind} at runtime")
                elif (rt := runtime_params(name, obj, is_method=True)) is not None:
                    problems += compare_params(where, member.params, rt)
            elif kind == "def":
                problems.append(f"{where}: a {member.kind} in the stub, a method at runtime")
            elif member.kind == "attribute" and kind == "property":
                problems.append(f"{where}: read-only at runtime: make it a @property")
            elif member.kind == "property" and kind == "attribute":
                problems.append(f"{where}: settable at runtime: make it an attribute")
    report(problems)


@pytest.mark.parametrize("cls_name", sorted(RUNTIME_CLASSES))
def test_constructors(cls_name):
    """The stub's __init__ takes what the runtime's __init__ announces."""
    cls = RUNTIME_CLASSES[cls_name]
    stub = STUB_CLASSES.get(cls_name)
    assert stub is not None, f"_core.{cls_name} is missing from _core.pyi"
    init = stub.members.get("__init__")
    own_init = vars(cls).get("__init__")
    if own_init is not None:
        assert init is not None, f"_core.{cls_name}: the runtime has __init__, the stub none"
    if init is None or own_init is None:
        # A C type built by __new__ (Handle) gives no signature to compare.
        assert init is not None or "__new__" not in vars(cls), (
            f"_core.{cls_name}: constructible at runtime, the stub has no __init__"
        )
        return
    rt = runtime_params("__init__", own_init, is_method=True)
    text_signature = getattr(cls, "__text_signature__", None)
    if rt is None and text_signature:
        # A C type's __init__ slot has no signature of its own: the type's
        # docstring gives it ("Name(sig)\n--\n\n", read into __text_signature__).
        rt = runtime_params("__init__", SimpleNamespace(__doc__=f"__init__{text_signature}"), False)
    assert rt is not None, f"_core.{cls_name}.__init__: no signature in its docstring"
    problems = compare_params(f"_core.{cls_name}.__init__", init.params, rt)
    report(problems)


def test_the_stub_parses_into_every_kind():
    """The parser above sees the stub's defs, properties and attributes (no silent pass)."""
    loop = STUB_CLASSES["Loop"].members
    assert loop["call_at"].kind == "def"
    assert loop["call_at"].params.describe() == "(when, callback, *args, context=...)"
    assert loop["_thread_id"].kind == "property"
    assert loop["_debug"].kind == "attribute"
    rt = runtime_params("call_at", vars(_core.Loop)["call_at"], is_method=True)
    assert rt is not None and rt.describe() == "(when, callback, *args, context=...)"
    rt = runtime_params("_spawn", _core._spawn, is_method=False)
    assert rt is not None and rt.positional[0] == ("executable", False) and len(rt.positional) == 12
