"""Rules the whole source keeps (issue 11), checked on its syntax trees: every
log line is a structured event, and one module computes backoff waits."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pcapd", "triggers", "uploaders", "agents")
WAIT_WORDS = ("backoff", "delay", "wait", "sleep", "interval", "timeout", "retry")
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            yield name, ast.parse(path.read_text(), filename=name)


def _is_logger(node: ast.expr) -> bool:
    """`log`, `logger`, `self.log`, `logging` itself, or `logging.getLogger(...)`."""
    if isinstance(node, ast.Name):
        return node.id in {"log", "logger", "_log", "LOG", "logging"}
    if isinstance(node, ast.Attribute):
        return node.attr in {"log", "logger", "_log"}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
        called = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        return called == "getLogger"
    return False


def test_every_log_call_is_an_event() -> None:
    """`log.info("x=%s", ...)` renders without `event=` in key=value mode and as
    a bare `msg` in JSON; `event(log, "name", ...)` is the one way to log."""
    found = [
        f"{name}:{node.lineno}: {ast.unparse(node)[:80]}"
        for name, tree in modules()
        if name != "pcapd/core/logs.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LEVELS
        and _is_logger(node.func.value)
    ]
    assert not found, "log through pcapd.core.logs.event:\n" + "\n".join(found)


def _grows(node: ast.AST) -> str | None:
    """Why `node` computes an exponential wait of its own, or None."""
    # `initial * 2 ** failures`: a power with a varying exponent.
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and not isinstance(node.right, ast.Constant)
    ):
        return "a power with a varying exponent"
    # `backoff = min(backoff * 2, MAX)` / `delay *= 2`: a wait multiplied into
    # itself (a hash's `h = h * 31 + c` is no wait, hence the names).
    if (
        isinstance(node, ast.AugAssign)
        and isinstance(node.op, ast.Mult | ast.LShift)
        and _is_wait(ast.unparse(node.target))
    ):
        return "a wait multiplied in place"
    if isinstance(node, ast.Assign):
        targets = {ast.unparse(t) for t in node.targets if _is_wait(ast.unparse(t))}
        for sub in ast.walk(node.value):
            if (
                isinstance(sub, ast.BinOp)
                and isinstance(sub.op, ast.Mult | ast.LShift)
                and {ast.unparse(sub.left), ast.unparse(sub.right)} & targets
            ):
                return "a wait multiplied into itself"
    return None


def _is_wait(name: str) -> bool:
    return any(word in name.lower() for word in WAIT_WORDS)


def test_only_the_backoff_module_grows_waits() -> None:
    """Retry and reconnect loops wait as pcapd.core.backoff says, so the
    schedule (cap, jitter, figures) is written once."""
    found = [
        f"{name}:{getattr(node, 'lineno', '?')}: {why}: {ast.unparse(node)[:80]}"
        for name, tree in modules()
        if name != "pcapd/core/backoff.py"
        for node in ast.walk(tree)
        if (why := _grows(node)) is not None
    ]
    assert not found, "use pcapd.core.backoff.Backoff:\n" + "\n".join(found)


def test_the_checks_see_what_they_forbid() -> None:
    """The patterns these checks exist for are caught, so a pass means something."""
    logged = ast.parse('log.info("event=x y=%s", y)\nlogging.getLogger("p").warning("z")')
    assert all(
        isinstance(n.func, ast.Attribute) and _is_logger(n.func.value)
        for n in ast.walk(logged)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in LEVELS
    )
    for text in (
        "backoff = min(backoff * 2, BACKOFF_MAX)",
        "delay = min(self._initial * 2 ** (failures - 1), self._max)",
        "wait *= 2",
    ):
        assert any(_grows(n) for n in ast.walk(ast.parse(text))), text
    for text in ("MAX_TTL = 2**31 - 1", "size = count * 2", "h = h * 31 + c", "n *= 2"):
        assert not any(_grows(n) for n in ast.walk(ast.parse(text))), text
