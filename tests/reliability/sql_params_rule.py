"""
The rule "SQL is built only with parameters", checked on the source (AST).

**Sinks.** The first argument of every ``.execute()``, ``.executemany()``,
``.executescript()``, ``.query()`` and ``.copy()`` (psycopg's ``COPY``) call (sqlite3, sqlite-utils,
``SQLiteStore.query``) is SQL text.

**The rule.** SQL text may be built only from:

- string (and number) literals;
- module-level constants, in this module or imported from the package
  (``_rows.EVENT_COLUMNS``, ``INBOX_COLUMNS``): table and column names;
- ``int(...)`` and ``len(...)`` (a number cannot inject anything);
- ``str.join``, ``str.format``, ``lower``, ``upper``, ``strip``, ``+``, ``*``,
  f-strings and conditional expressions over values allowed here;
- loop and comprehension variables over collections allowed here (element by element for literal
  rows: ``for table, key, position in (("inbox", "id", cp.inbox_id), ...)``
  allows ``table`` and ``key``);
- local variables and ``self.`` attributes all of whose assignments (``=``,
  ``+=``, ``.append()``, ``.extend()``, tuple unpacking of a package function's
  return) are allowed here, and the results of package functions that return
  allowed SQL (called by name, as ``self.f(...)``, or as ``module.f(...)`` of a
  package module);
- a parameter named ``sql`` (or ``*_sql``): a function that takes SQL is itself a
  sink, and every call of it in the package is checked by the same rule;
- a parameter of a private helper (``_name``) whose every call in the package
  passes an allowed value.

Anything else (a caller's argument, a configuration value, an input, an
attribute of an object) must travel as a bound ``?`` parameter, never in the
SQL text. :func:`violations` lists the sinks of one file that break the rule.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

SINKS = frozenset({"execute", "executemany", "executescript", "query", "copy"})
SAFE_CALLS = frozenset({"int", "len", "float", "bool"})
SAFE_METHODS = frozenset({"join", "format", "lower", "upper", "strip", "lstrip", "rstrip"})
PASS_THROUGH = frozenset({"str", "tuple", "list", "sorted", "frozenset", "set"})

Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None


class Package:
    """
    Every module of the package: ``kplus_fsm/**/*.py`` (subpackages such as
    ``cli/`` and ``_server/`` too) and ``adapters/**/*.py``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        files = sorted((root / "kplus_fsm").rglob("*.py")) + sorted(
            (root / "adapters").rglob("*.py")
        )
        self.modules = {path.resolve(): Module(self, path) for path in files}

    def module(self, path: Path) -> Module | None:
        return self.modules.get(path.resolve())

    def resolve_import(self, here: Path, module: str | None, level: int) -> Path | None:
        """
        The file of ``from <module> import ...`` seen from ``here``: relative at
        any level (``.``, ``..``), or absolute under ``kplus_fsm``; a package's
        ``__init__.py``; ``None`` for anything outside the package.
        """
        if level >= 1:
            base = here.parent
            for _ in range(level - 1):
                base = base.parent
            parts = module.split(".") if module else []
        elif level == 0 and module is not None and module.split(".")[0] == "kplus_fsm":
            parts = module.split(".")[1:]
            base = self.root / "kplus_fsm"
            if parts[:1] == ["adapters"]:
                base, parts = self.root / "adapters", parts[1:]
        else:
            return None
        if not parts:
            return base / "__init__.py"
        package = base.joinpath(*parts)
        if package.is_dir():
            return package / "__init__.py"
        return base.joinpath(*parts[:-1]) / f"{parts[-1]}.py"

    def submodule(self, package_init: Path, name: str) -> Module | None:
        """Module ``name`` of the package whose ``__init__.py`` is given (``from . import x``)."""
        directory = package_init.parent
        return self.module(directory / f"{name}.py") or self.module(
            directory / name / "__init__.py"
        )

    def calls_of(self, name: str) -> Iterator[tuple[Module, ast.Call, list[ast.expr], Scope]]:
        """Every call of a function or method ``name`` in the package, with its arguments."""
        for module in self.modules.values():
            for node, scope in module.walk():
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                args = list(node.args)
                if _name_of(func) == "partial" and args:
                    func, args = args[0], args[1:]
                    if _name_of(func) == name:
                        yield module, node, args, scope
                    continue
                if _name_of(func) == name:
                    yield module, node, args, scope


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class Module:
    def __init__(self, package: Package, path: Path) -> None:
        self.package = package
        self.path = path
        self.source = path.read_text(encoding="utf-8")
        self.tree = ast.parse(self.source, filename=str(path))
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node

    def walk(self) -> Iterator[tuple[ast.AST, Scope]]:
        for node in ast.walk(self.tree):
            yield node, self.scope_of(node)

    def scope_of(self, node: ast.AST) -> Scope:
        parent = self.parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                return parent
            parent = self.parents.get(parent)
        return None

    def enclosing(self, scope: Scope) -> Scope:
        return None if scope is None else self.scope_of(scope)

    def class_of(self, node: ast.AST) -> ast.ClassDef | None:
        parent = self.parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.ClassDef):
                return parent
            parent = self.parents.get(parent)
        return None


class Checker:
    def __init__(self, package: Package) -> None:
        self.package = package
        self._busy: set[tuple[int, str]] = set()
        self._known: dict[tuple[int, str], bool] = {}
        self._assumed = 0

    # ---------------------------------------------------------------- entry

    def violations(self, path: Path) -> list[str]:
        module = self.package.module(path)
        assert module is not None, path
        found = []
        for node, scope in module.walk():
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr not in SINKS or not node.args:
                continue
            if not self.safe(module, node.args[0], scope):
                line = ast.get_source_segment(module.source, node) or ast.unparse(node)
                first = line.splitlines()[0] if line else ""
                found.append(f"{path.name}:{node.lineno}: {first.strip()}")
        return found

    # ------------------------------------------------------------ the value rule

    def safe(
        self, module: Module, expr: ast.expr, scope: Scope, bound: frozenset[str] = frozenset()
    ) -> bool:
        key = (id(expr), repr(sorted(bound)))
        if key in self._known:
            return self._known[key]
        if key in self._busy:
            self._assumed += 1
            return True  # a cycle adds nothing new: judged by its other bindings
        self._busy.add(key)
        assumed = self._assumed
        try:
            result = self._safe(module, expr, scope, bound)
        finally:
            self._busy.discard(key)
        # Remembered unless it leaned on a cycle's provisional "safe" (a "not
        # safe" never does: the provisional answer can only be optimistic).
        if not result or self._assumed == assumed:
            self._known[key] = result
        return result

    def _safe(self, module: Module, expr: ast.expr, scope: Scope, bound: frozenset[str]) -> bool:
        safe = functools.partial(self.safe, module, scope=scope, bound=bound)
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.JoinedStr):
            return all(safe(v.value) for v in expr.values if isinstance(v, ast.FormattedValue))
        if isinstance(expr, ast.FormattedValue):
            return safe(expr.value)
        if isinstance(expr, ast.BinOp):
            return safe(expr.left) and safe(expr.right)
        if isinstance(expr, ast.IfExp):
            return safe(expr.body) and safe(expr.orelse)
        if isinstance(expr, ast.Tuple | ast.List | ast.Set):
            return all(safe(e) for e in expr.elts)
        if isinstance(expr, ast.Starred):
            return safe(expr.value)
        if isinstance(expr, ast.Subscript):
            return safe(expr.value)
        if isinstance(expr, ast.Dict):
            return all(safe(e) for e in [*expr.keys, *expr.values] if e is not None)
        if isinstance(expr, ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.DictComp):
            names = set(bound)
            for gen in expr.generators:
                if not safe(gen.iter):
                    return False
                names |= _target_names(gen.target)
            inner = frozenset(names)
            if isinstance(expr, ast.DictComp):
                return self.safe(module, expr.key, scope, inner) and self.safe(
                    module, expr.value, scope, inner
                )
            return self.safe(module, expr.elt, scope, inner)
        if isinstance(expr, ast.Call):
            return self._safe_call(module, expr, scope, bound)
        if isinstance(expr, ast.Name):
            return expr.id in bound or self._safe_name(module, expr.id, scope, expr)
        if isinstance(expr, ast.Attribute):
            return self._safe_attribute(module, expr, scope)
        return False

    def _safe_call(
        self, module: Module, call: ast.Call, scope: Scope, bound: frozenset[str]
    ) -> bool:
        safe = functools.partial(self.safe, module, scope=scope, bound=bound)
        func = call.func
        if isinstance(func, ast.Name) and func.id in SAFE_CALLS:
            return True
        if isinstance(func, ast.Name) and func.id in PASS_THROUGH:
            return all(safe(a) for a in call.args)
        if isinstance(func, ast.Attribute) and func.attr in SAFE_METHODS:
            return (
                safe(func.value)
                and all(safe(a) for a in call.args)
                and all(safe(k.value) for k in call.keywords)
            )
        target = self._function(module, func)
        if target is not None:
            fmodule, fdef = target
            returns = [r.value for r in ast.walk(fdef) if isinstance(r, ast.Return) and r.value]
            return bool(returns) and all(self.safe(fmodule, r, fdef) for r in returns)
        return False

    def _function(
        self, module: Module, func: ast.expr
    ) -> tuple[Module, ast.FunctionDef | ast.AsyncFunctionDef] | None:
        """A package function called by name (``f(...)`` or ``self.f(...)``), if one."""
        if isinstance(func, ast.Name):
            defs = [d for d in module.functions.get(func.id, []) if module.class_of(d) is None]
            if len(defs) == 1:
                return module, defs[0]
            imported = self._imported(module, func.id)
            if imported is not None:
                other, name = imported
                defs = [d for d in other.functions.get(name, []) if other.class_of(d) is None]
                if len(defs) == 1:
                    return other, defs[0]
        if isinstance(func, ast.Attribute) and _name_of(func.value) == "self":
            defs = module.functions.get(func.attr, [])
            if len(defs) == 1:
                return module, defs[0]
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            # ``_audit.timeline_sql(...)``: a function of a package module imported by name.
            owner = self._imported_module(module, func.value.id)
            if owner is not None:
                defs = [d for d in owner.functions.get(func.attr, []) if owner.class_of(d) is None]
                if len(defs) == 1:
                    return owner, defs[0]
        return None

    def _imported(self, module: Module, name: str) -> tuple[Module, str] | None:
        for node in module.tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) != name:
                        continue
                    path = self.package.resolve_import(module.path, node.module, node.level)
                    if path is None:
                        return None
                    # ``from . import _codec``: a module, not a name in one.
                    if path.name == "__init__.py" and self.package.submodule(path, alias.name):
                        return None
                    other = self.package.module(path)
                    return (other, alias.name) if other is not None else None
        return None

    def _imported_module(self, module: Module, name: str) -> Module | None:
        for node in module.tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        base = self.package.resolve_import(module.path, node.module, node.level)
                        if base is None or base.name != "__init__.py":
                            return None
                        return self.package.submodule(base, alias.name)
        return None

    def _safe_attribute(self, module: Module, attr: ast.Attribute, scope: Scope) -> bool:
        owner = attr.value
        if isinstance(owner, ast.Name) and owner.id == "self":
            values = list(_self_assignments(module, attr.attr))
            return bool(values) and all(self.safe(module, v, s) for v, s in values)
        if isinstance(owner, ast.Name):
            other = self._imported_module(module, owner.id)
            if other is not None:
                return self._safe_module_name(other, attr.attr)
        return False

    def _safe_module_name(self, module: Module, name: str) -> bool:
        values = list(_bindings(module, name, None))
        if values:
            return all(self._safe_binding(module, b, None) for b in values)
        imported = self._imported(module, name)
        if imported is not None:
            return self._safe_module_name(*imported)
        return False

    def _safe_name(self, module: Module, name: str, scope: Scope, at: ast.AST) -> bool:
        # A comprehension around ``at`` that binds ``name``: its iterable decides.
        node = module.parents.get(at)
        while node is not None and node is not scope:
            if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
                for gen in node.generators:
                    if name in _target_names(gen.target):
                        return self.safe(module, gen.iter, module.scope_of(node))
            node = module.parents.get(node)
        while scope is not None:
            if _binds(scope, name):
                return all(
                    self._safe_binding(module, b, scope) for b in _bindings(module, name, scope)
                )
            scope = module.enclosing(scope)
        return self._safe_module_name(module, name)

    def _safe_binding(self, module: Module, binding: Binding, scope: Scope) -> bool:
        kind, value, extra = binding
        if kind == "value":
            assert isinstance(value, ast.expr)
            return self.safe(module, value, scope)
        if kind == "unpack":  # a, b = f(...) / (x, y): element ``extra`` of the value
            assert isinstance(value, ast.expr)
            assert isinstance(extra, int)
            return self._safe_element(module, value, extra, scope)
        if kind == "loop":  # for name in <iter>, element ``extra`` of each row (or all)
            assert isinstance(value, ast.expr)
            assert isinstance(extra, int)
            if extra == -1:
                return self.safe(module, value, scope)
            return self._safe_loop_element(module, value, extra, scope)
        if kind == "param":
            assert isinstance(value, ast.FunctionDef | ast.AsyncFunctionDef)
            return self._safe_parameter(module, value, str(extra))
        return False

    def _safe_element(self, module: Module, value: ast.expr, index: int, scope: Scope) -> bool:
        if isinstance(value, ast.Tuple | ast.List):
            return index < len(value.elts) and self.safe(module, value.elts[index], scope)
        if isinstance(value, ast.Call):
            target = self._function(module, value.func)
            if target is None:
                return False
            fmodule, fdef = target
            returns = [r.value for r in ast.walk(fdef) if isinstance(r, ast.Return) and r.value]
            return bool(returns) and all(
                self._safe_element(fmodule, r, index, fdef) for r in returns
            )
        return False

    def _safe_loop_element(self, module: Module, rows: ast.expr, index: int, scope: Scope) -> bool:
        if isinstance(rows, ast.Tuple | ast.List):
            return all(self._safe_element(module, row, index, scope) for row in rows.elts)
        return self.safe(module, rows, scope)

    def _safe_parameter(
        self, module: Module, fdef: ast.FunctionDef | ast.AsyncFunctionDef, name: str
    ) -> bool:
        sql_typed = name == "sql" or name.endswith("_sql")
        if sql_typed and fdef.name in SINKS:
            return True  # ``def execute(self, sql)``: each of its calls is a sink, checked there
        private = fdef.name.startswith("_") and not fdef.name.startswith("__")
        if not (sql_typed or private):
            return False  # a public function's argument: the caller's value, not ours
        params = [a.arg for a in [*fdef.args.posonlyargs, *fdef.args.args]]
        method = module.class_of(fdef) is not None and params[:1] in (["self"], ["cls"])
        index = params.index(name) if name in params else None
        defaults = dict(
            zip(params[len(params) - len(fdef.args.defaults) :], fdef.args.defaults, strict=True)
        )
        defaults.update(
            {
                a.arg: d
                for a, d in zip(fdef.args.kwonlyargs, fdef.args.kw_defaults, strict=True)
                if d
            }
        )
        calls = list(self.package.calls_of(fdef.name))
        if not calls:
            return sql_typed  # a public SQL entry point no package code calls: a sink
        for cmodule, call, args, cscope in calls:
            given: ast.expr | None = None
            for kw in call.keywords:
                if kw.arg == name:
                    given = kw.value
            if given is None and index is not None:
                position = index - (1 if method else 0)
                if 0 <= position < len(args) and not any(
                    isinstance(a, ast.Starred) for a in args[: position + 1]
                ):
                    given = args[position]
            if given is None:
                given = defaults.get(name)
                if given is None:
                    continue
                if not self.safe(module, given, None):
                    return False
                continue
            if not self.safe(cmodule, given, cscope):
                return False
        return True


Binding = tuple[str, ast.AST, int | str | None]


def _target_names(target: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _binds(scope: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, name: str) -> bool:
    args = scope.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg:
        params.append(args.vararg)
    if args.kwarg:
        params.append(args.kwarg)
    if any(a.arg == name for a in params):
        return True
    if isinstance(scope, ast.Lambda):
        return False
    return any(True for _ in _bindings_in(scope, name, own_only=True))


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function body, not those of functions nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _bindings_in(scope: ast.AST, name: str, *, own_only: bool) -> Iterator[Binding]:
    nodes = _own_nodes(scope) if own_only else iter(ast.walk(scope))
    for node in nodes:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _assigned(target, node.value, name)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            yield from _assigned(node.target, node.value, name)
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                yield ("value", node.value, None)
        elif isinstance(node, ast.For | ast.AsyncFor):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                yield ("loop", node.iter, -1)
            elif isinstance(node.target, ast.Tuple):
                for i, elt in enumerate(node.target.elts):
                    if isinstance(elt, ast.Name) and elt.id == name:
                        yield ("loop", node.iter, i)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            if name in _target_names(node.optional_vars):
                yield ("value", node.context_expr, None)
        elif isinstance(node, ast.NamedExpr) and node.target.id == name:
            yield ("value", node.value, None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
            and node.func.attr in ("append", "extend", "insert", "add", "update")
        ):
            for arg in node.args[-1:]:
                yield ("value", arg, None)
        elif isinstance(node, ast.Import | ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            yield ("import", node, None)


def _assigned(target: ast.expr, value: ast.expr, name: str) -> Iterator[Binding]:
    if isinstance(target, ast.Name) and target.id == name:
        yield ("value", value, None)
    elif isinstance(target, ast.Tuple | ast.List):
        for i, elt in enumerate(target.elts):
            if isinstance(elt, ast.Name) and elt.id == name:
                yield ("unpack", value, i)


def _bindings(module: Module, name: str, scope: Scope) -> Iterator[Binding]:
    if scope is None:
        for node in module.tree.body:
            # Module level: assignments, loops and imports at the top (not in functions).
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                continue  # resolved by _imported
            yield from _bindings_in(ast.Module(body=[node], type_ignores=[]), name, own_only=True)
        return
    if isinstance(scope, ast.Lambda):
        return
    args = scope.args
    for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
        if a.arg == name:
            yield ("param", scope, name)
    for vararg in (args.vararg, args.kwarg):
        if vararg is not None and vararg.arg == name:
            yield ("opaque", scope, name)
    yield from _bindings_in(scope, name, own_only=True)


def _self_assignments(module: Module, attr: str) -> Iterator[tuple[ast.expr, Scope]]:
    for node, scope in module.walk():
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == attr
                and _name_of(target.value) == "self"
                and isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign)
                and node.value is not None
            ):
                yield node.value, scope


def violations(root: Path, path: Path) -> list[str]:
    """The sinks of ``path`` whose SQL text breaks the rule (``file:line: code``)."""
    return _checker(root).violations(path)


@functools.cache
def _checker(root: Path) -> Checker:
    """One checker per tree: what it judged of one file it remembers for the next."""
    return Checker(Package(root))
