"""The config plane: Istio YAML in, an immutable MeshSnapshot out (pydantic-core at the edge)."""
