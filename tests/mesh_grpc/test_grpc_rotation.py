"""Client rotation: a new SVID generation gets new per-endpoint channels; the old channel is
closed only once its calls have ended (closing a grpc channel cancels its calls)."""

from __future__ import annotations

import json
import time

import pytest
from grpc_upstreams import GET, TARGET, Upstream, make_runtime, service_entry

from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib.grpc import MeshChannel
from meshlib.identity import LocalCA

pytestmark = pytest.mark.extras
WAIT = 10.0


def test_rotation_swaps_channels_after_their_calls_end(
    upstreams: dict[str, Upstream], ca: LocalCA
) -> None:
    source = StaticSource(ca.issue("default", "productpage"))
    identity = RotatingIdentity(source)
    runtime = make_runtime(service_entry([(upstreams["v1"].port, {})]), identity)
    try:
        with MeshChannel(runtime, TARGET) as channel:
            get = channel.unary_unary(GET)
            assert json.loads(get(b"{}", timeout=WAIT))["name"] == "v1"
            assert channel.open_channels == 1
            slow = get.future(json.dumps({"delay": 0.5}).encode(), timeout=WAIT)
            for _ in range(500):  # bounded: until the server holds the slow call
                if upstreams["v1"].state.requests == 2:
                    break
                time.sleep(0.01)
            source.set(ca.issue("default", "productpage"))
            assert channel.open_channels == 0  # retired, still open for the slow call
            assert json.loads(get(b"{}", timeout=WAIT))["name"] == "v1"
            assert channel.open_channels == 1
            # The old channel was not closed under the slow call: it succeeds.
            assert json.loads(slow.result(WAIT))["name"] == "v1"
    finally:
        identity.close()
