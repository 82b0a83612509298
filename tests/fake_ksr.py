"""A fake ``KSR`` module for unit tests of the KEMI handler (c4kemi/call/kemi.py).

Every ``KSR.x.y(...)`` call is recorded as ``("x.y", args)`` in ``calls``
and returns what ``returns["x.y"]`` says: a value, a list of values (one per
call, the last one repeated), or a callable taking the arguments. Unknown
functions return 1 (Kamailio's "true"). Pseudo-variables live in ``pv``:
``KSR.pv.get`` reads it (a ``bytes`` value raises UnicodeDecodeError unless
it is valid UTF-8, as app_python3 does), ``KSR.pv.sets``/``seti`` write it,
and ``$(NAME{s.encode.hexa})`` gives the hex of a bytes value. Flags are a
set, ``KSR.isflagset`` reads it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any


class FakeKSR(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("KSR")
        self.calls: list[tuple[str, tuple]] = []
        self.returns: dict[str, Any] = {}
        self.pv_values: dict[str, Any] = {}
        self.flags: set[int] = set()
        self.logs: list[tuple[str, str]] = []

    # -- recording -----------------------------------------------------------

    def _call(self, name: str, args: tuple) -> Any:
        self.calls.append((name, args))
        value = self.returns.get(name, 1)
        if isinstance(value, list):
            value = value.pop(0) if len(value) > 1 else value[0]
        if callable(value):
            return value(*args)
        return value

    def called(self, name: str) -> list[tuple]:
        """The arguments of every call of NAME, in order."""
        return [args for called, args in self.calls if called == name]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    # -- KSR.x.y -------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "pv":
            return _Pv(self)
        if name in ("err", "warn", "info", "notice", "dbg", "crit"):
            return lambda text: self.logs.append((name, text))
        if name in ("setflag", "resetflag", "isflagset"):
            return getattr(self, "_" + name)
        if name == "route":  # KSR.route("NAME"): a native route block
            return lambda route: self._call("route", (route,))
        if name.startswith("is_"):  # KSR.is_INVITE() and friends
            method = name[3:]
            return lambda: self._call(name, ()) if name in self.returns else self.pv_values.get("$rm") == method
        return _Namespace(self, name)

    def _setflag(self, flag: int) -> int:
        self.flags.add(flag)
        return 1

    def _resetflag(self, flag: int) -> int:
        self.flags.discard(flag)
        return 1

    def _isflagset(self, flag: int) -> bool:
        return flag in self.flags


class _Namespace:
    def __init__(self, ksr: FakeKSR, name: str) -> None:
        self._ksr, self._name = ksr, name

    def __getattr__(self, func: str) -> Callable:
        full = f"{self._name}.{func}"
        return lambda *args: self._ksr._call(full, args)


class _Pv:
    def __init__(self, ksr: FakeKSR) -> None:
        self._ksr = ksr

    def get(self, name: str) -> Any:
        self._ksr.calls.append(("pv.get", (name,)))
        if name.startswith("$(") and name.endswith("{s.encode.hexa})"):
            inner = "$" + name[2:-len("{s.encode.hexa})")]
            value = self._ksr.pv_values.get(inner)
            if value is None:
                return None
            return (value if isinstance(value, bytes) else str(value).encode()).hex()
        value = self._ksr.pv_values.get(name)
        if isinstance(value, bytes):
            return value.decode()  # strict, as app_python3: UnicodeDecodeError
        return value

    def sets(self, name: str, value: str) -> int:
        self._ksr.calls.append(("pv.sets", (name, value)))
        self._ksr.pv_values[name] = value
        return 1

    def seti(self, name: str, value: int) -> int:
        self._ksr.calls.append(("pv.seti", (name, value)))
        self._ksr.pv_values[name] = value
        return 1
