"""Identity and mTLS internals: certificates, sources, TLS contexts, rotation, serving, gRPC.

The public names live in :mod:`meshlib.identity`; the Mesh facade uses ``RotatingIdentity``,
the httpcore backends, ``serving`` and ``grpc_credentials`` from here.
"""
