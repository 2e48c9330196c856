"""Globals known to be safe to import and call while unpickling a model.

Allowlist first: a global that is neither here nor in the denylist is reported as unknown, never
silently accepted. Each entry was checked to only construct data (containers, arrays, tensors,
estimators) and to neither evaluate strings, touch files or the network, nor hand back an arbitrary
callable. Entries were gathered from the benign models the test suite builds (sklearn, PyTorch state
dicts, full modules, checkpoints, pandas, numpy, TorchScript constants, joblib, xgboost, lightgbm).

Three kinds of entries:
- :data:`EXACT`: ``module.name`` allowed as written (each one reviewed).
- :data:`CLASS_PREFIXES`: below these packages, *class-like* names (upper-case first letter, no dots)
  are candidates: estimator and layer constructors only store their parameters. Functions are not
  (``pandas.read_csv`` lives under ``pandas`` and fetches URLs).
- :data:`HELPER_PREFIXES`: below these packages, unpickling helpers by their naming convention
  (``_reconstruct``, ``_unpickle*``, ``_new_*``, ``_rebuild*``, ``__pyx_unpickle_*``) are candidates too.

A family rule only says how an allowed name is *spelled*. Modules re-export objects from elsewhere
(``operator.attrgetter``, ``functools.partial``, whole modules), so a candidate is admitted only when the
resolved table (:mod:`mlwarden.scan.static.pickle.resolved`, built offline from the installed frameworks) says
that it is a class or function defined there, or a re-export of an allowed object.
"""

from __future__ import annotations

import re

_NUMPY_SCALARS = (
    "bool_ bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 intc uintc intp uintp longlong ulonglong "
    "float16 float32 float64 longdouble half single double complex64 complex128 clongdouble csingle cdouble "
    "str_ bytes_ void object_ datetime64 timedelta64 generic number integer floating complexfloating "
    "unicode_ string_ float_ int_ uint long ulong short ushort byte ubyte"
).split()

_TORCH_DTYPES = (
    "float32 float64 float16 bfloat16 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz complex32 "
    "complex64 complex128 uint8 uint16 uint32 uint64 int8 int16 int32 int64 bool quint8 qint8 qint32 quint4x2 "
    "quint2x4 half float double cfloat cdouble long int short bits8 bits16"
).split()

_TORCH_STORAGES = (
    "FloatStorage DoubleStorage HalfStorage BFloat16Storage LongStorage IntStorage ShortStorage CharStorage "
    "ByteStorage BoolStorage ComplexFloatStorage ComplexDoubleStorage QUInt8Storage QInt8Storage QInt32Storage "
    "QUInt4x2Storage QUInt2x4Storage UntypedStorage TypedStorage"
).split()

EXACT: frozenset[str] = frozenset(
    [
        # Python containers and value types (constructing them runs no user code).
        *(
            f"builtins.{n}"
            for n in (
                "set frozenset dict list tuple bytearray bytes complex int float str bool slice range object "
                "Ellipsis NotImplemented"
            ).split()
        ),
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.deque",
        "collections.Counter",
        "copyreg._reconstructor",
        "copyreg.__newobj__",
        "copyreg.__newobj_ex__",
        "_codecs.encode",  # protocol 2 encodes bytes as _codecs.encode(str, "latin1")
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "re._compile",
        "argparse.Namespace",
        "types.SimpleNamespace",
        "random.Random",
        "enum.Enum",
        "ipaddress.IPv4Address",
        "zoneinfo.ZoneInfo",
        # Pure builtin functions kept as values (gensim's Word2Vec stores builtins.hash as its hash function).
        *(
            f"builtins.{n}"
            for n in (
                "hash len abs min max sum sorted round divmod repr ascii ord chr isinstance issubclass iter zip "
                "enumerate reversed any all bin hex oct format callable"
            ).split()
        ),
        # math functions that take constant time on floats (not comb/perm/factorial/prod/gcd on huge integers).
        *(
            f"math.{n}"
            for n in (
                "sqrt exp expm1 log log1p log2 log10 sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh "
                "erf erfc gamma lgamma fabs floor ceil trunc copysign hypot degrees radians isfinite isinf isnan"
            ).split()
        ),
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "pathlib._local.PosixPath",
        "pathlib._local.Path",
        "pathlib._local.WindowsPath",
        # numpy arrays, dtypes, scalars and random states.
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
        "numpy.matrix",
        "numpy.matrixlib.defmatrix.matrix",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random.__RandomState_ctor",  # numpy < 1.17 pickled RandomState through this helper
        "numpy.core.records.recarray",
        "numpy._core.records.recarray",
        "numpy.core.records.record",
        "numpy.rec.recarray",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.mtrand.RandomState",
        "numpy.random._generator.Generator",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random.bit_generator.SeedSequence",
        *(f"numpy.{n}" for n in _NUMPY_SCALARS),
        *(f"numpy.core.numerictypes.{n}" for n in _NUMPY_SCALARS),
        *(f"numpy._core.numerictypes.{n}" for n in _NUMPY_SCALARS),
        # PyTorch tensors, storages, parameters and the helpers torch.save uses to rebuild them.
        *(
            f"torch._utils.{n}"
            for n in (
                "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
                "_rebuild_parameter_with_state _rebuild_sparse_tensor _rebuild_sparse_csr_tensor "
                "_rebuild_nested_tensor "
                "_rebuild_qtensor _rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor "
                "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass _rebuild_from_type_v2 _rebuild_xla_tensor "
                "_rebuild_mlc_tensor"
            ).split()
        ),
        "torch._tensor._rebuild_from_type_v2",
        "torch._tensor._rebuild_from_type",
        *(f"torch.{n}" for n in _TORCH_STORAGES),
        *(f"torch.storage.{n}" for n in _TORCH_STORAGES),
        *(f"torch.{n}" for n in _TORCH_DTYPES),
        "torch.Tensor",
        "torch.Size",
        "torch.device",
        "torch.dtype",
        "torch.layout",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.memory_format",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.channels_last_3d",
        "torch.preserve_format",
        "torch.per_tensor_affine",
        "torch.per_channel_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_symmetric",
        "torch.serialization._get_layout",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.parameter.UninitializedBuffer",
        "torch.torch_version.TorchVersion",
        "torch.autograd.grad_mode.no_grad",
        "torch.utils.hooks.RemovableHandle",
        # TorchScript constants.pkl helpers (they build lists and tensors from ids).
        *(
            f"torch.jit._pickle.{n}"
            for n in (
                "build_intlist build_tensorlist build_doublelist build_boollist build_tensor_from_id "
                "restore_type_tag build_complexlist"
            ).split()
        ),
        # joblib's array wrappers (the array bytes are analysed separately by the emulator).
        # sklearn's Bunch (a dict with attribute access) under the paths older versions pickled it from.
        "sklearn.datasets.base.Bunch",
        "sklearn.datasets._base.Bunch",
        "sklearn.utils.Bunch",
        "sklearn.utils._bunch.Bunch",
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "joblib.numpy_pickle_compat.NDArrayWrapper",
        "joblib.numpy_pickle_compat.ZNDArrayWrapper",
        "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
        # joblib < 0.10 spelled the legacy wrappers here; joblib_legacy checks the file each one names.
        "joblib.numpy_pickle.NDArrayWrapper",
        "joblib.numpy_pickle.ZNDArrayWrapper",
        # pandas containers re-exported at top level (not HDFStore/ExcelFile etc., which open files or URLs).
        *(
            f"pandas.{n}"
            for n in (
                "DataFrame Series Index RangeIndex MultiIndex CategoricalIndex DatetimeIndex TimedeltaIndex "
                "PeriodIndex "
                "IntervalIndex Categorical CategoricalDtype Timestamp Timedelta Period Interval DatetimeTZDtype "
                "IntervalDtype PeriodDtype SparseDtype StringDtype BooleanDtype Int8Dtype Int16Dtype Int32Dtype "
                "Int64Dtype UInt8Dtype UInt16Dtype UInt32Dtype UInt64Dtype Float32Dtype Float64Dtype ArrowDtype "
                "DateOffset Flags"
            ).split()
        ),
        # pyarrow buffers and arrays: pandas 3 stores strings in Arrow arrays when pyarrow is installed.
        "pyarrow.lib._restore_array",
        "pyarrow.lib.type_for_alias",
        "pyarrow.lib.py_buffer",
        "pyarrow.lib.chunked_array",
        # scipy sparse matrices inside estimators.
        "scipy.sparse._csr.csr_matrix",
        "scipy.sparse._csc.csc_matrix",
        "scipy.sparse._coo.coo_matrix",
        "scipy.sparse.csr.csr_matrix",
        "scipy.sparse.csc.csc_matrix",
    ]
)

CLASS_PREFIXES: tuple[str, ...] = (
    "scipy.interpolate",
    "scipy.spatial",
    "scipy.stats",
    "scipy.optimize._optimize",
    # TorchScript archives: `__torch__.*` names are classes compiled from the archive's own code/ folder by
    # torch.jit.load (never Python imports); that code is analysed as source separately.
    "__torch__",
    "pandas.arrays",
    "sklearn",
    "torch.nn.modules",
    "torch.optim",
    "pandas.core",
    "pandas._libs",
    "scipy.sparse",
    "xgboost",
    "lightgbm",
    "catboost",
    "numpy.dtypes",
    "torch.distributions",
    "torch.nn.utils.parametrizations",
)

# Pure tensor math: every function in these modules is allowed (activation functions stored on modules).
FUNCTION_MODULES: frozenset[str] = frozenset(
    {"torch.nn.functional", "torch.nn.init", "scipy._lib.array_api_compat.numpy._aliases"}
)

# scikit-learn packages whose module-level functions are pure computations that estimators keep as
# parameters (score functions, metrics, kernels, solvers). Not sklearn.datasets (downloads, reads files),
# not sklearn.utils (testing helpers, joblib re-exports) and not sklearn.externals.
SKLEARN_FUNCTION_PACKAGES: tuple[str, ...] = tuple(
    f"sklearn.{p}"
    for p in (
        "metrics feature_selection cluster preprocessing neighbors linear_model ensemble svm tree _loss "
        "decomposition manifold kernel_approximation calibration gaussian_process covariance cross_decomposition "
        "discriminant_analysis isotonic kernel_ridge mixture naive_bayes neural_network random_projection "
        "semi_supervised impute compose pipeline feature_extraction multiclass multioutput dummy"
    ).split()
)

HELPER_PREFIXES: tuple[str, ...] = ("pandas.core", "pandas._libs", "sklearn", "numpy", "scipy.sparse")
_HELPER_NAME = re.compile(
    r"^(__pyx_unpickle_\w+|_?_?(reconstruct|unpickle|new_|rebuild|restore)\w*|new_block\w*|newObj)$"
)

# numpy ufuncs and reductions (FunctionTransformer(func=np.log1p), aggregation callbacks): pure math on arrays.
NUMPY_MATH: frozenset[str] = frozenset(
    (
        "abs absolute acos acosh add arccos arccosh arcsin arcsinh arctan arctan2 arctanh asin asinh atan atan2 atanh "
        "bitwise_and bitwise_count bitwise_invert bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift "
        "bitwise_xor cbrt ceil conj conjugate copysign cos cosh deg2rad degrees divide divmod equal exp exp2 expm1 "
        "fabs "
        "float_power floor floor_divide fmax fmin fmod frexp gcd greater greater_equal heaviside hypot invert isfinite "
        "isinf isnan isnat lcm ldexp left_shift less less_equal log log10 log1p log2 logaddexp logaddexp2 logical_and "
        "logical_not logical_or logical_xor matmul maximum minimum mod modf multiply negative nextafter not_equal "
        "positive pow power rad2deg radians reciprocal remainder right_shift rint sign signbit sin sinh spacing sqrt "
        "square subtract tan tanh true_divide trunc mean median sum prod std var min max amin amax nanmean nanmedian "
        "nansum nanstd nanvar argmax argmin clip round cumsum cumprod"
    ).split()
)
NUMPY_UFUNC_MODULES = frozenset({"numpy", "numpy.core.umath", "numpy._core.umath"})


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def prefix_admits(module: str, name: str) -> bool:
    """Whether a built-in family rule (prefix, function module, helper naming) spells ``module.name`` as allowed.

    A spelling is not an object: :func:`is_allowed` also requires the resolved table to say what the name *is*
    (see :mod:`mlwarden.scan.static.pickle.resolved`). The table's builder calls this to know what to resolve.
    """
    if "." in name:  # attribute traversal is only ever allowed when written out exactly
        return False
    if module in NUMPY_UFUNC_MODULES and name in NUMPY_MATH:
        return True
    if module in FUNCTION_MODULES:
        return not name.startswith("_")
    if _under(module, CLASS_PREFIXES) and name.lstrip("_")[:1].isupper():
        return True  # classes, private ones included (sklearn's _BinMapper, _CFNode)
    if _under(module, SKLEARN_FUNCTION_PACKAGES) and name.isidentifier():
        return True
    return _under(module, HELPER_PREFIXES) and bool(_HELPER_NAME.match(name))


def user_wildcard(module: str, name: str, extra: frozenset[str]) -> bool:
    """Whether a policy ``[pickle] allow = ["pkg.*"]`` entry admits the class-like ``module.name``.

    The user's own packages are not in the resolved table: the restricted loader checks at load time that the
    object really is defined under the package (``__module__``), so a re-export is refused there.
    """
    if "." in name or not name[:1].isupper():
        return False
    return any(module == e[:-2] or module.startswith(e[:-2] + ".") for e in extra if e.endswith(".*"))


def is_allowed(module: str, name: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether ``module.name`` is on the built-in or the policy's allowlist, judged as the object it resolves to."""
    full = f"{module}.{name}"
    if full in EXACT or full in extra:
        return True
    if user_wildcard(module, name, extra):
        return True
    if module.split(".")[0] == "__torch__":
        return prefix_admits(module, name)  # TorchScript classes compiled from the archive's code/, never imported
    from mlwarden.scan.static.pickle.resolved import table

    if table().kind(full) in DATA_KINDS:
        return True
    return prefix_admits(module, name) and table().resolve(full).admitted


#: Resolved-table kinds admitted without a family rule: classes judged by what unpickling can make them do.
#: ``reconstruct-only`` classes are data when rebuilt (``__new__`` + state) but reach a capability when *called*
#: (their ``__init__``): importing one is fine, a REDUCE/INST/OBJ of it is a finding.
DATA_KINDS = frozenset({"enum", "data-class", "data-function", RECONSTRUCT_ONLY := "reconstruct-only"})
