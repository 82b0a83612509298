"""The script app_python3 loads (modparam "load"): a thin shim over c4kemi.call.kemi.

app_python3 puts the directory of the loaded script first on sys.path. Loading
c4kemi/call/kemi.py directly would put c4kemi/call/ there, where its modules
could shadow top-level ones, and run kemi.py outside its package, so the script
loaded is this one, and c4kemi is imported as a package from PYTHONPATH (set by
`c4 kamailio`).
"""

from c4kemi.call.kemi import Router, mod_init  # noqa: F401  (app_python3 calls mod_init)
