"""Resident-memory readings shared by the two measured runs of compress.py (each runs as a script in its own
virtualenv, so this sibling file is imported from the script's folder, not from an installed package)."""


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start the peak (VmHWM) afresh after loading, so load-time transients do not count as compression memory."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
