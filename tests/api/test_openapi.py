"""The OpenAPI document lists every endpoint with its tag, response model, errors and the bearer scheme."""

from __future__ import annotations

from fastapi.testclient import TestClient

ENDPOINTS = {
    ("get", "/healthz"),
    ("get", "/v1/whoami"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{name}/versions"),
    ("post", "/v1/models/{name}/versions"),
    ("get", "/v1/models/{name}/versions/{version}"),
    ("get", "/v1/models/{name}/versions/{version}/bom"),
    ("get", "/v1/models/{name}/aliases/{alias}"),
    ("get", "/v1/resolve/{ref}"),
    ("post", "/v1/models/{name}/versions/{version}/scan"),
    ("post", "/v1/models/{name}/versions/{version}/approve"),
    ("post", "/v1/models/{name}/versions/{version}/deploy"),
    ("post", "/v1/models/{name}/versions/{version}/quarantine"),
    ("post", "/v1/models/{name}/versions/{version}/release"),
    ("post", "/v1/models/{name}/versions/{version}/retire"),
    ("post", "/v1/models/{name}/aliases/{alias}/rollback"),
    ("get", "/v1/users"),
    ("post", "/v1/users"),
    ("put", "/v1/users/{username}/roles"),
    ("post", "/v1/users/{username}/disable"),
    ("post", "/v1/users/{username}/tokens"),
    ("get", "/v1/tokens"),
    ("delete", "/v1/tokens/{token_id}"),
    ("get", "/v1/audit"),
    ("get", "/v1/audit/checkpoint"),
    ("post", "/v1/audit/checkpoint"),
    ("get", "/v1/models/{name}/versions/{version}/attachments/{attachment_id}"),
}


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "mlwarden registry"
    listed = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert listed == ENDPOINTS
    tags = {t["name"] for t in spec["tags"]}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["tags"], (method, path)
            assert set(operation["tags"]) <= tags, (method, path)
            assert operation.get("summary"), (method, path)
            if path != "/healthz":
                assert operation["security"] == [{"token": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


def test_responses_declare_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    version = spec["paths"]["/v1/models/{name}/versions/{version}"]["get"]["responses"]
    assert version["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VersionOut"}
    assert version["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    refused = spec["paths"]["/v1/models/{name}/versions/{version}/approve"]["post"]["responses"]["409"]
    assert refused["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    upload = spec["paths"]["/v1/models/{name}/versions"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["model"]
    assert set(form["properties"]) == {
        "model",
        "signature",
        "dataset_manifest",
        "training_record",
        "framework",
        "description",
    }
    assert "413" in upload["responses"]
    deploy = spec["components"]["schemas"]["DeployRequest"]
    assert deploy["required"] == ["alias"]
    assert deploy["additionalProperties"] is False


def test_interactive_docs_are_served(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    assert "/openapi.json" in docs.text
