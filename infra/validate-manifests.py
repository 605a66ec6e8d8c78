"""Validates Kubernetes manifests offline, as strictly as `kubectl apply` would.

Documents of KubeRay's kinds (`ray.io/*`) are checked against the CRD schemas in
`infra/k8s/schemas/`; every other kind against the Kubernetes API's own schema for it
(the `kubernetes-validate` package). Unknown fields are errors, as with the API server's
strict field validation, so a typo in a field name cannot pass.

    python infra/validate-manifests.py FILE...    # one line per problem; exit 1 on any
"""

import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).parent / "k8s" / "schemas"
# The oldest Kubernetes minor version the README's clusters run.
KUBERNETES_VERSION = "1.30"


def closed(schema):
    """Refuses unknown fields wherever the schema lists an object's fields, unless it keeps
    unknown ones (`x-kubernetes-preserve-unknown-fields`) or allows a map."""
    if isinstance(schema, dict):
        lists_fields = "properties" in schema
        keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields")
        if lists_fields and not keeps_unknown and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            closed(value)
    elif isinstance(schema, list):
        for item in schema:
            closed(item)
    return schema


def crd_validators():
    """(apiVersion, kind) -> a validator for every version of every CRD in SCHEMAS."""
    validators = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = closed(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def problems_of(document, validators):
    """The problems of one manifest document, as text."""
    api_version, kind = document.get("apiVersion"), document.get("kind")
    validator = validators.get((api_version, kind))
    if validator is not None:
        return [
            f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=str)
        ]
    if api_version and api_version.split("/")[0].endswith(".io"):
        return [f"no schema for {api_version} {kind} in {SCHEMAS}"]
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [str(error)]
    return []


def main(paths):
    validators = crd_validators()
    failed = False
    for path in paths:
        for index, document in enumerate(yaml.safe_load_all(pathlib.Path(path).read_text())):
            if document is None:
                continue
            name = document.get("metadata", {}).get("name", f"document {index}")
            for problem in problems_of(document, validators):
                print(f"{path}: {document.get('kind')} {name}: {problem}")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
