"""Medians and ratios over the runs of one measurement."""

import statistics


def summarize(values):
    """{median, min, max, n} of the numbers in VALUES (Nones are runs that
    failed and are left out); None when no run succeeded."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def ratio(a, b):
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b
