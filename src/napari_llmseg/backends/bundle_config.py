"""Reading a MONAI bundle's config as data: references and literal expressions, nothing else.

MONAI's ``ConfigParser`` treats a config as a program: ``@id`` refers to another entry
(``@displayable_configs#sw_overlap``), ``$...`` is Python run with ``eval`` and ``%file#id``
pulls in another file. Real bundles use them for plain values too. wholeBody_ct_segmentation
sets its spacing with ``"pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else
[3.0, 3.0, 3.0]"`` and its weights file with ``"$@bundle_root + '/models/' + @modelname"``.

:class:`BundleConfig` reads such values without running anything from the config:

* ``@id`` is looked up in the same file (``#`` separates keys and list indexes) and read the
  same way, recursively (a cycle is refused);
* ``$expr`` is parsed with :func:`ast.parse` and interpreted over a closed set of constructs:
  literals (numbers, strings, booleans, None, lists, tuples), references, ``x if c else y``,
  ``and``/``or``/``not``, comparisons, unary ``-``/``+``, ``+ - * /`` on numbers and ``+`` on
  strings. Anything else (a name, a call, an attribute, an import, an index, a comprehension,
  a lambda) is refused with the expression in the message: nothing is imported, called or
  looked up outside the config, so the config cannot run code;
* ``%`` macros (other files) are refused.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

#: A reference inside an expression: ``@`` and the id (word characters and ``#``).
_REFERENCE = re.compile(r"@([\w#]+)")
_PLACEHOLDER = "__bundle_ref_{}__"
#: Longest expression read (real bundles' are under 100 characters).
MAX_EXPRESSION = 400
#: Longest string an expression may build (``+`` on strings).
MAX_STRING = 4096

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv}  # fmt: skip
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}  # fmt: skip


_REFUSED = {ast.Call: "it calls something", ast.Attribute: "it reads an attribute",
            ast.Subscript: "it indexes a value", ast.Lambda: "it defines a function",
            ast.ListComp: "it loops", ast.GeneratorExp: "it loops", ast.DictComp: "it loops",
            ast.SetComp: "it loops", ast.NamedExpr: "it assigns"}  # fmt: skip


class ConfigValueError(ValueError):
    """A config value that cannot be read as data (names the value and why)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class BundleConfig:
    """One parsed JSON config file (``inference.json``) whose values are read as data.

    Parameters
    ----------
    data : dict
        The file's JSON object.
    name : str
        The file's name, for messages.
    """

    def __init__(self, data: dict, name: str = "inference.json") -> None:
        self.data = data
        self.name = name

    def lookup(self, ref: str, _seen: tuple[str, ...] = ()) -> Any:
        """The value of the entry ``ref`` (``"a#b#0"``), with its own references read."""
        if ref in _seen:
            chain = " -> ".join("@" + r for r in (*_seen, ref))
            raise ConfigValueError(f"{self.name}: the references {chain} form a cycle")
        node: Any = self.data
        for key in ref.split("#"):
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise ConfigValueError(f"{self.name}: '@{ref}' refers to no entry")
        return self.read(node, "@" + ref, (*_seen, ref))

    def read(self, value: Any, where: str, _seen: tuple[str, ...] = ()) -> Any:
        """``value`` with references and expressions read; lists and dicts item by item.

        Raises
        ------
        ConfigValueError
            For a construct outside the module docstring's set, naming ``where`` and the text.
        """
        if isinstance(value, str):
            if value.startswith("@"):
                return self.lookup(value[1:], _seen)
            if value.startswith("$"):
                return self._expression(value, where, _seen)
            if value.startswith("%"):
                raise ConfigValueError(
                    f"{self.name}: {where} is {value!r}, a macro that reads another file; "
                    "it is not followed"
                )
            return value
        if isinstance(value, list):
            return [self.read(v, f"{where}[{i}]", _seen) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.read(v, f"{where}.{k}", _seen) for k, v in value.items()}
        return value

    # --- expressions ---------------------------------------------------------------------
    def _expression(self, text: str, where: str, seen: tuple[str, ...]) -> Any:
        body = text[1:].strip()
        if len(body) > MAX_EXPRESSION:
            raise ConfigValueError(
                f"{self.name}: {where} is an expression of {len(body)} characters; at most "
                f"{MAX_EXPRESSION} are read"
            )
        refs: list[str] = []

        def placeholder(match: re.Match) -> str:
            refs.append(match.group(1))
            return _PLACEHOLDER.format(len(refs) - 1)

        try:
            tree = ast.parse(_REFERENCE.sub(placeholder, body), mode="eval")
        except SyntaxError:
            raise ConfigValueError(
                f"{self.name}: {where} is {text!r}, which is not an expression that can be "
                "read as data"
            ) from None
        values = {_PLACEHOLDER.format(i): r for i, r in enumerate(refs)}
        return _Interpreter(self, text, where, values, seen).visit(tree.body)


class _Interpreter:
    """Evaluates the literal subset of Python described in the module docstring."""

    def __init__(
        self, config: BundleConfig, text: str, where: str, refs: dict, seen: tuple[str, ...]
    ) -> None:
        self.config, self.text, self.where, self.refs, self.seen = config, text, where, refs, seen

    def refuse(self, node: ast.AST, why: str) -> ConfigValueError:
        part = ast.unparse(node) if isinstance(node, ast.AST) else str(node)
        return ConfigValueError(
            f"{self.config.name}: {self.where} is {self.text!r}; {why} ({part!r}), and "
            "expressions are read only as literals, references and arithmetic: nothing "
            "from a config is run"
        )

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is Ellipsis or isinstance(node.value, (bytes, complex)):
                raise self.refuse(node, "a constant of this kind is not read")
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.visit(e) for e in node.elts]
        if isinstance(node, ast.Name):
            if node.id in self.refs:
                return self.config.lookup(self.refs[node.id], self.seen)
            raise self.refuse(node, "it names something outside the config")
        if isinstance(node, ast.IfExp):
            return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                result = True
                for v in node.values:
                    result = self.visit(v)
                    if not result:
                        return result
                return result
            for v in node.values:
                result = self.visit(v)
                if result:
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            if isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(operand):
                return -operand if isinstance(node.op, ast.USub) else operand
            raise self.refuse(node, "only numbers are negated")
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.visit(comparator)
                fn = _COMPARE.get(type(op))
                if fn is None or not all(_is_scalar(v) for v in (left, right)):
                    raise self.refuse(node, "only numbers, strings and booleans are compared")
                if not fn(left, right):
                    return False
                left = right
            return True
        raise self.refuse(node, _REFUSED.get(type(node), f"{type(node).__name__} is not read"))

    def _binary(self, node: ast.BinOp) -> Any:
        fn = _ARITHMETIC.get(type(node.op))
        left, right = self.visit(node.left), self.visit(node.right)
        if fn is None:
            raise self.refuse(node, "only + - * / are read")
        if _is_number(left) and _is_number(right):
            if isinstance(node.op, ast.Div) and right == 0:
                raise self.refuse(node, "it divides by zero")
            return fn(left, right)
        if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_STRING:
                raise self.refuse(node, f"it builds a string over {MAX_STRING} characters")
            return left + right
        raise self.refuse(node, "arithmetic is read on numbers (and + on strings) only")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
