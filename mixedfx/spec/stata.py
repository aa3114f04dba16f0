"""Stata ``mixed`` syntax: ``mixedfx.mixed("y x1 x2 || id: x1, cov(uns) || ..., reml stddev", data)``.

Grammar (a subset of Stata's ``mixed``, enough for the lecture's commands as written):

    [mixed] depvar [indepvars] [, noconstant] || levelvar: [varlist] [, re_options] [|| ...] [, options]

- fixed part: variables, ``i.var`` (factor), ``c.var`` (continuous), ``a#b`` (interaction),
  ``a##b`` (full factorial);
- each ``||`` adds a level nested in the previous one (the first is the highest level);
- ``re_options``: ``noconstant``, ``covariance(identity|independent|exchangeable|unstructured)``
  (default independent, as Stata);
- ``options``: ``mle``/``ml``, ``reml``, ``variance``, ``stddev``, ``level(#)``,
  ``residuals(TYPE[, t(VAR) by(VAR)])`` (with ``|| id:, noconstant`` a marginal model);
- sampling weights: ``[pw=VAR]`` after the fixed part (observations), ``pweight(VAR)`` at a
  level, ``pwscale(size|effective|gk)``: weights are variable names, never expressions.

Stata estimates by ML unless ``reml`` is given; so does this front end.
"""

from __future__ import annotations

import ast
import itertools
import re

import numpy as np

from ..errors import FormulaError, OptionError, suggest
from .options import confidence_level
from .structures import canonical_structure

RE_OPTIONS = {"noconstant", "nocons", "covariance", "cov", "pweight"}
GLOBAL_OPTIONS = {"mle", "ml", "reml", "variance", "var", "stddev", "level", "residuals", "vce", "dfmethod", "pwscale"}
#: Options of the generalized commands (melogit, meprobit, mecloglog, mepoisson).
GLMM_OPTIONS = {"or", "irr", "intpoints", "laplace", "exposure", "offset", "binomial"}
#: Stata's generalized mixed commands: family and link.
GLMM_COMMANDS = {
    "melogit": ("binomial", "logit"),
    "meprobit": ("binomial", "probit"),
    "mecloglog": ("binomial", "cloglog"),
    "mepoisson": ("poisson", "log"),
}


OPTION = r"([A-Za-z_]+)\s*(?:\(((?:[^()]|\([^()]*\))*)\))?"  # name or name(args), args may hold t(x)


def _split_options(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``"x1 x2, cov(uns) mle"`` -> (``"x1 x2"``, [("cov", "uns"), ("mle", None)])."""
    body, _, opts = text.partition(",")
    options = []
    for match in re.finditer(OPTION, opts):
        options.append((match.group(1).lower(), match.group(2)))
    leftover = re.sub(OPTION, "", opts).strip()
    if leftover:
        raise FormulaError(f"Cannot read the options {opts.strip()!r} (unexpected {leftover!r}).")
    return body.strip(), options


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTOR = re.compile(rf"^(?:i|ib(\d+)|ib\((\d+|first|last)\))\.({_NAME})$")


def _base_literal(value: object) -> str:
    return repr(value.item() if hasattr(value, "item") else value)


def _translate_term(token: str, levels_of=None) -> str:
    """One Stata varlist token in formulaic syntax: ``i.sex`` -> ``C(sex)``, ``ib3.x`` ->
    ``C(x, contr.treatment(3))``, ``a##b`` -> ``a*b``, ``a#b`` -> ``a:b``, ``c.x`` -> ``x``.

    ``ib(last).x`` needs the levels of x: ``levels_of(x)`` returns them (sorted).
    """
    if "##" in token:
        # the full factorial: every interaction of the components (c.x##c.x is x + x^2)
        parts = token.split("##")
        terms = ["#".join(c) for r in range(1, len(parts) + 1) for c in itertools.combinations(parts, r)]
        return " + ".join(dict.fromkeys(_translate_term(t, levels_of) for t in terms))
    if "#" in token:
        return _interaction(token.split("#"), levels_of)
    factor = _FACTOR.match(token)
    if factor:
        base, named, var = factor.groups()
        if base is None and named in (None, "first"):
            return f"C({var})"
        if named == "last":
            if levels_of is None:
                raise OptionError(f"ib(last).{var} needs the data to know the last level of {var!r}.")
            values = list(levels_of(var))
            return f"C({var}, contr.treatment({_base_literal(values[-1])}))"
        return f"C({var}, contr.treatment({int(base or named)}))"
    if token.startswith("c."):
        token = token[2:]
    if not re.fullmatch(_NAME, token):
        raise FormulaError(f"{token!r} is not a Stata variable name (use i.var, ib#.var, c.var, a#b, a##b).")
    return token


def _interaction(parts: list[str], levels_of=None) -> str:
    """``a#b#...``: a continuous variable met k times is its k-th power (Stata's ``c.x#c.x``
    is ``x^2``; formulaic would collapse ``x:x`` to ``x``), a factor met twice is itself."""
    translated = [_translate_term(t, levels_of) for t in parts]
    counts: dict[str, int] = {}
    for term in translated:
        counts[term] = counts.get(term, 0) + 1
    out = []
    for term, count in counts.items():
        continuous = re.fullmatch(_NAME, term) is not None
        out.append(f"I({term}^{count})" if continuous and count > 1 else term)
    return ":".join(out)


_POWER = re.compile(rf"^I\(({_NAME})\^(\d+)\)$")
_TREATMENT = re.compile(rf"^C\(({_NAME})(?:, contr\.treatment\([^()]*\))?\)(.+)$")


def stata_coefficient_name(name: str) -> str:
    """The coefficient as Stata names it, from the name mixedfx gives a term of a translated command:
    ``C(schgend)2`` -> ``2.schgend``, ``lrt:C(sex)1`` -> ``c.lrt#1.sex``, ``(Intercept)`` -> ``_cons``."""
    if name == "(Intercept)":
        return "_cons"
    parts = name.split(":")
    out = []
    for part in parts:
        match, power = _TREATMENT.match(part), _POWER.match(part)
        if match:
            out.append(f"{match.group(2)}.{match.group(1)}")
        elif power:
            out.append("#".join([f"c.{power.group(1)}"] * int(power.group(2))))
        else:
            out.append(f"c.{part}" if len(parts) > 1 else part)
    return "#".join(out)


def _qualifiers(body: str) -> tuple[str, str | None, str | None]:
    """``"y x if age > 2 in 1/50"`` -> (``"y x"``, ``"age > 2"``, ``"1/50"``)."""
    rows = None
    match = re.search(r"\s+in\s+(\S+)\s*$", body)
    if match:
        body, rows = body[: match.start()], match.group(1)
    condition = None
    match = re.search(r"\s+if\s+", body)
    if match:
        body, condition = body[: match.start()], body[match.end() :].strip()
        if not condition:
            raise FormulaError("'if' needs a condition, e.g. 'if sex == 1'.")
    return body, condition, rows


def parse_range(text: str, n: int) -> slice:
    """Stata's ``in`` range over n rows: ``1/100``, ``f/50``, ``-10/l``, ``5`` (1-based, inclusive)."""

    def position(token: str) -> int:
        token = token.strip().lower()
        if token in ("f", "first"):
            return 1
        if token in ("l", "last"):
            return n
        try:
            k = int(token)
        except ValueError:
            message = f"Cannot read the range 'in {text}': use in #/#, f and l for the first and last row."
            raise OptionError(message) from None
        return n + 1 + k if k < 0 else k

    first, _, last = text.partition("/")
    start, stop = position(first), position(last or first)
    if not 1 <= start <= stop <= n:
        raise OptionError(f"The range 'in {text}' is outside the data's {n} rows.")
    return slice(start - 1, stop)


_WEIGHT = re.compile(r"\[\s*([A-Za-z]+)\s*=\s*([^\]]*)\]")


def _weight_clause(body: str) -> tuple[str, str | None]:
    """``"y x [pw=w1]"`` -> (``"y x"``, ``"w1"``); refuses other weight types and expressions."""
    match = _WEIGHT.search(body)
    if match is None:
        if "[" in body or "]" in body:
            raise FormulaError(f"Cannot read the weight clause in {body!r}: write it as [pw=varname].")
        return body, None
    kind, variable = match.group(1).lower(), match.group(2).strip()
    if kind not in ("pw", "pweight"):
        raise OptionError(f"[{kind}=...] weights are not supported by mixed here; use [pw=varname] (sampling weights).")
    _check_weight_name(variable, "[pw=]")
    rest = (body[: match.start()] + " " + body[match.end() :]).strip()
    if "[" in rest or "]" in rest:
        raise FormulaError("Give one weight clause [pw=varname] in the fixed part.")
    return rest, variable


def _check_weight_name(variable: str | None, where: str) -> str:
    """A weight must be a variable name (Stata allows expressions; mixedfx evaluates none)."""
    if not variable or not re.fullmatch(_NAME, variable.strip()):
        raise OptionError(f"{where} needs a variable name, not {variable!r}: compute the weight as a column first.")
    return variable.strip()


def _level_options(options: list[tuple[str, str | None]], level: str) -> tuple[bool, str]:
    """(has constant, covariance) of one random-effects level; refuses options it does not know."""
    constant, covariance = True, "independent"
    for name, value in options:
        if name == "pweight":
            continue  # read by parse_mixed
        if name in ("noconstant", "nocons"):
            constant = False
        elif name in ("covariance", "cov"):
            if not value:
                raise OptionError(f"covariance() needs a structure at level {level!r}.")
            covariance = canonical_structure(value)
        else:
            raise OptionError(
                f"Unknown option {name!r} at level {level!r}.{suggest(name, sorted(RE_OPTIONS | GLOBAL_OPTIONS))}"
            )
    return constant, covariance


def parse_mixed(command: str, levels_of=None) -> dict:
    """Parse a ``mixed`` command into an lme4 formula, covariance structures and options.

    ``levels_of(var)`` (the sorted levels of a column) resolves ``ib(last).var``.  The
    result also has ``if`` (a condition, translated by :func:`parse_condition`), ``in``
    (Stata's row range), ``vce``, ``dfmethod``, ``pweights`` (``{"": observation weight, group: weight}``)
    and ``pwscale``.
    """
    text = " ".join(command.split())
    command_name = text.split(" ", 1)[0]
    if command_name == "mixed" or command_name in GLMM_COMMANDS:
        text = text[len(command_name) :].strip()
    family, link = GLMM_COMMANDS.get(command_name, (None, None))
    allowed = GLOBAL_OPTIONS | (GLMM_OPTIONS if family else set())
    segments = [seg.strip() for seg in text.split("||")]
    fixed_body, fixed_opts = _split_options(segments[0])
    fixed_body, observation_weight = _weight_clause(fixed_body)
    fixed_body, condition, rows = _qualifiers(fixed_body)
    tokens = fixed_body.split()
    if not tokens:
        raise FormulaError("The mixed command needs a dependent variable: mixed depvar [indepvars] || level:")
    if len(segments) == 1:
        raise FormulaError("No random-effects level: add '|| levelvar:' (e.g. || id:).")
    response, regressors = tokens[0], [_translate_term(t, levels_of) for t in tokens[1:]]
    fixed_constant = True
    global_opts: list[tuple[str, str | None]] = []
    for name, value in fixed_opts:
        if name in ("noconstant", "nocons"):
            fixed_constant = False
        elif name in allowed:
            global_opts.append((name, value))
        else:
            raise OptionError(f"Unknown option {name!r} in the fixed part.{suggest(name, sorted(allowed))}")
    random_terms, covariance, no_effects = [], {}, None
    pweights = {} if observation_weight is None else {"": observation_weight}
    outer: list[str] = []
    for segment in segments[1:]:
        if ":" not in segment:
            raise FormulaError(f"Random-effects level {segment!r} needs 'levelvar:' (e.g. '|| id:').")
        level, _, rest = segment.partition(":")
        level = level.strip()
        if level == "_all":
            raise OptionError(
                "'_all: R.var' crossed effects are not supported here; use the lme4 formula (1|a) + (1|b)."
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", level):
            raise FormulaError(f"{level!r} is not a level variable name.")
        body, options = _split_options(rest)
        level_opts = [(n, v) for n, v in options if n in RE_OPTIONS]
        global_opts += [(n, v) for n, v in options if n not in RE_OPTIONS]
        constant, structure = _level_options(level_opts, level)
        level_weight = [v for n, v in level_opts if n == "pweight"]
        variables = [_translate_term(t, levels_of) for t in body.split()]
        if not variables and not constant:
            if len(segments) == 2:  # Stata: '|| id:, noconstant residuals(...)' is a marginal model
                no_effects = level
                continue
            raise FormulaError(f"Level {level!r} has no random effects (noconstant and no variables).")
        expr = " + ".join((["1"] if constant else ["0"]) + variables)
        group = ":".join([level] + outer[::-1]) if outer else level
        outer.append(level)
        random_terms.append(f"({expr} | {group})")
        if level_weight:
            pweights[group] = _check_weight_name(level_weight[-1], f"pweight() at level {level!r}")
        covariance[group] = structure if len(variables) + constant > 1 else "identity"
    method, scale, conf, residuals, vce, dfmethod, pwscale = "ml", "var", 95.0, None, "model", None, None
    glmm = {"eform": False, "nagq": None, "offsets": [], "trials": None}
    for name, value in global_opts:
        if family and name in GLMM_OPTIONS:
            _glmm_option(glmm, name, value, family)
        elif name in ("mle", "ml"):
            method = "ml"
        elif name == "reml":
            method = "reml"
        elif name in ("variance", "var"):
            scale = "var"
        elif name == "stddev":
            scale = "sd"
        elif name == "residuals":
            residuals = value
        elif name == "vce":
            if (value or "").strip().lower() not in ("robust", "oim"):
                raise OptionError(f"vce({value}) is not supported: use vce(robust) or vce(oim).")
            vce = "robust" if value.strip().lower() == "robust" else "model"
        elif name == "dfmethod":
            key = (value or "").strip().lower()
            if key not in ("kroger", "satterthwaite"):
                raise OptionError(
                    f"dfmethod({value}) is not supported: use dfmethod(kroger) or dfmethod(satterthwaite)."
                )
            dfmethod = key
        elif name == "pwscale":
            pwscale = (value or "").strip().lower()
            if pwscale not in ("size", "effective", "gk"):
                raise OptionError(f"pwscale({value}) is not supported: use pwscale(size), (effective) or (gk).")
        elif name == "level":
            confidence_level(value)  # refused outside Stata's 10-99.99
            conf = float(value)
        else:
            raise OptionError(f"Unknown option {name!r}.{suggest(name, sorted(allowed | RE_OPTIONS))}")
    if no_effects is not None and residuals is None:
        raise FormulaError(f"Level {no_effects!r} has no random effects (noconstant and no variables).")
    fixed = " + ".join((["1"] if fixed_constant else ["0"]) + regressors + glmm["offsets"])
    if glmm["trials"] is not None:
        response = f"cbind({response}, {glmm['trials']} - {response})"
    formula = f"{response} ~ {fixed}" + (f" + {' + '.join(random_terms)}" if random_terms else "")
    if family and no_effects is not None:
        raise FormulaError(f"{command_name} needs random effects at level {no_effects!r}.")
    return {
        "family": family,
        "link": link,
        "eform": glmm["eform"],
        "nagq": glmm["nagq"],
        "formula": formula,
        "covariance": covariance,
        "method": method,
        "scale": scale,
        "level": conf,
        "residuals": residuals,
        "group": no_effects,
        "if": None if condition is None else parse_condition(condition),
        "in": rows,
        "vce": vce,
        "dfmethod": dfmethod,
        "pweights": pweights or None,
        "pwscale": pwscale,
    }


def _glmm_option(glmm: dict, name: str, value: str | None, family: str) -> None:
    """One option of melogit/mepoisson: or/irr, intpoints(#), laplace, exposure(), offset(), binomial()."""
    if name in ("or", "irr"):
        if (name == "or") != (family == "binomial"):
            raise OptionError(f"Option {name!r} belongs to {'melogit' if name == 'or' else 'mepoisson'}.")
        glmm["eform"] = True
    elif name == "laplace":
        glmm["nagq"] = 1
    elif name == "intpoints":
        text = (value or "").strip()
        if not text.isdigit() or not 1 <= int(text) <= 25:
            raise OptionError(f"intpoints({value}) needs a whole number of points from 1 to 25.")
        glmm["nagq"] = int(text)
    else:
        variable = (value or "").strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
            raise OptionError(f"{name}() needs one variable name, not {value!r}.")
        if name == "exposure":
            if family != "poisson":
                raise OptionError("exposure() belongs to mepoisson; use offset() or binomial() for melogit.")
            glmm["offsets"].append(f"offset(log({variable}))")
        elif name == "offset":
            glmm["offsets"].append(f"offset({variable})")
        else:
            if family != "binomial":
                raise OptionError("binomial() (the number of trials) belongs to melogit, meprobit and mecloglog.")
            glmm["trials"] = variable


# ---------------------------------------------------------------------------- if conditions
#: Stata functions an ``if`` condition may call.
CONDITION_FUNCTIONS = frozenset({"missing", "inlist", "inrange", "abs", "round", "floor", "ceil", "log", "exp", "sqrt"})

_CONDITION_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"[^"]*")|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<missing>\.)(?![\w.])|"""
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>==|!=|~=|<=|>=|[<>&|!~()+\-*/^,]))""",
    re.VERBOSE,
)


def parse_condition(text: str):
    """A Stata ``if`` condition as a checked Python syntax tree, evaluated by
    :func:`mixedfx.data.conditions.evaluate_condition`.

    ``&``, ``|`` and ``!``/``~`` become ``and``, ``or`` and ``not`` (Stata's precedence:
    comparisons bind tighter), ``^`` a power, ``.`` the missing value; names are columns;
    only :data:`CONDITION_FUNCTIONS` may be called.  Anything else is refused.
    """
    pieces, pos = [], 0
    while pos < len(text):
        match = _CONDITION_TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip() == "":
                break
            raise FormulaError(f"Cannot read the condition 'if {text}' at {text[pos:]!r}.")
        kind = match.lastgroup
        token = match.group(kind)
        pos = match.end()
        if kind == "missing":
            pieces.append("_stata_missing_")
        elif kind == "op":
            pieces.append(
                {"&": " and ", "|": " or ", "!": " not ", "~": " not ", "~=": "!=", "^": "**"}.get(token, token)
            )
        else:
            pieces.append(token)
    source = " ".join(pieces)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise FormulaError(f"Cannot read the condition 'if {text}'.") from None
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare,
               ast.cmpop, ast.BinOp, ast.operator, ast.Name, ast.Load, ast.Constant, ast.Call)  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise FormulaError(f"The condition 'if {text}' uses {type(node).__name__}, which is not allowed.")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in CONDITION_FUNCTIONS or node.keywords:
                raise FormulaError(
                    f"The condition 'if {text}' calls something other than {sorted(CONDITION_FUNCTIONS)}."
                )
        if isinstance(node, ast.Name) and (node.id.startswith("__") or node.id.endswith("__")):
            raise FormulaError(f"The condition 'if {text}' names {node.id!r}, which is not allowed.")
    return tree


# ---------------------------------------------------------------------------- postestimation
#: Stata's postestimation commands for margins and comparisons that the front end reads.
POSTESTIMATION = ("margins", "contrast", "pwcompare")
#: Stata's mcompare() methods and their names here.
MCOMPARE = {"noadjust": "none", "bonferroni": "bonferroni", "holm": "holm", "sidak": "sidak", "none": "none"}
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_LEVEL = r"[A-Za-z0-9_.+-]+"


def _balanced_options(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``"x, at(a=(0(1)3)) pwcompare"`` -> (``"x"``, [("at", "a=(0(1)3)"), ("pwcompare", None)]), any nesting."""
    body, _, opts = text.partition(",")
    options, pos = [], 0
    while pos < len(opts):
        if opts[pos].isspace():
            pos += 1
            continue
        match = re.match(r"[A-Za-z_]+", opts[pos:])
        if match is None:
            raise OptionError(f"Cannot read the options {opts.strip()!r} (unexpected {opts[pos:].strip()!r}).")
        name, pos = match.group(0).lower(), pos + match.end()
        value = None
        if pos < len(opts) and opts[pos] == "(":
            depth, start = 0, pos
            while pos < len(opts):
                depth += {"(": 1, ")": -1}.get(opts[pos], 0)
                pos += 1
                if depth == 0:
                    break
            if depth != 0:
                raise OptionError(f"Unbalanced parentheses in the option {name}{opts[start:]!r}.")
            value = opts[start + 1 : pos - 1]
        options.append((name, value))
    return body.strip(), options


def parse_numlist(text: str) -> list:
    """Stata's numlist: ``-20 0 20``, ``0(0.25)2.5`` (from, step, to), ``1/5``; level names pass through."""
    values: list = []
    for token in text.split():
        ranged = re.fullmatch(rf"({_NUMBER})\(({_NUMBER})\)({_NUMBER})", token)
        slash = re.fullmatch(r"(-?\d+)/(-?\d+)", token)
        if ranged:
            start, step, stop = (float(g) for g in ranged.groups())
            if step == 0 or (stop - start) / step < 0:
                raise OptionError(f"The numlist {token!r} does not reach {stop:g} from {start:g} by {step:g}.")
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values += [round(start + k * step, 12) for k in range(count)]
        elif slash:
            a, b = int(slash.group(1)), int(slash.group(2))
            values += list(range(a, b + 1) if a <= b else range(a, b - 1, -1))
        elif re.fullmatch(_NUMBER, token):
            values.append(float(token))
        elif re.fullmatch(_LEVEL, token):
            values.append(token)  # a factor's level; checked against the data's levels later
        else:
            raise OptionError(f"Cannot read {token!r} in the numlist {text!r}.")
    if not values:
        raise OptionError("An empty numlist: give values, e.g. at(x=(0 1 2)) or at(x=(0(0.5)2)).")
    return values


def _parse_at(text: str) -> dict:
    """``lrt=(-20 0 20) girl=1`` -> ``{"lrt": [-20.0, 0.0, 20.0], "girl": [1.0]}``."""
    out = {}
    pattern = re.compile(rf"\s*({_NAME})\s*=\s*(\(((?:[^()]|\([^()]*\))*)\)|{_LEVEL})")
    pos = 0
    while pos < len(text.strip()):
        match = pattern.match(text, pos)
        if match is None:
            raise OptionError(f"Cannot read at({text}) at {text[pos:].strip()!r}: write at(var=(values) ...).")
        out[match.group(1)] = parse_numlist(match.group(3) if match.group(3) is not None else match.group(2))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _varlist(text: str | None, option: str) -> list[str]:
    names = (text or "").split()
    for name in names:
        if not re.fullmatch(_NAME, name):
            raise OptionError(f"{option}() needs variable names, not {name!r}.")
    if not names:
        raise OptionError(f"{option}() needs at least one variable.")
    return names


def parse_postestimation(command: str) -> dict:
    """Parse ``margins``, ``contrast`` or ``pwcompare`` as Stata writes them after ``mixed``.

    ``margins [r.|pw.]factor ... [, at(var=(numlist) ...) over(varlist) dydx(varlist) predict(xb|mu)
    level(#) pwcompare mcompare(bonferroni|holm|sidak|noadjust)]``, ``contrast r.factor`` and
    ``pwcompare factor [, mcompare()]``.  The result names the ``command``, the factors
    (``specs``), ``operator`` (None, ``"r"`` or ``"pw"``), ``at``, ``over``, ``dydx``, ``predict``,
    ``level`` and ``adjust``.
    """
    text = " ".join(str(command).split())
    match = re.match(r"([A-Za-z]+)(.*)$", text)
    name, rest = (match.group(1), match.group(2)) if match else ("", text)
    if name not in POSTESTIMATION:
        raise OptionError(f"Unknown postestimation command {name or text!r}: use {', '.join(POSTESTIMATION)}.")
    body, options = _balanced_options(rest)
    out = {"command": name, "specs": [], "operator": None, "at": {}, "over": [], "dydx": [], "predict": None}
    out.update(level=95.0, adjust="none")
    for token in body.split():
        operator, dot, variable = token.rpartition(".")
        operator = operator.lower() if dot else ""
        if operator not in ("", "i", "r", "pw") or not re.fullmatch(_NAME, variable):
            raise OptionError(f"Cannot read {token!r}: give factor names, optionally as r.name or pw.name.")
        if operator in ("r", "pw"):
            if out["operator"] not in (None, operator):
                raise OptionError("Give one contrast operator (r. or pw.) in a command.")
            out["operator"] = operator
        out["specs"].append(variable)
    for option, value in options:
        if option == "at":
            out["at"].update(_parse_at(value or ""))
        elif option == "over":
            out["over"] = _varlist(value, "over")
        elif option == "dydx":
            out["dydx"] = _varlist(value, "dydx")
        elif option == "predict":
            out["predict"] = (value or "").strip().lower() or None
        elif option == "level":
            confidence_level(value)
            out["level"] = float(value)
        elif option == "pwcompare":
            out["operator"] = "pw"
        elif option == "mcompare":
            key = (value or "").strip().lower()
            if key not in MCOMPARE:
                raise OptionError(f"mcompare({value}) is not supported: use bonferroni, holm, sidak or noadjust.")
            out["adjust"] = MCOMPARE[key]
        else:
            known = ["at", "over", "dydx", "predict", "level", "pwcompare", "mcompare"]
            raise OptionError(f"Unknown {name} option {option!r}.{suggest(option, known)}")
    if name in ("contrast", "pwcompare"):
        if not out["specs"] or out["at"] or out["over"] or out["dydx"]:
            raise OptionError(f"{name} needs a factor and takes no at(), over() or dydx() here.")
        out["operator"] = "pw" if name == "pwcompare" else (out["operator"] or "r")
    return out
