"""Progress on the terminal: one line per step with its result, the elapsed
time and an estimate of what is left (scaled by how the finished steps
compared with their estimates)."""

import sys
import time


def fmt_duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, estimates, out=sys.stdout):
        """ESTIMATES: the expected duration of each step, in seconds."""
        self.estimates = list(estimates)
        self.out = out
        self.index = 0
        self.t0 = time.monotonic()
        self.step_t0 = None

    def start(self, label):
        total = len(self.estimates)
        done_est = sum(self.estimates[:self.index])
        elapsed = time.monotonic() - self.t0
        scale = elapsed / done_est if done_est > 0 and self.index else 1.0
        left = sum(self.estimates[self.index:]) * max(scale, 0.5)
        width = len(str(total))
        self.out.write(f"[{self.index + 1:>{width}}/{total} {fmt_duration(elapsed)}, "
                       f"~{fmt_duration(left)} left] {label} … ")
        self.out.flush()
        self.step_t0 = time.monotonic()

    def done(self, result):
        took = time.monotonic() - self.step_t0
        self.out.write(f"{result} ({took:.1f} s)\n")
        self.out.flush()
        self.index += 1
