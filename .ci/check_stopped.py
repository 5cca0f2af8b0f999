"""Fails if anything of `make up`'s platform is still alive, or one of its ports still held, after `make down`.

Run right after `make down` returns: `down` promises both before it returns.
"""

import sys

from visionray import platform

left = platform.platform_pids()
held = [port for port in platform.platform_ports() if not platform._port_free(port)]
if left or held:
    sys.exit(f"after make down: processes of the platform still alive: {left or 'none'}; ports held: {held or 'none'}")
print("nothing of the platform is alive and its ports are free")
