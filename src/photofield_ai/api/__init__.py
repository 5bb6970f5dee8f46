"""HTTP only: routes, request limits, errors as JSON, the OpenAPI document."""
