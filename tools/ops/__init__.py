"""The operators' library: read models over the topics and the stores (timeline, KPIs, traces, dead letters, audit,
erasure, settings, sample orders). Imported by the command line, the console and the drills; never run; imports
only ``shared``."""
