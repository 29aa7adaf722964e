"""/openapi.json is generated from the routes and the pydantic models of service.schemas: it is
valid OpenAPI 3.1, lists every route and method (and nothing else), its request schemas are the
models the routes validate with, and what it says holds when requests are sent. The property
checks read the served document, not the models: each example is accepted, a missing required
field, a value of a type the schema does not admit, or one just past a documented bound is a 400
naming the field (and a value at the bound passes the field's check), unknown fields do what
additionalProperties says, and the answers have the documented shapes. They run under the
default settings and under small ones, since bounds that are settings are written as served."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from pydantic import ValidationError

from service.openapi import REF, SchemaGenerator
from service.schemas import AdapterPage, AdapterRequest, ChatCompletionRequest, CompletionRequest

BODIES = {
    ("/v1/adapters", "post"): AdapterRequest,
    ("/v1/completions", "post"): CompletionRequest,
    ("/v1/chat/completions", "post"): ChatCompletionRequest,
}
SMALL = {  # settings that bound request fields, all changed
    "MAX_TOKENS": 100,
    "DEFAULT_MAX_TOKENS": 10,
    "MAX_PROMPTS": 4,
    "MAX_DESCRIPTIONS": 3,
    "MAX_DESCRIPTION_CHARS": 50,
    "MAX_PAGE_SIZE": 10,
    "PAGE_SIZE": 5,
}
SAMPLES = {"string": "x", "integer": 7, "number": 0.5, "boolean": True, "array": [], "object": {}}
SAMPLES["null"] = None


@pytest.fixture(params=["defaults", "small settings"])
def app(request, make_app):
    return make_app() if request.param == "defaults" else make_app(**SMALL)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def spec(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _variants(schema: dict, spec: dict) -> list[dict]:
    """The alternatives of a property's schema (through $ref and anyOf / oneOf)."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema or "oneOf" in schema:
        return [
            v for part in schema.get("anyOf", schema.get("oneOf")) for v in _variants(part, spec)
        ]
    return [schema]


def _admits(schema: dict, spec: dict, kind: str) -> bool:
    """Whether a JSON value of type ``kind`` can pass the schema's type (an integer is a number)."""
    for variant in _variants(schema, spec):
        types = variant.get("type", list(SAMPLES))
        types = {types} if isinstance(types, str) else set(types)
        if kind in types or (kind == "integer" and "number" in types):
            return True
    return False


def _body_schema(spec: dict, path: str, method: str) -> dict:
    return _resolve(
        spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"], spec
    )


def _example_with(schema: dict, name: str) -> dict:
    """A documented example, the one that sends ``name`` if one does."""
    examples = schema["examples"]
    return dict(next((e for e in examples if name in e), examples[0]))


def _refused(response, name: str | None, where: str) -> dict:
    assert response.status_code == 400, (where, response.status_code, response.data[:300])
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"}, where
    if name is not None:
        assert error["param"] is not None and re.match(rf"{name}\b", error["param"]), (where, error)
    return error


def _closed(spec: dict) -> dict:
    """The document with every object schema closed to undocumented keys, to check answers."""
    closed = copy.deepcopy(spec)

    def close(node):
        if isinstance(node, dict):
            if "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(closed["components"]["schemas"])
    return closed


def _conforms(instance, schema: dict, spec: dict) -> None:
    jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(instance)


# --- the document ----------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(spec):
    validate_openapi(spec)
    assert spec["openapi"] == "3.1.0"


def test_every_route_and_method_is_documented_and_nothing_else(app, spec):
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(re.findall(r"{(\w+)}", path)), (path, method)
            # /v1 needs the API key when one is set; the page, health and metrics never do
            assert ("401" in op["responses"]) == path.startswith("/v1"), (path, method)
            assert (op.get("security") == [{}]) == (not path.startswith("/v1")), (path, method)


def test_request_schemas_are_the_models(app, spec):
    components = spec["components"]["schemas"]
    for (path, method), model in BODIES.items():
        body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": REF.format(model=model.__name__)}
        own = model.model_json_schema(ref_template=REF, schema_generator=SchemaGenerator)
        for name, schema in {**own.pop("$defs", {}), model.__name__: own}.items():
            assert _settings_as_served(schema, app.config) == components[name], name
    page = AdapterPage.model_json_schema(schema_generator=SchemaGenerator)["properties"]
    parameters = spec["paths"]["/v1/adapters"]["get"]["parameters"]
    assert [p["name"] for p in parameters] == list(page)
    for parameter in parameters:
        expected = _settings_as_served(dict(page[parameter["name"]]), app.config)
        assert parameter["description"] == expected.pop("description")
        assert parameter["schema"] == expected and parameter["in"] == "query"


def _settings_as_served(schema, config):
    """The model's schema with the bounds that are settings at the app's values."""
    schema = copy.deepcopy(schema)

    def fill(node):
        if isinstance(node, dict):
            for keyword, name in node.get("x-setting", {}).items():
                node[keyword] = config[name]
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(schema)
    return schema


def test_settings_are_written_as_served(make_app):
    spec = make_app(**SMALL).test_client().get("/openapi.json").json
    props = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["max_tokens"]["anyOf"][0]["maximum"] == 100
    assert props["max_tokens"]["default"] == 10
    assert props["prompt"]["anyOf"][1]["maxItems"] == 4 and props["n"]["anyOf"][0]["maximum"] == 4
    adapters = spec["components"]["schemas"]["AdapterRequest"]["properties"]
    assert adapters["descriptions"]["maxItems"] == 3 and adapters["description"]["maxLength"] == 50
    limit = spec["paths"]["/v1/adapters"]["get"]["parameters"][0]["schema"]
    assert limit["maximum"] == 10 and limit["default"] == 5


# --- what it says holds ----------------------------------------------------------------------------


def test_examples_are_accepted(client, spec):
    for path, method in BODIES:
        schema = _body_schema(spec, path, method)
        assert schema["examples"], path
        for example in schema["examples"]:
            _conforms(
                example,
                spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"],
                spec,
            )
            response = client.post(path, json=example)
            assert response.status_code in (200, 201), (path, example, response.data[:300])


def test_missing_required_fields_are_refused(client, spec):
    for path, method in BODIES:
        schema = _body_schema(spec, path, method)
        example = schema["examples"][0]
        for name in schema.get("required", []):
            body = {k: v for k, v in example.items() if k != name}
            _refused(client.post(path, json=body), name, f"{path} without {name}")
        # one of several: a body with none of them
        for keyword in ("anyOf", "oneOf"):
            names = {n for alternative in schema.get(keyword, []) for n in alternative["required"]}
            if names:
                body = {k: v for k, v in example.items() if k not in names}
                _refused(client.post(path, json=body), None, f"{path} without any of {names}")


def test_unknown_fields_do_what_additional_properties_says(client, spec):
    for path, method in BODIES:
        schema = _body_schema(spec, path, method)
        example = schema["examples"][0]
        response = client.post(path, json={**example, "x_unknown": 1})
        if schema["additionalProperties"] is False:
            error = _refused(response, "x_unknown", path)
            assert "unknown field" in error["message"]
        else:
            assert schema["additionalProperties"] is True
            plain = client.post(path, json=example)
            assert response.status_code == plain.status_code == 200, path
            assert response.json["choices"] == plain.json["choices"], (
                "an ignored field changed nothing"
            )


def test_values_of_types_the_schema_does_not_admit_are_refused(client, spec):
    checked = 0
    for path, method in BODIES:
        schema = _body_schema(spec, path, method)
        for name, prop in schema["properties"].items():
            for kind, sample in SAMPLES.items():
                if _admits(prop, spec, kind):
                    continue
                body = {**_example_with(schema, name), name: sample}
                _refused(client.post(path, json=body), name, f"{path} {name}={sample!r}")
                checked += 1
    assert checked > 100, checked


def _just_past(variant: dict, item) -> list:
    """Values just past each bound of one schema variant (``item``: an element for arrays)."""
    values = []
    if "maximum" in variant:
        values.append(variant["maximum"] + (1 if variant["type"] == "integer" else 0.5))
    if "minimum" in variant:
        values.append(variant["minimum"] - (1 if variant["type"] == "integer" else 0.5))
    if "exclusiveMinimum" in variant:
        values.append(variant["exclusiveMinimum"])
    if "maxLength" in variant:
        values.append("a" * (variant["maxLength"] + 1))
    if variant.get("minLength", 0) > 0:
        values.append("a" * (variant["minLength"] - 1))
    if "maxItems" in variant:
        values.append([item] * (variant["maxItems"] + 1))
    if variant.get("minItems", 0) > 0:
        values.append([item] * (variant["minItems"] - 1))
    return values


def _item(variant: dict, spec: dict):
    """A valid-looking element for an array field no example sends: an object with its required
    string fields, or a string."""
    items = _resolve(variant.get("items", {}), spec)
    return {k: "a" for k in items.get("required", [])} if items.get("type") == "object" else "a"


def _at_bounds(variant: dict, item) -> list:
    values = [variant[k] for k in ("maximum", "minimum") if k in variant]
    values += ["a" * variant[k] for k in ("maxLength", "minLength") if k in variant]
    values += [[item] * variant[k] for k in ("maxItems", "minItems") if k in variant]
    return values


def test_bounds_are_where_the_document_says(app, client, spec):
    """Just past a documented bound: 400 naming the field; at it: the field passes."""
    checked = 0
    for (path, method), model in BODIES.items():
        schema = _body_schema(spec, path, method)
        for name, prop in schema["properties"].items():
            example = _example_with(schema, name)
            for variant in _variants(prop, spec):
                sent = example.get(name)
                item = sent[0] if isinstance(sent, list) and sent else _item(variant, spec)
                for value in _just_past(variant, item):
                    body = {**example, name: value}
                    _refused(client.post(path, json=body), name, f"{path} {name}={value!r:.60}")
                    checked += 1
                for value in _at_bounds(variant, item):
                    try:
                        model.model_validate(
                            {**example, name: value}, context={"config": app.config}
                        )
                    except ValidationError as err:  # others' checks may fail, not this field's
                        at_field = [e for e in err.errors() if e["loc"][:1] == (name,)]
                        assert not at_field, (path, name, value, at_field)
                    checked += 1
    assert checked > 30, checked


def _shape_checker(spec: dict):
    """``check(response, path, method)``: the answer conforms to the documented reply of its
    status, with every object closed to undocumented keys; returns its JSON."""
    closed = _closed(spec)

    def check(response, path: str, method: str):
        op = spec["paths"][path][method]
        reply = op["responses"][str(response.status_code)]
        if "$ref" in reply:
            reply = spec["components"]["responses"][reply["$ref"].rsplit("/", 1)[1]]
        _conforms(response.json, reply["content"]["application/json"]["schema"], closed)
        return response.json

    return check


def test_answers_have_the_documented_shapes(client, spec):
    check = _shape_checker(spec)

    one = check(
        client.post("/v1/adapters", json={"description": "Translate."}), "/v1/adapters", "post"
    )
    check(client.post("/v1/adapters", json={"description": "Translate."}), "/v1/adapters", "post")
    check(client.post("/v1/adapters", json={"descriptions": ["a", "b"]}), "/v1/adapters", "post")
    check(client.get("/v1/adapters?limit=2"), "/v1/adapters", "get")
    check(client.get(f"/v1/adapters/{one['id']}"), "/v1/adapters/{adapter_id}", "get")
    check(client.get(f"/v1/adapters/{'0' * 64}"), "/v1/adapters/{adapter_id}", "get")  # 404
    check(client.get("/v1/models"), "/v1/models", "get")
    body = {"model": one["id"], "prompt": ["a", "b"], "n": 2, "max_tokens": 3, "logprobs": 2}
    out = check(client.post("/v1/completions", json=body), "/v1/completions", "post")
    assert out["choices"][0]["logprobs"]["tokens"]
    chat = {
        "adapter_description": "Answer politely.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 3,
        "logprobs": True,
        "top_logprobs": 2,
    }
    out = check(client.post("/v1/chat/completions", json=chat), "/v1/chat/completions", "post")
    assert out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    check(
        client.post("/v1/chat/completions", json={"model": "base"}), "/v1/chat/completions", "post"
    )
    check(client.delete(f"/v1/adapters/{one['id']}"), "/v1/adapters/{adapter_id}", "delete")
    check(client.get("/healthz"), "/healthz", "get")


def test_bottleneck_answers_have_the_documented_shapes(make_app, bottleneck_checkpoint_dir):
    """A bottleneck checkpoint's answers: adapters with bottleneck settings and the adapterhub
    format, health with the bottleneck settings, each matching the document exactly."""
    from service.engine import Engine

    client = make_app(engine=Engine.load(bottleneck_checkpoint_dir)).test_client()
    spec = client.get("/openapi.json").json
    check = _shape_checker(spec)
    one = check(
        client.post("/v1/adapters", json={"description": "Translate."}), "/v1/adapters", "post"
    )
    assert (one["adapter_kind"], one["format"]) == ("bottleneck", "adapterhub")
    check(client.post("/v1/adapters", json={"descriptions": ["a", "b"]}), "/v1/adapters", "post")
    check(client.get("/v1/adapters"), "/v1/adapters", "get")
    check(client.get(f"/v1/adapters/{one['id']}"), "/v1/adapters/{adapter_id}", "get")
    body = {"model": one["id"], "prompt": "a", "max_tokens": 3, "logprobs": 1}
    check(client.post("/v1/completions", json=body), "/v1/completions", "post")
    health = check(client.get("/healthz"), "/healthz", "get")
    assert health["bottleneck"]["placement"] == "houlsby" and "lora" not in health
    # a bottleneck adapter's metadata does not pass as a LoRA adapter's, nor the other way round
    schemas = {"components": spec["components"]}
    with pytest.raises(jsonschema.ValidationError):
        _conforms(one, {"$ref": REF.format(model="LoraAdapter")}, schemas)
