"""Known-dangerous callables reachable from a pickle, by category.

The denylist is not what keeps users safe — the allowlist is (anything not allowed is reported). The
denylist gives a *precise* verdict and a higher severity to callables known to be used in attacks, so
that reports say "runs a shell command" instead of "unknown global". Entries come from CPython's
standard library, public advisories against picklescan, modelscan and fickling, and research on
scanner bypasses; each category has one rule ID.

Matching: an entry ``"pkg.mod"`` in :data:`DANGEROUS_MODULES` covers the module and every submodule
(``asyncio`` covers ``asyncio.unix_events``); ``"mod.name"`` in :data:`DANGEROUS_CALLABLES` covers that
attribute and anything below it (``profile.Profile`` covers ``profile.Profile.run``).
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """Why a callable is dangerous; each maps to one rule."""

    COMMAND = "command-execution"
    CODE = "code-evaluation"
    INDIRECTION = "dynamic-lookup"
    FILESYSTEM = "filesystem"
    NETWORK = "network"
    DESERIALIZE = "nested-deserialization"
    NATIVE = "native-code"
    PROCESS = "process-control"


# Whole modules: every callable in them (and in their submodules) is dangerous.
DANGEROUS_MODULES: dict[str, Category] = {
    # Shell and process execution.
    "os": Category.COMMAND,
    "posix": Category.COMMAND,
    "nt": Category.COMMAND,
    "subprocess": Category.COMMAND,
    "pty": Category.COMMAND,
    "commands": Category.COMMAND,
    "popen2": Category.COMMAND,
    "_posixsubprocess": Category.COMMAND,
    "asyncio": Category.COMMAND,
    "spawn": Category.COMMAND,
    "_osx_support": Category.COMMAND,
    "_aix_support": Category.COMMAND,
    "_pyrepl": Category.COMMAND,
    "ensurepip": Category.COMMAND,
    "pip": Category.COMMAND,
    "venv": Category.COMMAND,
    "distutils": Category.COMMAND,
    "setuptools": Category.COMMAND,
    "idlelib": Category.CODE,
    "lib2to3": Category.CODE,
    "test": Category.COMMAND,
    "platform": Category.COMMAND,
    # Evaluating source or byte code.
    "code": Category.CODE,
    "codeop": Category.CODE,
    "runpy": Category.CODE,
    "pdb": Category.CODE,
    "bdb": Category.CODE,
    "profile": Category.CODE,
    "cProfile": Category.CODE,
    "_lsprof": Category.CODE,
    "timeit": Category.CODE,
    "trace": Category.CODE,
    "doctest": Category.CODE,
    "marshal": Category.CODE,
    "compileall": Category.CODE,
    "py_compile": Category.CODE,
    "pydoc": Category.CODE,
    "IPython": Category.CODE,
    "_interpreters": Category.CODE,
    "_xxsubinterpreters": Category.CODE,
    "interpreters": Category.CODE,
    "concurrent.interpreters": Category.CODE,
    "cgitb": Category.CODE,
    "sys": Category.CODE,
    "site": Category.CODE,
    "builtins.exec": Category.CODE,
    # Dynamic lookup: turn strings into callables, defeating any static list.
    "importlib": Category.INDIRECTION,
    "pkgutil": Category.INDIRECTION,
    "imp": Category.INDIRECTION,
    "zipimport": Category.INDIRECTION,
    "inspect": Category.INDIRECTION,
    # Native code.
    "ctypes": Category.NATIVE,
    "_ctypes": Category.NATIVE,
    "cffi": Category.NATIVE,
    "_cffi_backend": Category.NATIVE,
    "mmap": Category.NATIVE,
    # Filesystem.
    "shutil": Category.FILESYSTEM,
    "tempfile": Category.FILESYSTEM,
    "glob": Category.FILESYSTEM,
    "fileinput": Category.FILESYSTEM,
    "shelve": Category.DESERIALIZE,
    "dbm": Category.FILESYSTEM,
    "zipfile": Category.FILESYSTEM,
    "tarfile": Category.FILESYSTEM,
    "sqlite3": Category.FILESYSTEM,
    "logging.config": Category.CODE,
    "logging.handlers": Category.FILESYSTEM,
    # Network.
    "socket": Category.NETWORK,
    "_socket": Category.NETWORK,
    "ssl": Category.NETWORK,
    "urllib": Category.NETWORK,
    "urllib2": Category.NETWORK,
    "urllib3": Category.NETWORK,
    "http": Category.NETWORK,
    "httplib": Category.NETWORK,
    "requests": Category.NETWORK,
    "httpx": Category.NETWORK,
    "aiohttp": Category.NETWORK,
    "ftplib": Category.NETWORK,
    "smtplib": Category.NETWORK,
    "imaplib": Category.COMMAND,
    "poplib": Category.NETWORK,
    "nntplib": Category.NETWORK,
    "telnetlib": Category.NETWORK,
    "xmlrpc": Category.NETWORK,
    "webbrowser": Category.NETWORK,
    "socketserver": Category.NETWORK,
    "wsgiref": Category.NETWORK,
    "smtpd": Category.NETWORK,
    "asynchat": Category.NETWORK,
    "asyncore": Category.NETWORK,
    # Nested deserialisation: the payload hides in bytes the outer scan cannot see.
    "pickle": Category.DESERIALIZE,
    "_pickle": Category.DESERIALIZE,
    "cPickle": Category.DESERIALIZE,
    "dill": Category.DESERIALIZE,
    "cloudpickle": Category.DESERIALIZE,
    "joblib": Category.DESERIALIZE,
    "jsonpickle": Category.DESERIALIZE,
    "yaml": Category.DESERIALIZE,
    # Process and thread control.
    "multiprocessing": Category.PROCESS,
    "_multiprocessing": Category.PROCESS,
    "threading": Category.PROCESS,
    "_thread": Category.PROCESS,
    "signal": Category.PROCESS,
    "sched": Category.PROCESS,
    "concurrent": Category.PROCESS,
    "atexit": Category.PROCESS,
    "gc": Category.PROCESS,
    # Framework internals that evaluate strings, run commands or load pickles (advisories against peers).
    "torch.utils.bottleneck": Category.CODE,
    "torch._dynamo": Category.CODE,
    "torch._inductor": Category.COMMAND,
    "torch.utils.collect_env": Category.COMMAND,
    "torch.utils.data.datapipes": Category.DESERIALIZE,
    "torch.jit.unsupported_tensor_ops": Category.CODE,
    "torch.utils._config_module": Category.DESERIALIZE,
    "torch.fx.experimental.symbolic_shapes": Category.CODE,
    "torch.hub": Category.CODE,
    "torch.fx": Category.CODE,
    "torch.utils.cpp_extension": Category.COMMAND,
    "torch.distributed": Category.NETWORK,
    "torch.multiprocessing": Category.PROCESS,
    "torch.package": Category.DESERIALIZE,
    "torch.testing": Category.CODE,
    "torch.utils.benchmark": Category.CODE,
    "torch._export": Category.CODE,
    "torch.export": Category.DESERIALIZE,
    "torch.compiler": Category.CODE,
    "torch.cuda": Category.NATIVE,
    "torch.ops": Category.NATIVE,
    "torch._ops": Category.NATIVE,
    "torch.library": Category.NATIVE,
    "numpy.f2py": Category.CODE,
    "numpy.testing": Category.CODE,
    "numpy.distutils": Category.COMMAND,
    "numpy.ctypeslib": Category.NATIVE,
    "numpy.lib.npyio": Category.DESERIALIZE,
    "numpy.lib.format": Category.DESERIALIZE,
    "numpy.lib._npyio_impl": Category.DESERIALIZE,
    "pandas.io": Category.NETWORK,
    "keras.utils": Category.NETWORK,
    "tensorflow.io": Category.FILESYSTEM,
    "mlflow.projects": Category.COMMAND,
    "transformers.dynamic_module_utils": Category.CODE,
    "huggingface_hub": Category.NETWORK,
    "transformers.utils.hub": Category.NETWORK,
    "tensorflow.python.ops.script_ops": Category.CODE,
    "jinja2": Category.CODE,
    "subprocess32": Category.COMMAND,
    "sh": Category.COMMAND,
    "plumbum": Category.COMMAND,
    "paramiko": Category.NETWORK,
    "fabric": Category.COMMAND,
}

# Single callables (and everything below them).
DANGEROUS_CALLABLES: dict[str, Category] = {
    "builtins.eval": Category.CODE,
    "builtins.exec": Category.CODE,
    "builtins.compile": Category.CODE,
    "builtins.execfile": Category.CODE,
    "builtins.breakpoint": Category.CODE,
    "builtins.input": Category.CODE,
    "builtins.open": Category.FILESYSTEM,
    "builtins.file": Category.FILESYSTEM,
    "builtins.__import__": Category.INDIRECTION,
    "builtins.getattr": Category.INDIRECTION,
    "builtins.setattr": Category.INDIRECTION,
    "builtins.delattr": Category.INDIRECTION,
    "builtins.globals": Category.INDIRECTION,
    "builtins.locals": Category.INDIRECTION,
    "builtins.vars": Category.INDIRECTION,
    "builtins.__builtins__": Category.INDIRECTION,
    "builtins.help": Category.CODE,
    "builtins.exit": Category.PROCESS,
    "builtins.quit": Category.PROCESS,
    "builtins.copyright": Category.FILESYSTEM,
    "builtins.license": Category.FILESYSTEM,
    "builtins.credits": Category.FILESYSTEM,
    "builtins.object.__getattribute__": Category.INDIRECTION,
    "builtins.map": Category.INDIRECTION,
    "builtins.filter": Category.INDIRECTION,
    "io.open": Category.FILESYSTEM,
    "io.FileIO": Category.FILESYSTEM,
    "io.open_code": Category.FILESYSTEM,
    "_io.open": Category.FILESYSTEM,
    "_io.FileIO": Category.FILESYSTEM,
    "_io.open_code": Category.FILESYSTEM,
    "codecs.open": Category.FILESYSTEM,
    "pathlib.Path.write_text": Category.FILESYSTEM,
    "pathlib.Path.write_bytes": Category.FILESYSTEM,
    "pathlib.Path.unlink": Category.FILESYSTEM,
    "pathlib.Path.open": Category.FILESYSTEM,
    "pathlib.Path.read_text": Category.FILESYSTEM,
    "pathlib.Path.read_bytes": Category.FILESYSTEM,
    "pathlib.Path.rmdir": Category.FILESYSTEM,
    "pathlib.Path.symlink_to": Category.FILESYSTEM,
    "pathlib.Path.chmod": Category.FILESYSTEM,
    "pathlib.PosixPath.write_text": Category.FILESYSTEM,
    "pathlib.PosixPath.write_bytes": Category.FILESYSTEM,
    "pathlib.PosixPath.unlink": Category.FILESYSTEM,
    "pathlib.PosixPath.open": Category.FILESYSTEM,
    "logging.FileHandler": Category.FILESYSTEM,
    "logging.basicConfig": Category.FILESYSTEM,
    "operator.attrgetter": Category.INDIRECTION,
    "operator.methodcaller": Category.INDIRECTION,
    "operator.itemgetter": Category.INDIRECTION,
    "operator.call": Category.INDIRECTION,
    "_operator.attrgetter": Category.INDIRECTION,
    "_operator.methodcaller": Category.INDIRECTION,
    "_operator.itemgetter": Category.INDIRECTION,
    "_operator.call": Category.INDIRECTION,
    "functools.reduce": Category.INDIRECTION,
    "_functools.reduce": Category.INDIRECTION,
    "functools.partial": Category.INDIRECTION,
    "_functools.partial": Category.INDIRECTION,
    "functools.partialmethod": Category.INDIRECTION,
    "functools.singledispatch": Category.INDIRECTION,
    "types.FunctionType": Category.CODE,
    "types.CodeType": Category.CODE,
    "types.LambdaType": Category.CODE,
    "types.MethodType": Category.INDIRECTION,
    "types.ModuleType": Category.INDIRECTION,
    "uuid._get_command_stdout": Category.COMMAND,
    "copyreg._extension_registry": Category.INDIRECTION,
    "copyreg.add_extension": Category.INDIRECTION,
    "torch.load": Category.DESERIALIZE,
    "torch.serialization.load": Category.DESERIALIZE,
    "torch.serialization._load": Category.DESERIALIZE,
    "torch.storage._load_from_bytes": Category.DESERIALIZE,
    "torch.jit.load": Category.DESERIALIZE,
    "torch.jit._serialization.load": Category.DESERIALIZE,
    "torch.save": Category.FILESYSTEM,
    "torch.serialization.save": Category.FILESYSTEM,
    "torch.from_file": Category.FILESYSTEM,
    "torch.classes": Category.NATIVE,
    "torch._C": Category.NATIVE,
    "torch.utils.data.DataLoader": Category.PROCESS,
    "torch.Tensor.__reduce_ex__": Category.INDIRECTION,
    "numpy.load": Category.DESERIALIZE,
    "numpy.loadtxt": Category.FILESYSTEM,
    "numpy.genfromtxt": Category.NETWORK,
    "numpy.fromfile": Category.FILESYSTEM,
    "numpy.save": Category.FILESYSTEM,
    "numpy.savetxt": Category.FILESYSTEM,
    "numpy.tofile": Category.FILESYSTEM,
    "numpy.memmap": Category.FILESYSTEM,
    "numpy.DataSource": Category.NETWORK,
    "numpy.lib.DataSource": Category.NETWORK,
    "numpy.__builtins__": Category.INDIRECTION,
    "pandas.read_csv": Category.NETWORK,
    "pandas.read_pickle": Category.DESERIALIZE,
    "pandas.read_json": Category.NETWORK,
    "pandas.read_html": Category.NETWORK,
    "pandas.read_excel": Category.NETWORK,
    "pandas.read_parquet": Category.NETWORK,
    "pandas.read_table": Category.NETWORK,
    "pandas.read_sql": Category.NETWORK,
    "pandas.read_xml": Category.NETWORK,
    "pandas.read_feather": Category.NETWORK,
    "pandas.read_fwf": Category.NETWORK,
    "pandas.read_hdf": Category.DESERIALIZE,
    "pandas.read_orc": Category.NETWORK,
    "pandas.read_sas": Category.NETWORK,
    "pandas.read_spss": Category.NETWORK,
    "pandas.read_stata": Category.NETWORK,
    "pandas.read_clipboard": Category.COMMAND,
    "pandas.eval": Category.CODE,
    "pandas.core.computation": Category.CODE,
    "pandas.DataFrame.query": Category.CODE,
    "pandas.DataFrame.eval": Category.CODE,
    "pandas.core.frame.DataFrame.to_csv": Category.FILESYSTEM,
    "sklearn.utils._testing": Category.CODE,
    "sklearn.datasets": Category.NETWORK,
    "scipy.io": Category.FILESYSTEM,
    "matplotlib.pyplot.savefig": Category.FILESYSTEM,
}


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def lookup(module: str, name: str, extra: frozenset[str] = frozenset()) -> tuple[Category, str] | None:
    """Return ``(category, matched entry)`` if ``module.name`` is known dangerous, else ``None``.

    ``extra`` are user-denied entries from the policy (``module.name`` or ``module.*``).
    """
    full = f"{module}.{name}"
    for prefix in _prefixes(full):
        if prefix in extra or f"{prefix}.*" in extra:
            return Category.CODE, prefix
        cat = DANGEROUS_CALLABLES.get(prefix)
        if cat is not None:
            return cat, prefix
    for prefix in _prefixes(module):
        cat = DANGEROUS_MODULES.get(prefix)
        if cat is not None:
            return cat, prefix
    return None
