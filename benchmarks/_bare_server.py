"""The bare baseline of ``guard_load.py``: the same joblib model behind FastAPI + uvicorn, with no checks at all.

Usage: ``python _bare_server.py MODEL.joblib PORT``. It loads the file with ``joblib.load`` (the benchmark made
it; never do this with a file you did not make) and answers ``POST /v1/models/fraud/predict`` with the same JSON
shape as the guard (label and rounded scores per row).
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    inputs: list[list[float]]


def main() -> None:
    model = joblib.load(sys.argv[1])
    classes = [str(c) for c in model.classes_]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/fraud/predict")
    def predict(body: Body) -> dict[str, Any]:
        scores = model.predict_proba(np.asarray(body.inputs, dtype=np.float64))
        rows = [
            {
                "label": classes[int(s.argmax())],
                "scores": {c: round(float(v), 2) for c, v in zip(classes, s, strict=True)},
            }
            for s in scores
        ]
        return {"model": "fraud", "predictions": rows}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error", access_log=False)


if __name__ == "__main__":
    main()
