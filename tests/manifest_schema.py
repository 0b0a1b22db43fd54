"""The JSON Schema of weights_manifest.json and the revision patterns, which only the tests check."""

from __future__ import annotations

import re
from typing import Any

from upscale.models import FAMILIES

SHA256 = r"^[0-9a-f]{64}$"
# A pinned revision is a full 40-hex commit; anything else must be a branch or tag name, never a short
# commit id (the Hub does not resolve those).
FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHORT_COMMIT = re.compile(r"^[0-9a-f]{7,39}$")

_SOURCE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "pattern": "^https?://"}, "note": {"type": "string"}},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["repo_id", "filename", "revision"],
            "properties": {
                "repo_id": {"type": "string", "pattern": r"^[\w.-]+/[\w.-]+$"},
                "repo_type": {"enum": ["model", "dataset", "space"]},
                "filename": {"type": "string", "minLength": 1},
                "revision": {"type": "string", "minLength": 1},
                "note": {"type": "string"},
            },
            "additionalProperties": False,
        },
    ]
}
_OVERRIDES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": ["number", "string", "boolean", "null"]},
}

# JSON Schema (draft 2020-12) of weights_manifest.json. The family names come from the registry.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "models"],
    "properties": {
        "schema": {"const": 2},
        "models": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[a-z0-9][a-z0-9-]*$"},
            "additionalProperties": {
                "type": "object",
                "required": ["family", "title", "paper", "license", "files"],
                "properties": {
                    "family": {"enum": list(FAMILIES)},
                    "title": {"type": "string"},
                    "paper": {"type": "string"},
                    "license": {"type": "string"},
                    "license_note": {"type": "string"},
                    "default_scale": {"type": "integer"},
                    "overrides": _OVERRIDES_SCHEMA,
                    "note": {"type": "string"},
                    "files": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"pattern": "^[1-9][0-9]*$"},
                        "additionalProperties": {
                            "type": "object",
                            "required": ["filename", "sources"],
                            "properties": {
                                "filename": {"type": "string", "pattern": r"^[^/\\]+$"},
                                "sha256": {"type": "string", "pattern": SHA256},
                                "size": {"type": "integer", "minimum": 1},
                                "parameters": {"type": "integer", "minimum": 1},
                                "sources": {"type": "array", "items": _SOURCE_SCHEMA},
                                "overrides": _OVERRIDES_SCHEMA,
                                "note": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
