"""Pure Istio behaviours, one per module: no I/O, no sleeping, no I/O libraries.

Each module owns the compiled (frozen, native-unit) settings it reads and the verbs that
apply them. ``meshlib._config`` builds these settings from Istio YAML; ``meshlib._engine``
calls the verbs in the order of the outbound and inbound flows.
"""
