"""A scenario: its schema (strict YAML, overrides), the registry that turns names into
objects, resolution, preflight checks, and the builder that derives what the engine runs."""
