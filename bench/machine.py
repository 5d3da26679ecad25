"""What the benchmarks say about the machine they ran on (shared by the bench scripts)."""

import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what platform knows, else "?"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"
