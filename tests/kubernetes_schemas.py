"""Minimal JSON schemas of the Gateway API and Envoy Gateway kinds that Archway renders.

No PyPI package ships these CRDs' schemas and tests fetch nothing, so these are
written by hand from the published CRDs (Gateway API v1.4, Envoy Gateway v1.6):
the field names, the required fields, the enums and the patterns of every field
Archway sets. Objects refuse unknown fields, so a misspelt field fails here as
the API server would reject it. What they cannot check: CEL rules beyond the
few restated below, and anything a controller decides at run time.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 253}
SUBDOMAIN: Schema = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _SUBDOMAIN}
LABEL: Schema = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": _LABEL}
SECTION_NAME: Schema = SUBDOMAIN
GROUP: Schema = {"type": "string", "maxLength": 253, "pattern": r"^$|" + _SUBDOMAIN}
KIND: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 63,
    "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
}
PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
DURATION: Schema = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
PRECISE_HOSTNAME: Schema = SUBDOMAIN
HEADER_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$",
}
QUANTITY: Schema = {
    "anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^[1-9]+[0-9]*([EPTGMK]i|[EPTGMk])?$"},
    ]
}


def obj(required: list[str], **properties: Schema) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def array(items: Schema, *, min_items: int = 0, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items, "minItems": min_items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def resource(api_version: str, kind: str, spec: Schema, *, namespaced: bool = True) -> Schema:
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    if namespaced:
        metadata = obj(["name", "namespace"], name=SUBDOMAIN, namespace=LABEL, labels=strings)
    else:
        metadata = obj(["name"], name=SUBDOMAIN, labels=strings)
    return obj(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": api_version},
        kind={"const": kind},
        metadata=metadata,
        spec=spec,
    )


POLICY_TARGET = obj(["group", "kind", "name"], group=GROUP, kind=KIND, name=NAME)
POLICY_TARGET_WITH_SECTION = obj(
    ["group", "kind", "name"], group=GROUP, kind=KIND, name=NAME, sectionName=SECTION_NAME
)
PARENT_REF = obj(
    ["name"],
    group=GROUP,
    kind=KIND,
    namespace=LABEL,
    name=NAME,
    sectionName=SECTION_NAME,
    port=PORT,
)
# Gateway API and Envoy Gateway: a reference to a core Service must name its port.
_SERVICE_NEEDS_PORT: Schema = {
    "if": {
        "properties": {"group": {"const": ""}, "kind": {"const": "Service"}},
        "required": ["group", "kind"],
    },
    "then": {"required": ["port"]},
}
BACKEND_REF = obj(
    ["name"],
    group=GROUP,
    kind=KIND,
    name=NAME,
    namespace=LABEL,
    port=PORT,
    weight={"type": "integer", "minimum": 0, "maximum": 1000000},
) | {"allOf": [_SERVICE_NEEDS_PORT]}

HEADER = obj(["name", "value"], name=HEADER_NAME, value={"type": "string", "minLength": 1})
HEADER_MODIFIER = obj(
    [],
    set=array(HEADER, max_items=16),
    add=array(HEADER, max_items=16),
    remove=array(HEADER_NAME, max_items=16),
)
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "URLRewrite": "urlRewrite",
}
HTTP_ROUTE_FILTER = obj(
    ["type"],
    type=enum(
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        "ExtensionRef",
    ),
    requestHeaderModifier=HEADER_MODIFIER,
    responseHeaderModifier=HEADER_MODIFIER,
    urlRewrite=obj([], hostname=PRECISE_HOSTNAME),
) | {
    # The filter's type names the one field that configures it.
    "allOf": [
        {
            "if": {"properties": {"type": {"const": kind}}},
            "then": {"required": [field]},
        }
        for kind, field in _FILTER_FIELDS.items()
    ]
}
HTTP_ROUTE_MATCH = obj(
    [],
    path=obj(
        ["type", "value"],
        type=enum("Exact", "PathPrefix", "RegularExpression"),
        value={"type": "string", "maxLength": 1024, "pattern": "^/"},
    ),
    headers=array(
        obj(
            ["name", "value"],
            type=enum("Exact", "RegularExpression"),
            name=HEADER_NAME,
            value={"type": "string", "minLength": 1, "maxLength": 4096},
        ),
        max_items=16,
    ),
)
HTTP_ROUTE = resource(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    obj(
        ["parentRefs", "rules"],
        parentRefs=array(PARENT_REF, min_items=1, max_items=32),
        rules=array(
            obj(
                [],
                matches=array(HTTP_ROUTE_MATCH, max_items=64),
                filters=array(HTTP_ROUTE_FILTER, max_items=16),
                backendRefs=array(BACKEND_REF, max_items=16),
                timeouts=obj([], request=DURATION, backendRequest=DURATION),
            ),
            min_items=1,
            max_items=16,
        ),
    ),
)

GATEWAY_CLASS = resource(
    "gateway.networking.k8s.io/v1",
    "GatewayClass",
    obj(
        ["controllerName"],
        controllerName={
            "type": "string",
            "maxLength": 253,
            "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
            r"\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$",
        },
    ),
    namespaced=False,
)

GATEWAY = resource(
    "gateway.networking.k8s.io/v1",
    "Gateway",
    obj(
        ["gatewayClassName", "listeners"],
        gatewayClassName=NAME,
        listeners=array(
            obj(
                ["name", "port", "protocol"],
                name=SECTION_NAME,
                port=PORT,
                protocol=enum("HTTP", "HTTPS", "TLS", "TCP", "UDP"),
                allowedRoutes=obj(
                    [], namespaces=obj([], **{"from": enum("All", "Same", "Selector")})
                ),
            ),
            min_items=1,
            max_items=64,
        ),
    ),
)

_ENDPOINT_KINDS = ("fqdn", "ip", "unix")
BACKEND = resource(
    "gateway.envoyproxy.io/v1alpha1",
    "Backend",
    obj(
        ["endpoints"],
        endpoints=array(
            obj(
                [],
                fqdn=obj(
                    ["hostname", "port"],
                    hostname=SUBDOMAIN,
                    port={"type": "integer", "minimum": 0, "maximum": 65535},
                ),
                ip=obj(
                    ["address", "port"],
                    address={"type": "string", "minLength": 3, "maxLength": 45},
                    port={"type": "integer", "minimum": 0, "maximum": 65535},
                ),
                unix=obj(["path"], path={"type": "string"}),
            )
            # "one of fqdn, ip or unix must be specified", and only one.
            | {"oneOf": [{"required": [kind]} for kind in _ENDPOINT_KINDS]},
            min_items=1,
            max_items=64,
        ),
        type=enum("Endpoints", "DynamicResolver"),
    ),
)

BACKEND_TLS_POLICY = resource(
    "gateway.networking.k8s.io/v1",
    "BackendTLSPolicy",
    obj(
        ["targetRefs", "validation"],
        targetRefs=array(POLICY_TARGET_WITH_SECTION, min_items=1, max_items=16),
        validation=obj(
            ["hostname"],
            caCertificateRefs=array(
                obj(["group", "kind", "name"], group=GROUP, kind=KIND, name=NAME), max_items=8
            ),
            wellKnownCACertificates=enum("System"),
            hostname=PRECISE_HOSTNAME,
        )
        # Exactly one source of trust.
        | {
            "oneOf": [
                {"required": ["caCertificateRefs"]},
                {"required": ["wellKnownCACertificates"]},
            ]
        },
    ),
)

CLIENT_TRAFFIC_POLICY = resource(
    "gateway.envoyproxy.io/v1alpha1",
    "ClientTrafficPolicy",
    obj(
        ["targetRefs"],
        targetRefs=array(POLICY_TARGET_WITH_SECTION, min_items=1),
        connection=obj([], bufferLimit=QUANTITY),
    ),
)

_BODY_MODES = enum("Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed")
EXT_PROC = obj(
    ["backendRefs"],
    backendRefs=array(
        BACKEND_REF
        | {
            "properties": BACKEND_REF["properties"]
            | {"kind": enum("Service", "ServiceImport", "Backend")}
        },
        min_items=1,
        max_items=16,
    ),
    backendSettings=obj(
        [],
        healthCheck=obj(
            [],
            active=obj(
                ["type"],
                type=enum("HTTP", "TCP", "GRPC"),
                grpc=obj([], service={"type": "string"}),
                interval=DURATION,
                timeout=DURATION,
                unhealthyThreshold={"type": "integer", "minimum": 1},
                healthyThreshold={"type": "integer", "minimum": 1},
            )
            # "The grpc field can only be set if the Health Checker type is GRPC."
            | {"if": {"required": ["grpc"]}, "then": {"properties": {"type": {"const": "GRPC"}}}},
        ),
        connection=obj([], bufferLimit=QUANTITY),
    ),
    messageTimeout=DURATION,
    failOpen={"type": "boolean"},
    processingMode=obj(
        [],
        allowModeOverride={"type": "boolean"},
        request=obj([], body=_BODY_MODES),
        response=obj([], body=_BODY_MODES),
    ),
)

ENVOY_EXTENSION_POLICY = resource(
    "gateway.envoyproxy.io/v1alpha1",
    "EnvoyExtensionPolicy",
    obj(
        ["targetRefs"],
        targetRefs=array(POLICY_TARGET_WITH_SECTION, min_items=1),
        extProc=array(EXT_PROC, min_items=1, max_items=16),
    ),
)

SCHEMAS: dict[tuple[str, str], Schema] = {
    (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]): schema
    for schema in (
        GATEWAY_CLASS,
        GATEWAY,
        HTTP_ROUTE,
        BACKEND,
        BACKEND_TLS_POLICY,
        CLIENT_TRAFFIC_POLICY,
        ENVOY_EXTENSION_POLICY,
    )
}
"""By (apiVersion, kind): every kind outside Kubernetes' own that Archway renders."""
