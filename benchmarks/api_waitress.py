"""The API's app on waitress in one process (how ``reconciler api`` served it before it moved
to granian), for figure 5's same-run comparison of WSGI servers.

Run: python -m benchmarks.api_waitress DESIRED DATA PORT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from reconciler.api.app import create_app
from reconciler.api.server import ApiServer
from reconciler.core.config import Config

if __name__ == "__main__":
    desired, data, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    config = Config(desired_dir=desired, data_dir=data, listen_host="127.0.0.1", listen_port=port)
    server = ApiServer(create_app(config, token=None), config)
    server.start()
    while True:
        time.sleep(3600)
