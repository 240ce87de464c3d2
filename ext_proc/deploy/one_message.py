"""One ext_proc message per LLM request: the Envoy pieces (``archway.ext_proc_messages: one``).

The routing filter skips the request headers and sends only the buffered body,
with the headers the decision reads as ``request_attributes``. Envoy drops
header mutations that answer such a body (it kept no header map for the
filter), so the server answers with the body mutation and the header changes as
dynamic metadata (``DECISION_NAMESPACE``), and a Lua filter after the routing
filter applies them:

1. it strips every client-sent ``x-archway-*`` header at once (the client's
   ``x-archway-api-key`` once the body message, which carries it as an
   attribute, has left), so none stays on the request whatever the server answers;
2. it waits for the whole body (``body()``), which also holds the headers back
   from the router until the decision exists;
3. applies the decision (remove prefixes, remove, set: ``:path``, credentials,
   the cluster header, the decision headers) and the final body's
   ``content-length`` (Envoy dropped the client's), blanks the
   metadata that held them so no log can print a credential, and clears the
   route cache so the router matches on the cluster header;
4. with no decision and no body (a bodyless POST, for which Envoy opens no
   ext_proc stream), answers the ``empty_body`` 400 in the client's API shape.

Requests other than POST (``GET /v1/models``, and 404/405 answers) take a route
whose per-route override sends their headers, with Lua off: the headers phase
answers them as in two-message mode.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.access.policy import ARCHWAY_KEY_HEADER
from ext_proc.apis import ErrorShape, path_prefixes
from ext_proc.config import Config
from ext_proc.deploy.ext_proc_filter import ROUTING_FILTER, T_EXT_PROC_PER_ROUTE
from ext_proc.errors import error_payload
from ext_proc.headers import BODY_PHASE_HEADERS, INTERNAL_PREFIX
from ext_proc.routing.catalog import CATALOG
from ext_proc.routing.endpoints import empty_body
from ext_proc.server import modes
from ext_proc.server.messages import (
    DECISION_NAMESPACE,
    REQUEST_LINE_ATTRIBUTES,
    header_attribute,
)

__all__ = [
    "LUA_FILTER",
    "attribute_header_names",
    "lua_filter",
    "lua_off",
    "lua_script",
    "request_attributes",
    "two_message_overrides",
]

LUA_FILTER = "envoy.filters.http.lua"
_T_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_T_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"


def attribute_header_names(config: Config) -> tuple[str, ...]:
    """Every request header the routing decision may read under ``config``.

    The config's own (the session tenant header, rate-limit selectors) are part
    of the bootstrap, so a reload that changes them asks for a restart.
    """
    names: list[str] = list(BODY_PHASE_HEADERS)
    # A client's own copy of a header the catalog pins wins over the pin.
    names.extend(name for spec in CATALOG.values() for name, _ in spec.static_headers)
    access = config.access
    if access.tenant_header:
        names.append(access.tenant_header.lower())
    names.extend(rule.header for rule in access.ratelimits)
    return tuple(dict.fromkeys(names))


def request_attributes(config: Config) -> list[str]:
    """The routing filter's ``request_attributes`` in one-message mode."""
    return [*REQUEST_LINE_ATTRIBUTES, *map(header_attribute, attribute_header_names(config))]


def two_message_overrides() -> dict[str, Any]:
    """``typed_per_filter_config`` of the route for requests other than POST: the
    routing filter sends their headers (the headers phase answers them), Lua is off."""
    return {
        ROUTING_FILTER: {
            "@type": T_EXT_PROC_PER_ROUTE,
            "overrides": {"processing_mode": modes.ROUTING.envoy()},
        },
        **lua_off(),
    }


def lua_off() -> dict[str, Any]:
    """``typed_per_filter_config`` that turns the Lua filter off on a route."""
    return {LUA_FILTER: {"@type": _T_LUA_PER_ROUTE, "disabled": True}}


def lua_filter() -> dict[str, Any]:
    return {
        "name": LUA_FILTER,
        "typed_config": {"@type": _T_LUA, "default_source_code": {"inline_string": lua_script()}},
    }


def _lua_string(text: str) -> str:
    # JSON string escapes are valid Lua escapes for the ASCII that json.dumps writes.
    return json.dumps(text)


def _lua_list(items: tuple[str, ...]) -> str:
    return "{" + ", ".join(map(_lua_string, items)) + "}"


def lua_script() -> str:
    """The Lua filter's source; the error bodies come from ``ext_proc.errors``."""
    replacements = {
        "@NAMESPACE@": _lua_string(DECISION_NAMESPACE),
        "@INTERNAL_PREFIX@": _lua_string(INTERNAL_PREFIX),
        "@CLIENT_KEY_HEADER@": _lua_string(ARCHWAY_KEY_HEADER),
        "@ANTHROPIC_PATHS@": _lua_list(path_prefixes(ErrorShape.ANTHROPIC)),
        "@EMPTY_BODY_ANTHROPIC@": _lua_string(
            json.dumps(error_payload(ErrorShape.ANTHROPIC, empty_body()))
        ),
        "@EMPTY_BODY_OPENAI@": _lua_string(
            json.dumps(error_payload(ErrorShape.OPENAI, empty_body()))
        ),
    }
    script = _LUA
    for placeholder, value in replacements.items():
        script = script.replace(placeholder, value)
    return script


_LUA = """\
-- Archway, one-message mode: applies the routing decision that the ext_proc
-- server left in dynamic metadata (rendered by ext_proc/deploy/one_message.py).
local NAMESPACE = @NAMESPACE@
local INTERNAL_PREFIX = @INTERNAL_PREFIX@
local CLIENT_KEY_HEADER = @CLIENT_KEY_HEADER@
local ANTHROPIC_PATHS = @ANTHROPIC_PATHS@
local EMPTY_BODY_ANTHROPIC = @EMPTY_BODY_ANTHROPIC@
local EMPTY_BODY_OPENAI = @EMPTY_BODY_OPENAI@

local function starts_with(text, prefix)
  return string.sub(text, 1, #prefix) == prefix
end

local function matching(headers, prefix)
  local names = {}
  for name, _ in pairs(headers) do
    if starts_with(name, prefix) then
      names[#names + 1] = name
    end
  end
  return names
end

local function empty_body(handle, path)
  local body = EMPTY_BODY_OPENAI
  for _, prefix in ipairs(ANTHROPIC_PATHS) do
    if starts_with(path, prefix) then
      body = EMPTY_BODY_ANTHROPIC
    end
  end
  handle:respond({[":status"] = "400", ["content-type"] = "application/json"}, body)
end

function envoy_on_request(handle)
  -- Before the body: whatever the server answers (an error too), no forged
  -- decision header stays on the request for the access log. The client's key
  -- stays until the body message, which carries it to the server as an attribute.
  local headers = handle:headers()
  for _, name in ipairs(matching(headers, INTERNAL_PREFIX)) do
    if name ~= CLIENT_KEY_HEADER then
      headers:remove(name)
    end
  end
  -- Waiting for the whole body is what keeps the router from starting before
  -- the ext_proc server's answer is applied.
  local body = handle:body()
  -- A header map handle does not outlive a yield.
  headers = handle:headers()
  headers:remove(CLIENT_KEY_HEADER)
  local metadata = handle:streamInfo():dynamicMetadata()
  local decision = metadata:get(NAMESPACE)
  if decision == nil then
    -- No decision and no body: Envoy opened no ext_proc stream. With a body,
    -- the server failed open (failure_mode_allow); no cluster header is set.
    if body == nil or body:length() == 0 then
      empty_body(handle, headers:get(":path") or "/")
    end
    return
  end
  for _, prefix in ipairs(decision["remove_prefixes"] or {}) do
    for _, name in ipairs(matching(headers, prefix)) do
      headers:remove(name)
    end
  end
  for _, name in ipairs(decision["remove"] or {}) do
    headers:remove(name)
  end
  for name, value in pairs(decision["set"] or {}) do
    headers:replace(name, value)
  end
  -- Envoy's ext_proc filter drops content-length when it skips the headers (the
  -- body may change); the body here is the final one, rewritten or not.
  if body ~= nil then
    headers:replace("content-length", tostring(body:length()))
  end
  -- The set headers hold the provider's credentials: not for the access log.
  metadata:set(NAMESPACE, "set", "")
  handle:clearRouteCache()
end
"""
