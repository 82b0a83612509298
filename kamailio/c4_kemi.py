"""The script app_python3 loads (modparam "load"): a thin shim over c4kemi.kemi.

app_python3 puts the directory of the loaded script first on sys.path. Loading
c4kemi/kemi.py directly would put c4kemi/ there and let its modules shadow
top-level ones (c4kemi/numbers.py would hide the standard library's numbers),
so the script loaded is this one, and c4kemi is imported as a package from
PYTHONPATH (set by `c4 kamailio`).
"""

from c4kemi.kemi import Router, mod_init  # noqa: F401  (app_python3 calls mod_init)
