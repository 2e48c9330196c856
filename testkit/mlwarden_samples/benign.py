"""Benign classical-ML samples: scikit-learn, joblib, pandas, numpy, XGBoost, LightGBM, and archives of them.

A scanner earns trust by staying quiet on these: scikit-learn pickles reference hundreds of legitimate
globals, joblib wraps arrays in its own containers and five compression formats, and pandas frames pull
in their block managers. Everything is fitted on small synthetic data with fixed seeds.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from mlwarden_samples import BuildContext, Made, register


def _xy(n: int = 120, d: int = 5) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, y


def _frame() -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    n = 120
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.lognormal(10, 1, n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "plan": rng.choice(["free", "pro"], n),
            "score": rng.standard_normal(n),
        }
    )


def sklearn_pipeline() -> Any:
    """A fitted Pipeline: ColumnTransformer(OneHotEncoder, StandardScaler, log1p) then LogisticRegression."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    frame = _frame()
    target = (frame["score"] > 0).astype(int)
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
            ("num", StandardScaler(), ["age", "score"]),
            ("log", FunctionTransformer(np.log1p), ["income"]),
        ]
    )
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=200))]).fit(frame, target)


@register("benign", "sklearn-estimators", requires=("sklearn", "numpy"))
def _estimators(ctx: BuildContext, folder: Path) -> list[Made]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeRegressor

    x, y = _xy()
    models = {
        "logistic_regression": LogisticRegression().fit(x, y),
        "random_forest": RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x, y),
        "gradient_boosting": GradientBoostingClassifier(n_estimators=10, random_state=0).fit(x, y),
        "svc": SVC(random_state=0).fit(x, y),
        "kmeans": KMeans(n_clusters=3, n_init=2, random_state=0).fit(x),
        "pca": PCA(n_components=3, random_state=0).fit(x),
        "decision_tree": DecisionTreeRegressor(max_depth=3, random_state=0).fit(x, x[:, 2]),
    }
    out = []
    for name, model in models.items():
        path = folder / f"{name}.pkl"
        path.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL if name == "svc" else 4))
        out.append(Made(path, f"fitted scikit-learn {type(model).__name__} saved with pickle"))
    return out


@register("benign", "sklearn-pipeline", requires=("sklearn", "pandas", "joblib"))
def _pipeline(ctx: BuildContext, folder: Path) -> list[Made]:
    import joblib

    pipe = sklearn_pipeline()
    pkl_path, jl_path = folder / "pipeline.pkl", folder / "pipeline.joblib"
    pkl_path.write_bytes(pickle.dumps(pipe, protocol=4))
    joblib.dump(pipe, jl_path)
    what = "Pipeline(ColumnTransformer(OneHotEncoder, StandardScaler, FunctionTransformer(log1p)), LogReg)"
    return [Made(pkl_path, f"{what} saved with pickle"), Made(jl_path, f"{what} saved with joblib")]


@register("benign", "joblib-compressed", requires=("sklearn", "joblib"))
def _joblib_compressed(ctx: BuildContext, folder: Path) -> list[Made]:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    x, y = _xy()
    model = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(x, y)
    out = []
    variants: list[tuple[str, Any]] = [
        ("zlib", ("zlib", 3)),
        ("gzip", ("gzip", 3)),
        ("bz2", ("bz2", 3)),
        ("lzma", ("lzma", 3)),
        ("xz", ("xz", 3)),
        ("level3", 3),
    ]
    for name, compress in variants:
        path = folder / f"forest.{name}.joblib"
        joblib.dump(model, path, compress=compress)
        out.append(Made(path, f"RandomForest saved with joblib compress={compress!r}"))
    plain = folder / "forest.joblib"
    joblib.dump(model, plain)
    return [Made(plain, "RandomForest saved with joblib, uncompressed"), *out]


@register("benign", "pandas-pickle", requires=("pandas", "numpy"))
def _pandas(ctx: BuildContext, folder: Path) -> list[Made]:
    frame = _frame()
    frame["when"] = frame.index.map(lambda i: f"2024-01-{1 + i % 28:02d}")
    frame["when"] = frame["when"].astype("datetime64[ns]")
    frame["city"] = frame["city"].astype("category")
    df_path, s_path = folder / "frame.pkl", folder / "series.pkl"
    frame.to_pickle(df_path)
    frame["income"].rename("income").to_pickle(s_path)
    return [
        Made(df_path, "pandas DataFrame (ints, floats, strings, category, datetime) via to_pickle"),
        Made(s_path, "pandas Series via to_pickle"),
    ]


@register("benign", "numpy", requires=("numpy",))
def _numpy(ctx: BuildContext, folder: Path) -> list[Made]:
    import numpy as np

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((16, 8)).astype(np.float32)
    paths = {
        name: folder / name
        for name in ("weights.npy", "arrays.npz", "arrays_compressed.npz", "structured.npy", "objects.npy")
    }
    np.save(paths["weights.npy"], weights)
    np.savez(paths["arrays.npz"], weights=weights, bias=np.zeros(8), steps=np.arange(10))
    np.savez_compressed(paths["arrays_compressed.npz"], weights=weights, labels=np.array(["a", "b"]))
    np.save(paths["structured.npy"], np.array([(1, 2.0), (3, 4.0)], dtype=[("id", "<i4"), ("w", "<f8")]))
    np.save(paths["objects.npy"], np.array([1, "two", 3.0, None, ("a", 1)], dtype=object), allow_pickle=True)
    return [
        Made(paths["weights.npy"], "numeric .npy (float32 matrix)"),
        Made(paths["arrays.npz"], "plain .npz of numeric arrays"),
        Made(paths["arrays_compressed.npz"], "compressed .npz with a unicode string array"),
        Made(paths["structured.npy"], ".npy of a structured dtype"),
        Made(
            paths["objects.npy"],
            "object-dtype .npy of plain Python ints, strings, None and a tuple "
            "(a pickle whose only globals are numpy's array reconstructors)",
        ),
    ]


@register("benign", "xgboost", requires=("xgboost", "numpy"))
def _xgboost(ctx: BuildContext, folder: Path) -> list[Made]:
    import xgboost as xgb

    x, y = _xy()
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1).fit(x, y)
    out = []
    for ext in ("json", "ubj"):
        path = folder / f"model.{ext}"
        model.save_model(path)
        out.append(Made(path, f"XGBoost classifier saved as .{ext}"))
    return out


@register("benign", "lightgbm", requires=("lightgbm", "numpy"))
def _lightgbm(ctx: BuildContext, folder: Path) -> list[Made]:
    import lightgbm as lgb

    x, y = _xy()
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "seed": 0, "num_threads": 1},
        lgb.Dataset(x, y),
        num_boost_round=5,
    )
    path = folder / "model.txt"
    booster.save_model(str(path))
    return [Made(path, "LightGBM booster saved as text")]


def _small_models() -> dict[str, bytes]:
    """A few small real model files, as bytes, for the archive samples."""
    import numpy as np
    from safetensors.numpy import save
    from sklearn.linear_model import LogisticRegression

    x, y = _xy()
    npy = io.BytesIO()
    np.save(npy, np.arange(12, dtype=np.float64).reshape(3, 4))
    return {
        "logistic.pkl": pickle.dumps(LogisticRegression().fit(x, y), protocol=4),
        "weights.npy": npy.getvalue(),
        "model.safetensors": save({"w": np.ones((2, 2), dtype=np.float32)}),
        "README.md": b"# demo bundle\nA few small models.\n",
    }


@register("benign", "archive-zip", requires=("sklearn", "numpy", "safetensors"))
def _archive_zip(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "models.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _small_models().items():
            zf.writestr(f"bundle/{name}", data)
    return [Made(path, "zip of a pickled LogisticRegression, an .npy, a safetensors file and a README")]


@register("benign", "archive-tar-gz", requires=("sklearn", "numpy", "safetensors"))
def _archive_tar(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in _small_models().items():
            info = tarfile.TarInfo(f"model/{name}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return [Made(path, "tar.gz of a model folder (pickled LogisticRegression, .npy, safetensors, README)")]
