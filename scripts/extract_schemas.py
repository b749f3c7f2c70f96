#!/usr/bin/env python3
"""Builds the example contracts' JSON Schemas (2020-12) from the trimmed OpenAPI fragments in
../shared/specs. Local $refs are inlined, OpenAPI 3.0 `nullable` becomes a "null" type, and
annotations (descriptions, examples) are dropped so the files stay readable.

    python3 scripts/extract_schemas.py ../shared/specs policies/schemas
"""
import json
import os
import sys

DROP = {"description", "example", "examples", "externalDocs", "title", "deprecated", "readOnly", "writeOnly"}


def resolve(doc, node):
    if isinstance(node, list):
        return [resolve(doc, n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return resolve(doc, target)
    out = {}
    for k, v in node.items():
        if k in DROP or k.startswith("x-"):
            continue
        if k == "properties":
            out[k] = {name: resolve(doc, sub) for name, sub in v.items()}
        else:
            out[k] = resolve(doc, v)
    if out.pop("nullable", False):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def body_schema(doc, op):
    rb = op.get("requestBody")
    if rb is None:
        return None
    rb = resolve(doc, rb)
    for ctype in ("application/json", "application/x-www-form-urlencoded"):
        if ctype in rb.get("content", {}):
            return resolve(doc, rb["content"][ctype]["schema"])
    return None


def query_schema(doc, op):
    props = {}
    required = []
    for p in op.get("parameters", []):
        p = resolve(doc, p)
        if p.get("in") != "query":
            continue
        props[p["name"]] = p.get("schema", {})
        if p.get("required"):
            required.append(p["name"])
    if not props:
        return None
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


# Parameters the example schemas leave out, whatever the spec says. Stripe's `expand` returns
# whole related objects in an answer (`expand[]=customer` on a payment intent answers with the
# customer), past the fields another tool hides (`customers.retrieve` hides phone and address):
# a response contract follows the data only if no tool can fetch it another way.
OMIT = {"expand"}

# (spec file, method, path, output name)
OPERATIONS = [
    ("stripe/openapi-fragment.json", "post", "/v1/customers", "stripe/customers.create.json"),
    ("stripe/openapi-fragment.json", "get", "/v1/customers/{customer}", "stripe/customers.retrieve.query.json"),
    ("stripe/openapi-fragment.json", "post", "/v1/payment_intents", "stripe/payment_intents.create.json"),
    ("stripe/openapi-fragment.json", "post", "/v1/refunds", "stripe/refunds.create.json"),
    ("github/openapi-fragment.json", "post", "/repos/{owner}/{repo}/issues", "github/issues.create.json"),
    ("github/openapi-fragment.json", "patch", "/repos/{owner}/{repo}/issues/{issue_number}", "github/issues.update.json"),
    ("sendgrid/openapi-fragment.json", "post", "/v3/mail/send", "sendgrid/mail.send.json"),
]


def main():
    specs, out_dir = sys.argv[1], sys.argv[2]
    for spec, method, path, name in OPERATIONS:
        doc = json.load(open(os.path.join(specs, spec)))
        op = doc["paths"][path][method]
        schema = query_schema(doc, op) if name.endswith(".query.json") else body_schema(doc, op)
        if schema is None:
            sys.exit(f"{spec} {method} {path}: no schema")
        if spec.startswith("stripe/"):
            for name_ in OMIT:
                schema.get("properties", {}).pop(name_, None)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        dest = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            json.dump(schema, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{dest}: {method.upper()} {path}")


if __name__ == "__main__":
    main()
