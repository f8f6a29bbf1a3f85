"""fer_cli: facial-expression recognition from the command line."""

import os

__version__ = "0.1.0"

# onnxruntime (1.29 and later) records telemetry on Linux and macOS: a device id and an event per process under
# ~/.cache/Microsoft, sent to Microsoft, and a coloured warning on stderr where HOME is read-only. fer runs every
# model on it, so fer turns it off before onnxruntime is imported, unless the caller has set the variable.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
