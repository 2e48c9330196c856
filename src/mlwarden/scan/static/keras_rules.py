"""Keras rule declarations and the name tables the config checks consult.

The tables say which modules, builtins and Keras APIs a model config may not reference, which lookup
layers read vocabularies, and which identifiers in Lambda bytecode are worth naming in evidence. They
live next to the rules so that a reviewer sees what is flagged and how severe it is in one place; the
walk that applies them is in :mod:`mlwarden.scan.static.keras_checks`.
"""

from __future__ import annotations

import re

from mlwarden.core.findings import Severity, rule

KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_nlp", "keras_cv", "tf_keras"})
KERAS_PREFIXES = ("tensorflow.keras", "tensorflow.python.keras")
DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "builtins",
        "__builtin__",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "pickle",
        "_pickle",
        "marshal",
        "ctypes",
        "pty",
        "code",
        "codeop",
        "webbrowser",
        "http",
        "urllib",
        "urllib3",
        "requests",
        "multiprocessing",
        "asyncio",
        "pathlib",
        "io",
        "tempfile",
        "shlex",
        "platform",
        "signal",
        "threading",
        "types",
        "operator",
        "functools",
        "glob",
        "zipfile",
        "tarfile",
        "sqlite3",
        "telnetlib",
        "ftplib",
        "smtplib",
        "inspect",
        "gc",
        "numpy",
        "torch",
        "tensorflow",
        "jax",
        "dill",
        "cloudpickle",
        "joblib",
        "pip",
        "setuptools",
        "distutils",
        "site",
        "sysconfig",
        "timeit",
        "pdb",
        "bdb",
        "trace",
        "profile",
        "cProfile",
        "linecache",
        "commands",
        "popen2",
        "pydoc",
    }
)
DANGEROUS_BUILTINS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "exit",
        "quit",
        "help",
        "memoryview",
        "print",
    }
)
NON_MODELING = frozenset(
    {
        "get_file",
        "load_model",
        "model_from_json",
        "model_from_yaml",
        "save_model",
        "load_weights",
        "save_weights",
        "enable_unsafe_deserialization",
        "deserialize_keras_object",
        "serialize_keras_object",
        "register_keras_serializable",
        "load_img",
        "save_img",
        "clear_session",
        "set_global_attribute",
        "image_dataset_from_directory",
        "text_dataset_from_directory",
        "audio_dataset_from_directory",
        "func_load",
        "TFSMLayer",
    }
)
NON_MODELING_MODULES = frozenset({"saving", "global_state", "file_utils", "io_utils", "python_utils", "module_utils"})
LOOKUPS = frozenset({"StringLookup", "IntegerLookup", "IndexLookup", "TextVectorization", "Hashing"})
TFOP_DANGER_PATTERN = re.compile(
    r"(^|\.)(io|gfile|py_func|py_function|numpy_function|saved_model|summary|"
    r"load_library|load_op_library)(\.|$)|(^|\.)raw_ops\.(ReadFile|WriteFile|PyFunc\w*|"
    r"EagerPyFunc|MatchingFiles|ImmutableConst)$"
)
SUSPICIOUS_NAMES = frozenset(
    {
        "os",
        "system",
        "popen",
        "Popen",
        "subprocess",
        "exec",
        "eval",
        "open",
        "__import__",
        "builtins",
        "socket",
        "compile",
        "getattr",
        "remove",
        "unlink",
        "rmtree",
        "check_output",
        "check_call",
        "spawn",
        "execv",
        "execve",
        "fork",
        "pickle",
        "marshal",
        "loads",
        "urlopen",
        "requests",
        "write_text",
        "write_bytes",
        "shutil",
        "__builtins__",
        "globals",
        "import_module",
    }
)

LAMBDA_BYTECODE = rule(
    "MLW-KERAS-001",
    "Lambda layer with marshalled Python bytecode",
    Severity.CRITICAL,
    cwe=94,
    description="A Lambda layer (or another function slot) stores Python bytecode that Keras unmarshals "
    "and runs. Legacy HDF5 loading ignores safe_mode (CVE-2025-9905), and any load with safe_mode=False "
    "runs it (CVE-2024-3660).",
    remediation="Do not load the model. Rebuild it from a trusted definition of the Lambda's function, or "
    "replace the Lambda by a registered custom layer whose code you review.",
)
LAMBDA_FUNCTION = rule(
    "MLW-KERAS-002",
    "Lambda layer calls a Python function",
    Severity.HIGH,
    cwe=94,
    description="A Lambda layer calls a named Python function resolved at load time. Which code runs "
    "depends on the environment, and Keras APIs such as load_model have been abused this way "
    "(CVE-2025-9906).",
    remediation="Check that the named function is your own, reviewed code before loading the model.",
)
FOREIGN_IMPORT = rule(
    "MLW-KERAS-003",
    "Config imports an object from outside Keras",
    Severity.HIGH,
    cwe=502,
    description="An object's module/class_name names a Python module outside the Keras namespaces (e.g. "
    "os.system, builtins.exec). Keras versions before 3.9 imported it during loading, even with "
    "safe_mode=True (CVE-2025-1550).",
    remediation="Do not load the model; a genuine Keras model only references Keras objects and "
    "registered custom objects.",
)
NON_MODELING_API = rule(
    "MLW-KERAS-004",
    "Config references a non-modeling Keras API",
    Severity.HIGH,
    cwe=829,
    description="The config references a Keras function that is not a model component (file download, "
    "model loading, turning safe mode off). These have been used to bypass safe_mode (CVE-2025-8747, "
    "CVE-2025-9906).",
    remediation="Do not load the model.",
)
CUSTOM_OBJECT = rule(
    "MLW-KERAS-005",
    "Custom object needs user code",
    Severity.LOW,
    cwe=829,
    description="The model uses a custom layer, function or other object of its author's own code. Keras in "
    "safe mode only builds it if the loading program registers that code (custom_objects or "
    "register_keras_serializable); without it, loading fails before anything runs. The file itself carries no "
    "code for it (Lambda bytecode and foreign imports have rules of their own), so the risk is the code the "
    "loading program registers.",
    remediation="Register only custom-object code you obtained from a trusted source and reviewed; to accept the "
    "finding for this model, add a reviewed suppression (mlwarden suppress add MLW-KERAS-005 --digest ...).",
)
TORCH_PICKLE = rule(
    "MLW-KERAS-006",
    "TorchModuleWrapper embeds a pickled torch module",
    Severity.HIGH,
    cwe=502,
    description="A TorchModuleWrapper layer stores a torch.save() pickle that Keras 3.11.0-3.11.2 "
    "unpickled at load even in safe mode (CVE-2025-49655). The embedded pickle is analysed separately.",
    remediation="Do not load the model with an affected Keras; check the findings of the embedded pickle.",
)
EXTERNAL_MODEL = rule(
    "MLW-KERAS-007",
    "Layer loads an external SavedModel",
    Severity.HIGH,
    cwe=829,
    description="A TFSMLayer loads a TensorFlow SavedModel from a path in the config, which runs that "
    "model's graph (CVE-2026-1462).",
    remediation="Do not load the model unless the referenced SavedModel is yours and has been scanned.",
)
VOCAB_FILE = rule(
    "MLW-KERAS-008",
    "Lookup layer reads its vocabulary from a path",
    Severity.MEDIUM,
    cwe=73,
    description="A lookup/vectorization layer's vocabulary is a file path or URL, read during loading even "
    "with safe_mode=True (CVE-2025-12058): local file disclosure, or a network request for URLs.",
    remediation="Do not load the model; saved Keras models store vocabularies inside the archive.",
)
NAME_TRAVERSAL = rule(
    "MLW-KERAS-009",
    "Object name contains a path traversal",
    Severity.HIGH,
    cwe=22,
    description="A layer or object name contains '..' or is absolute; Keras builds file paths from names "
    "when saving or loading assets (CVE-2026-12479).",
    remediation="Do not load the model.",
)
TFOP_DANGER = rule(
    "MLW-KERAS-010",
    "TFOpLambda calls a TensorFlow file, Python or I/O function",
    Severity.HIGH,
    cwe=94,
    description="A TFOpLambda layer calls a TensorFlow function that reads or writes files, calls Python "
    "or loads libraries when the model runs.",
    remediation="Do not run the model; ask the publisher why the graph performs I/O.",
)
MALFORMED = rule(
    "MLW-KERAS-011",
    "Malformed Keras config",
    Severity.MEDIUM,
    cwe=20,
    description="The Keras model configuration could not be parsed, so what it loads is unknown.",
    remediation="Do not load a model whose configuration mlwarden cannot parse.",
)
