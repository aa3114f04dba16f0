"""What a formula may contain: every expression is checked, as a Python syntax tree, before
anything is evaluated.

formulaic evaluates the Python pieces of a formula (``np.log(x)``, ``I(x**2)``, ``C(f)``) with
``eval``, which would otherwise reach Python's builtins (``eval``, ``open``, ``__import__``) and
whatever the calling module has imported.  mixedfx therefore

1. parses each such piece with :mod:`ast` and accepts only: names of variables (data columns),
   numbers and strings, arithmetic, comparison and boolean operators, and calls of the functions
   listed in :data:`FUNCTIONS` (or ``np.<ufunc>``, ``contr.<contrast>``) with plain arguments; no
   attribute access but ``np.``/``numpy.``/``contr.``, no dunder names, no subscripts, lambdas,
   comprehensions or f-strings (:func:`check_expression`);
2. evaluates with an explicit namespace of exactly those functions (:func:`evaluation_context`),
   never the caller's frame.

A refused expression raises :class:`~mixedfx.errors.FormulaError` naming the forbidden name.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache

import numpy as np

from ..errors import FormulaError

#: Functions a formula may call, by the name it calls them with (formulaic's transforms and
#: R-style aliases that mixedfx provides; see :mod:`mixedfx.spec.rsyntax`).
FUNCTIONS = frozenset(
    {
        # formulaic transforms
        "I", "C", "Q", "poly", "scale", "center", "standardize", "bs", "cr", "cs", "cc",
        # contrasts usable inside C(...)
        "Treatment", "Sum", "Helmert", "Diff", "Poly",
        # elementwise mathematics (numpy)
        "log", "log2", "log10", "log1p", "exp", "exp2", "exp10", "expm1", "sqrt", "abs", "sign",
        "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "floor", "ceil",
        "round", "power", "minimum", "maximum",
        # R-style aliases (R's names translated by the formula parser)
        "factor", "as_numeric", "as_factor", "ns", "offset",
    }
)  # fmt: skip

#: Names of modules (and formulaic's contrast namespace) whose attributes a formula may use.
MODULES = frozenset({"np", "numpy", "contr"})

#: Contrast functions of formulaic's ``contr`` namespace.
CONTRASTS = frozenset({"treatment", "sum", "helmert", "diff", "poly", "custom"})

#: Constants a formula may name without a data column.
CONSTANTS = frozenset({"pi", "e", "inf", "nan", "True", "False", "None"})

#: numpy attributes that are not ufuncs but are safe to reference (constants).
NUMPY_CONSTANTS = frozenset({"pi", "e", "inf", "nan", "euler_gamma"})

#: Names whose mere appearance is refused, with the reason given in the error.
FORBIDDEN = frozenset(
    {
        "eval", "exec", "open", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
        "locals", "vars", "input", "breakpoint", "exit", "quit", "help", "memoryview", "object", "type",
        "os", "sys", "subprocess", "builtins", "importlib", "pd", "pandas",
    }
)  # fmt: skip

_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.keyword,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Attribute,
    ast.Tuple,
    ast.List,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)

_BACKTICKED = re.compile(r"`[^`]*`")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") or name.endswith("__")


def _numpy_attribute_allowed(attr: str) -> bool:
    """``np.<attr>``: numpy's elementwise functions (ufuncs) and constants only."""
    if attr in NUMPY_CONSTANTS:
        return True
    return isinstance(getattr(np, attr, None), np.ufunc)


def _refuse(expr: str, what: str) -> FormulaError:
    return FormulaError(f"Formula expression {expr!r} is not allowed: {what}.")


def _check_attribute(node: ast.Attribute, expr: str) -> None:
    base = node.value
    if not isinstance(base, ast.Name) or base.id not in MODULES:
        raise _refuse(expr, f"attribute access '.{node.attr}' (only np.<function> and contr.<contrast> are allowed)")
    if _is_dunder(node.attr):
        raise _refuse(expr, f"forbidden name {node.attr!r}")
    if base.id == "contr":
        if node.attr not in CONTRASTS:
            raise _refuse(expr, f"unknown contrast 'contr.{node.attr}'")
    elif not _numpy_attribute_allowed(node.attr):
        raise _refuse(expr, f"'{base.id}.{node.attr}' is not an elementwise numpy function")


def _check_call(node: ast.Call, expr: str) -> None:
    func = node.func
    if isinstance(func, ast.Name):
        if func.id in FORBIDDEN or _is_dunder(func.id):
            raise _refuse(expr, f"forbidden name {func.id!r}")
        if func.id not in FUNCTIONS:
            raise _refuse(expr, f"function {func.id!r} is not one a formula may call")
    elif not isinstance(func, ast.Attribute):
        raise _refuse(expr, "only named functions may be called")
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _refuse(expr, "'**' arguments")
        if _is_dunder(keyword.arg) or keyword.arg.startswith("_"):
            raise _refuse(expr, f"forbidden argument name {keyword.arg!r}")


def _placeholders(expr: str) -> tuple[str, dict[str, str]]:
    """``expr`` with each backticked name replaced by a plain identifier (and the mapping back)."""
    names: dict[str, str] = {}

    def substitute(match: re.Match) -> str:
        key = f"_mixedfx_quoted_{len(names)}"
        names[key] = match.group(0)[1:-1]
        return key

    return _BACKTICKED.sub(substitute, expr), names


@lru_cache(maxsize=1024)
def expression_variables(expr: str) -> frozenset[str]:
    """Check ``expr`` (see the module docstring) and return the variables (data columns) it names.

    Raises :class:`~mixedfx.errors.FormulaError` for anything not allowed.
    """
    text, quoted = _placeholders(expr)
    if "`" in text:
        raise _refuse(expr, "an unmatched backtick")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"Cannot parse the formula expression {expr!r}: {exc.msg}.") from None
    variables: set[str] = set()
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    attribute_bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise _refuse(expr, f"{type(node).__name__} syntax")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            _check_call(node, expr)
            if isinstance(node.func, ast.Name) and node.func.id == "Q" and node.args:
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    raise _refuse(expr, "Q() takes a column name in quotes")
                variables.add(first.value)
        elif isinstance(node, ast.Attribute):
            _check_attribute(node, expr)
        elif isinstance(node, ast.Constant) and not isinstance(
            node.value, (int, float, complex, str, bool, type(None))
        ):
            raise _refuse(expr, f"constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id in quoted:
                variables.add(quoted[node.id])
                continue
            if node.id in FORBIDDEN or _is_dunder(node.id):
                raise _refuse(expr, f"forbidden name {node.id!r}")
            if id(node) in called or id(node) in attribute_bases or node.id in CONSTANTS:
                continue
            variables.add(node.id)
    return frozenset(variables)


def factor_variables(factors) -> set[str]:
    """Check formulaic's parsed factors and return the variables they name.

    Looked-up factors (``x``, ```a b```) are data columns as they are; Python-evaluated ones
    are checked by :func:`expression_variables`; literals (``1``) name nothing.
    """
    variables: set[str] = set()
    for factor in factors:
        method = getattr(factor.eval_method, "value", factor.eval_method)
        if method == "lookup":
            variables.add(str(factor.expr))
        elif method == "python":
            variables |= expression_variables(str(factor.expr))
        elif method != "literal":
            raise FormulaError(f"Formula term {factor.expr!r} cannot be evaluated safely.")
    return variables


def check_expression(expr: str) -> None:
    """Raise :class:`~mixedfx.errors.FormulaError` unless ``expr`` may be evaluated (module docstring)."""
    expression_variables(expr)


def quote_name(name: str) -> str:
    """A column name as a formula term that is looked up, never evaluated: ``` `name` ```.

    Names containing a backtick cannot be quoted and are refused.
    """
    name = str(name)
    if "`" in name:
        raise FormulaError(f"Column name {name!r} contains a backtick and cannot be used in a formula; rename it.")
    return f"`{name}`"


class _Namespace:
    """An object whose attributes are exactly the given mapping (a restricted ``np``)."""

    def __init__(self, mapping: dict):
        self.__dict__.update(mapping)


@lru_cache(maxsize=1)
def numpy_namespace() -> _Namespace:
    """``np`` as a formula sees it: numpy's elementwise functions and constants, nothing else."""
    return _Namespace({name: getattr(np, name) for name in dir(np) if _numpy_attribute_allowed(name)})


def _elementwise(name: str):
    return getattr(np, {"abs": "absolute"}.get(name, name))


def evaluation_context(extra: dict | None = None) -> dict:
    """The namespace formulaic evaluates formulas in (besides the data and its own transforms).

    Elementwise numpy functions under their bare names (``log``, ``sqrt``, ...), ``np`` and
    ``numpy`` restricted to ufuncs and constants, ``pi`` and ``e``; ``extra`` adds mixedfx's
    R-style transforms.  Passing this explicitly keeps formulaic from capturing the calling
    frame's globals.
    """
    restricted = numpy_namespace()
    context: dict = {"np": restricted, "numpy": restricted, "pi": np.pi, "e": np.e, "inf": np.inf, "nan": np.nan}
    for name in ("log1p", "expm1", "sqrt", "abs", "sign", "sin", "cos", "tan", "arcsin", "arccos", "arctan"):
        context[name] = _elementwise(name)
    for name in ("sinh", "cosh", "tanh", "floor", "ceil", "power", "minimum", "maximum"):
        context[name] = _elementwise(name)
    context["round"] = np.round
    if extra:
        context.update(extra)
    return context
