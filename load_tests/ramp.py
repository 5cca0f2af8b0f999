"""A ramp for the autoscaling run: use beside the scenarios,
`locust -f load_tests/locustfile.py,load_tests/ramp.py --headless ...` (-u/-r/-t are then ignored).

Users go up in steps to --ramp-peak, hold, and come back down; each step lasts --ramp-step-s.
"""

from __future__ import annotations

from locust import LoadTestShape, events

# Fractions of the peak, one per step: up, hold, down.
PROFILE = [0.125, 0.25, 0.5, 1.0, 1.0, 0.5, 0.125]


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--ramp-peak", type=int, default=24, help="users at the top of the ramp")
    parser.add_argument("--ramp-step-s", type=float, default=30, help="seconds per step")


class Ramp(LoadTestShape):
    def tick(self):
        options = self.runner.environment.parsed_options
        step = int(self.get_run_time() // options.ramp_step_s)
        if step >= len(PROFILE):
            return None
        users = max(1, round(PROFILE[step] * options.ramp_peak))
        return users, users
