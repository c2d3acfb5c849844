"""gRPC through the mesh (extra ``grpc``): mesh channels and server interceptors.

``mesh.grpc_channel("ratings:9090")`` is a ``grpc.Channel`` whose every call runs the outbound
flow (routing, per-call load balancing, retries, deadlines, limits, outlier detection, faults,
mTLS); ``mesh.grpc_server_interceptor()`` puts each RPC behind PeerAuthentication and
AuthorizationPolicy. The grpc.aio twins live in :mod:`meshlib.grpc.aio`.
"""

from __future__ import annotations

from meshlib.grpc._channel import MeshChannel
from meshlib.grpc._common import MeshRpcError
from meshlib.grpc._server import MeshServerInterceptor, peer_of

__all__ = ["MeshChannel", "MeshRpcError", "MeshServerInterceptor", "peer_of"]
